"""Accesses decoded once for every policy of a replay (issue 13, ADR 0372).

Each policy's loop reads its accesses in batches of epochs (ADR 0330). Read from a DATASET or
a frame, every batch is a polars scan, a sort and a split by VM, and with seven policies that
work was done seven times over the same rows. :func:`decode_accesses` does it once, in the
parent, batch by batch (memory bounded by one batch as before), and appends each VM's columns
to raw files in a scratch directory; :class:`DecodedAccesses` then gives any window of epochs
as plain reads at known offsets (no polars, no sort), in this process or in the workers, so
the engine sees the same arrays in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipeline.replay.engine import VmAccesses

I64 = npt.NDArray[np.int64]

#: the columns kept per VM and their on-disk types; the epoch is implied by the row bounds
COLUMNS = (("vcpu", np.int32), ("gfn_start", np.int64), ("nr_pages", np.int64))


class Windowed(Protocol):
    def window(self, e0: int, e1: int, names: Sequence[str]) -> dict[str, VmAccesses]: ...


@dataclass(frozen=True)
class DecodedAccesses:
    """Per VM: ``bounds[e]`` is the first row of epoch ``e`` in the VM's column files under
    ``root`` (``bounds[n_epochs]`` = its row count). Picklable: paths and small arrays."""

    root: str
    files: dict[str, str]  # vm name -> file stem under root
    bounds: dict[str, I64]

    def window(self, e0: int, e1: int, names: Sequence[str]) -> dict[str, VmAccesses]:
        out: dict[str, VmAccesses] = {}
        for name in names:
            b = self.bounds[name]
            last = b.size - 1
            lo, hi = int(b[min(e0, last)]), int(b[min(e1, last)])
            cols = {
                col: np.fromfile(
                    Path(self.root) / f"{self.files[name]}.{col}",
                    dtype=dtype,
                    count=hi - lo,
                    offset=lo * np.dtype(dtype).itemsize,
                ).astype(np.int64)
                for col, dtype in COLUMNS
            }
            first = min(e0, last)
            per_epoch = np.diff(b[first : min(e1, last) + 1])
            epoch = np.repeat(np.arange(first, first + per_epoch.size, dtype=np.int64), per_epoch)
            out[name] = VmAccesses(
                epoch=epoch,
                vcpu=cols["vcpu"],
                gfn_start=cols["gfn_start"],
                nr_pages=cols["nr_pages"],
            )
        return out


def decode_accesses(
    source: Windowed, names: Sequence[str], n_epochs: int, batch_epochs: int, root: Path
) -> DecodedAccesses:
    """Read ``source`` once, ``batch_epochs`` at a time, into column files under ``root``
    (an existing, empty scratch directory the caller removes)."""
    files = {name: f"vm{i}" for i, name in enumerate(names)}
    bounds = {name: np.zeros(n_epochs + 1, np.int64) for name in names}
    rows = dict.fromkeys(names, 0)
    handles = {
        (name, col): open(root / f"{files[name]}.{col}", "wb")  # noqa: SIM115 - closed below
        for name in names
        for col, _ in COLUMNS
    }
    try:
        for e0 in range(0, n_epochs, batch_epochs):
            e1 = min(n_epochs, e0 + batch_epochs)
            batch = source.window(e0, e1, names)
            for name in names:
                acc = batch[name]
                for col, dtype in COLUMNS:
                    getattr(acc, col).astype(dtype).tofile(handles[name, col])
                at = np.searchsorted(acc.epoch, np.arange(e0 + 1, e1 + 1))
                bounds[name][e0 + 1 : e1 + 1] = rows[name] + at
                rows[name] += int(acc.epoch.size)
    finally:
        for h in handles.values():
            h.close()
    return DecodedAccesses(str(root), files, bounds)
