"""Counter names and the per-VM counter arrays the engine fills (schemas/epochs.toml,
schemas/vcpu_epochs.toml).

Counters are int64 arrays indexed ``[epoch, page_size, counter]`` (epochs) and
``[epoch, thread, counter]`` (vcpu_epochs; the last thread row is the VMM main thread), so the
engine adds with numpy and the runner builds the frames once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

PAGE_SIZES = ("4K", "2M", "1G")
PS_4K, PS_2M, PS_1G = 0, 1, 2

EPOCH_COUNTERS = (
    "numa_pte_updates",
    "numa_huge_pte_updates",
    "numa_hint_faults",
    "numa_hint_faults_local",
    "numa_pages_migrated",
    "numa_migrate_failed",
    "mmu_notifier_invalidations",
    "notifier_bytes",
    "kvm_unmap_gfn_range_calls",
    "spte_zapped",
    "remote_tlb_flushes",
    "shootdown_ipis",
    "host_tlb_flushes",
    "host_tlb_flush_ipis",
    "ept_violations",
)
E = {name: i for i, name in enumerate(EPOCH_COUNTERS)}

VCPU_COUNTERS = (
    "ept_violations",
    "numa_hint_faults",
    "numa_hint_faults_local",
    "numa_pages_migrated",
    "numa_migrate_failed",
    "shootdown_ipis",
    "task_numa_work_runs",
    "spte_faultins",
)
V = {name: i for i, name in enumerate(VCPU_COUNTERS)}

I64 = npt.NDArray[np.int64]


@dataclass
class Counters:
    """All counters of one VM under one policy, for the whole replay."""

    n_epochs: int
    n_threads: int
    epochs: I64 = field(init=False)
    threads: I64 = field(init=False)
    scan_period_ms: I64 = field(init=False)

    def __post_init__(self) -> None:
        self.epochs = np.zeros((self.n_epochs, len(PAGE_SIZES), len(EPOCH_COUNTERS)), np.int64)
        self.threads = np.zeros((self.n_epochs, self.n_threads, len(VCPU_COUNTERS)), np.int64)
        self.scan_period_ms = np.zeros((self.n_epochs, self.n_threads), np.int64)

    def add(self, epoch: int, page_size: int, name: str, value: int) -> None:
        if value:
            self.epochs[epoch, page_size, E[name]] += value

    def add_thread(self, epoch: int, thread: int, name: str, value: int) -> None:
        if value:
            self.threads[epoch, thread, V[name]] += value
