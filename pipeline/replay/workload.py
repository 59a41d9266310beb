"""Which workload a replay of a DATASET runs (ADR 0381): the refaults its trace shows, or the
workload its sidecar's ``[lab]`` table states.

A lab capture's guest writes every page of its range every sweep; the trace shows only the
refaults after a scan made a PTE a hinting fault, so replaying the trace's accesses misses the
pages the guest kept touching (4 flushes against the kernel's 7 on
``real-lab-shared-4k-pin-nb1``). When the workload is known, replay runs the one ``calibrate``
runs: the analysis stage builds it (``pipeline.analyze.calibrate.dataset_workload``) and the
CLI and the API pass that builder in as a :data:`WorkloadSource`, since stage 2 does not import
stage 3 (ADR 0020). The RESULTS manifest records which was used (:func:`workload_record`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.replay.params import ReplayParams

TRACE_REFAULTS = "trace refaults"
LAB_WORKLOAD = "[lab] workload"
#: ``--workload`` choices: ``auto`` is the [lab] workload when the DATASET states one
WORKLOAD_CHOICES = ("auto", "trace", "lab")


@dataclass(frozen=True)
class KnownWorkload:
    """A DATASET's stated workload as the engine replays it: table ``accesses`` over
    ``n_epochs`` epochs, with the parameters it is replayed with (MMU, guest page size, hosting
    of the capture) and where it was read (``source``: the sidecar)."""

    accesses: pl.DataFrame
    params: ReplayParams
    n_epochs: int
    source: str
    name: str = LAB_WORKLOAD


#: (DATASET, params) -> its stated workload, or why there is none (a sentence)
WorkloadSource = Callable[[Path, ReplayParams], "KnownWorkload | str"]


def choose_workload(
    dataset: Path, params: ReplayParams, source: WorkloadSource | None, choice: str
) -> KnownWorkload | str:
    """The workload to replay: a :class:`KnownWorkload`, or why the trace's refaults are
    replayed. ``choice`` ``trace`` never asks ``source``; ``lab`` requires a stated workload."""
    from pipeline.errors import DatasetError

    if choice not in WORKLOAD_CHOICES:
        raise DatasetError(
            "--workload", f"unknown workload `{choice}`; choose {', '.join(WORKLOAD_CHOICES)}"
        )
    if choice == "trace":
        return "--workload trace"
    got = source(dataset, params) if source is not None else "no workload builder given"
    if choice == "lab" and isinstance(got, str):
        raise DatasetError(dataset, f"--workload lab: {got}")
    return got


def workload_record(chosen: KnownWorkload | str) -> dict[str, Any]:
    """The RESULTS manifest's ``workload``: its name and where it came from, or why not."""
    if isinstance(chosen, KnownWorkload):
        return {"name": chosen.name, "source": chosen.source, "n_epochs": chosen.n_epochs}
    return {"name": TRACE_REFAULTS, "why": chosen}
