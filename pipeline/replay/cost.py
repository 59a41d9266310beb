"""The cost model: modelled CPU time of the counted events (PEERS.md §B.2).

Every cost is a named parameter with its source; a user overrides them through
``ReplayParams(cost=CostModel(...))``. ``cost_us`` of an epochs row is the dot product of its
counters with these unit costs, so it can be recomputed from the counters with other numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from pipeline.replay.counters import E


@dataclass(frozen=True)
class CostModel:
    """Unit costs in microseconds.

    * ``remote_flush_us`` 1.5: kvm_flush_remote_tlbs() request + IPI send; "~1-3 us on modern
      Xeons" (PEERS.md B.2, secondary source, flagged).
    * ``shootdown_ipi_us`` 1.0: per target vCPU: the IPI forces a VM exit and a guest TLB flush
      at re-entry; VMRUN->#VMEXIT ~1.35k cycles, full KVM_RUN round trip ~2.5k cycles
      (lkml 2012.2/00527), about 1 us at 2.5 GHz.
    * ``host_flush_us`` 0.4: local flush_tlb_mm_range(): range flush 404 cycles, full flush 96
      cycles + refill (Ingo Molnar's microbenchmark, LKML 2015-06-08).
    * ``host_flush_ipi_us`` 2.0: per target pCPU running a vCPU: IPI (1-3 us) plus the VM exit.
    * ``notifier_us`` 0.5: one invalidate_range_start/end pair reaching KVM (mmu_lock, memslot
      walk); no published number, assumed.
    * ``spte_zap_us`` 0.02: per zapped leaf SPTE (an atomic write and bookkeeping); assumed.
    * ``ept_violation_us`` 2.0: VM exit + kvm_tdp_page_fault + GUP + SPTE install; "no
      authoritative published per-event number" (PEERS.md B.2): assumed, calibrate with
      kvm_page_fault -> kvm_entry deltas.
    * ``hint_fault_us`` 1.0: do_numa_page() bookkeeping beyond the EPT exit; assumed.
    * ``migrate_page_us`` 1.0: per 4 KiB page copied (cori-sim default, PEERS.md B.2).
    """

    remote_flush_us: float = 1.5
    shootdown_ipi_us: float = 1.0
    host_flush_us: float = 0.4
    host_flush_ipi_us: float = 2.0
    notifier_us: float = 0.5
    spte_zap_us: float = 0.02
    ept_violation_us: float = 2.0
    hint_fault_us: float = 1.0
    migrate_page_us: float = 1.0

    def weights(self) -> npt.NDArray[np.float64]:
        """Cost per unit of each epochs counter, in EPOCH_COUNTERS order."""
        w = np.zeros(len(E), np.float64)
        w[E["remote_tlb_flushes"]] = self.remote_flush_us
        w[E["shootdown_ipis"]] = self.shootdown_ipi_us
        w[E["host_tlb_flushes"]] = self.host_flush_us
        w[E["host_tlb_flush_ipis"]] = self.host_flush_ipi_us
        w[E["mmu_notifier_invalidations"]] = self.notifier_us
        w[E["spte_zapped"]] = self.spte_zap_us
        w[E["ept_violations"]] = self.ept_violation_us
        w[E["numa_hint_faults"]] = self.hint_fault_us
        w[E["numa_pages_migrated"]] = self.migrate_page_us
        return w

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
