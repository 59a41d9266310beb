"""What calibrate knows of a lab capture: the sidecar's [lab] workload (:class:`LabWorkload`),
everything read for one capture (:class:`CalibrationInput`), and the policy that models the
capture's kernel release."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import InputError
from pipeline.ingest.capture_facts import (
    LAB_GUEST_PAGE_BYTES,
    LabFacts,
)

KERNEL_POLICIES = (("7.1", "linux-7.1"), ("6.18", "linux-6.18"), ("6.5", "linux-6.5"))


PAGE_4K = 4096


RAM_POPULATED = ("before_capture", "in_capture")


def policy_for_kernel(release: str | None) -> str:
    """The policy modelling a kernel release (``6.18.44-...`` -> ``linux-6.18``)."""
    if release:
        parts = release.split(".")
        try:
            version = (int(parts[0]), int(parts[1].split("-")[0]))
        except (ValueError, IndexError):
            version = (0, 0)
        for name, policy in KERNEL_POLICIES:
            major, minor = (int(x) for x in name.split("."))
            if version >= (major, minor):
                return policy
    return "linux-6.18"


@dataclass(frozen=True)
class LabWorkload:
    """The ``[lab]`` table of a lab sidecar: what the guest did, and the hosting facts
    (:class:`pipeline.ingest.capture_facts.LabFacts`) the lab measured."""

    pattern: str
    touch_start_gpa: tuple[int, ...]
    touch_end_gpa: tuple[int, ...]
    passes_per_s: tuple[float, ...]
    window_s: float
    stride_bytes: int = PAGE_4K
    guest_page_bytes: int = LAB_GUEST_PAGE_BYTES
    facts: LabFacts = field(default_factory=LabFacts)
    # the capture's enabled events ("system:event"), for a hand-written sidecar (ADR 0510)
    events: tuple[str, ...] = ()
    # when numa_balancing took effect, in trace-clock ns (instead of the lab's trace marker)
    numa_balancing_on_ns: int | None = None
    # "before_capture" | "in_capture": whether the trace holds the guest populating its RAM
    # (None: inferred, observed_events.population_in_trace())
    ram_populated: str | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], path: Path) -> LabWorkload:
        try:
            starts = tuple(int(x) for x in table["touch_start_gpa"])
            ends = tuple(int(x) for x in table["touch_end_gpa"])
            rates = tuple(float(x) for x in table["passes_per_s"])
            window_s = float(table["window_s"])
            pattern = str(table["pattern"])
            on_ns = table.get("numa_balancing_on_ns")
            on_ns = None if on_ns is None else int(on_ns)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"[lab] table lacks or mistypes {exc}") from exc
        if not (len(starts) == len(ends) == len(rates)) or not starts:
            raise InputError(path, "[lab] touch_start_gpa, touch_end_gpa, passes_per_s differ")
        populated = table.get("ram_populated")
        if populated is not None and populated not in RAM_POPULATED:
            raise InputError(
                path, f"[lab] ram_populated = {populated!r}; use one of {', '.join(RAM_POPULATED)}"
            )
        return cls(
            pattern,
            starts,
            ends,
            rates,
            window_s,
            int(table.get("stride_bytes", PAGE_4K)),
            int(table.get("guest_page_bytes", LAB_GUEST_PAGE_BYTES)),
            LabFacts.from_table(table, path),
            tuple(str(e) for e in table.get("events", ())),
            on_ns,
            None if populated is None else str(populated),
        )


@dataclass
class CalibrationInput:
    dataset: Path
    vms: pl.DataFrame
    lab: LabWorkload
    vmstat: dict[str, Any] | None
    t_on_ns: int
    t_end_ns: int
    ftrace: dict[str, pl.DataFrame] = field(default_factory=dict)
    kvm_stats_delta: dict[str, int] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)
    # counter -> why the capture cannot observe it (observed_events.unavailable())
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def vm(self) -> dict[str, Any]:
        row: dict[str, Any] = self.vms.row(0, named=True)
        return row
