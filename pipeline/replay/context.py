"""What the model functions need to know about the current epoch of one VM."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.replay.counters import Counters

I64 = npt.NDArray[np.int64]


@dataclass
class EpochCtx:
    """One VM's epoch: its access runs, which threads ran, where counters go.

    ``thread`` is the thread doing the current work (a vCPU index, or ``vcpus`` for the VMM
    main thread); ``active`` marks the vCPUs that ran (were in guest mode) in this epoch.
    ``trace`` optionally records ("start"|"end", gfn_start, gfn_end) notifier events for the
    pairing test.
    """

    epoch: int
    now_ms: int
    active: npt.NDArray[np.bool_]
    run_vcpu: I64
    run_start: I64
    run_end: I64
    counters: Counters
    thread: int = -1
    trace: list[tuple[str, int, int]] | None = field(default=None)

    def others_in_guest(self) -> int:
        """vCPUs in guest mode other than the current thread: the targets of an IPI."""
        n = int(self.active.sum())
        if 0 <= self.thread < self.active.size and self.active[self.thread]:
            n -= 1
        return n

    def vcpus_touching(self, gfn_start: int, gfn_end: int) -> I64:
        """vCPUs (other than the current thread) whose accesses this epoch hit the range."""
        hit = (self.run_start < gfn_end) & (self.run_end > gfn_start)
        v: I64 = np.unique(self.run_vcpu[hit])
        out: I64 = v[v != self.thread]
        return out
