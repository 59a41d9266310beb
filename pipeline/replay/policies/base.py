"""The policy object: the kernel's answers to the questions change_prot_numa() and KVM ask.

A policy is a frozen dataclass: pure, no I/O, no RNG, no loop over epochs (STYLE.md). The
engine owns time and state; a policy only says, for arrays of pages, which get PROT_NONE
(``can_map_prot_numa``), which ranges the MMU notifier covers (``notifier_scope``), what KVM
does on ``invalidate_range_start`` for a NUMA-protection range (``kvm_zaps_numa_range``) and
whether the RFC v2 ``numa_protect`` callback exists. KERNEL.md §7 is the table each policy
matches cell by cell; tests/replay/test_policy_cells.py checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from pipeline.replay.state import Region

NotifierScope = Literal["pud", "p4d", "changed", "will_migrate"]
PinnedSkip = Literal["none", "cow", "anon", "any"]
MigrateFilter = Literal["two_stage", "oracle"]


@dataclass(frozen=True)
class Policy:
    """One kernel behaviour, as data (see docs/policies.md)."""

    name: str
    summary: str
    kernel: tuple[int, int]
    notifier_scope: NotifierScope
    pte_pinned_skip: PinnedSkip
    pmd_pinned_skip: PinnedSkip
    kvm_zaps_numa_range: bool = True
    numa_protect: bool = False
    migrate_filter: MigrateFilter = "two_stage"

    # -- version-derived behaviour (KERNEL.md §6) -----------------------------------------
    @property
    def pid_filter_v67(self) -> bool:
        """v6.7+ vma_is_accessed() rules and the forced scan of inactive VMAs (§3.4)."""
        return self.kernel >= (6, 7)

    @property
    def fault_retry_precheck(self) -> bool:
        """d02c357e5bfa (v6.8): vCPU faults check mmu_invalidate_retry_gfn_unsafe() before
        taking mmu_lock, so they contend far less with a long zap (§5.2)."""
        return self.kernel >= (6, 8)

    @property
    def needbreak_iff_preemptible(self) -> bool:
        """c793a62823d1 (~v6.11): rwlock_needbreak() is false unless the kernel is
        preemptible (preempt=full), so zaps stop yielding on non-preemptible hosts (§5.2)."""
        return self.kernel >= (6, 11)

    @property
    def rmap_zap_yields(self) -> bool:
        """v6.12: kvm_unmap_gfn_range() zaps rmaps (shadow MMU, tdp_mmu=N) with
        __kvm_rmap_zap_gfn_range(..., range->may_block) -> __walk_slot_rmaps(), which yields
        on rwlock_needbreak() and flushes first; v6.5's kvm_handle_gfn_range(kvm_zap_rmap)
        never yields (arch/x86/kvm/mmu/mmu.c; §5.2)."""
        return self.kernel >= (6, 12)

    # -- change_pte_range() / change_huge_pmd() --------------------------------------------
    def can_map_prot_numa(
        self, pinned: npt.NDArray[np.bool_], region: Region, *, pmd: bool
    ) -> npt.NDArray[np.bool_]:
        """Which populated, not-yet-PROT_NONE folios get PROT_NONE (KERNEL.md §4.2, §4.3).

        Only the pinned rule differs between policies in this model: QEMU guest RAM is never
        KSM'd, zero-page, dirty file LRU (memfd is shmem, swap-backed), or mapped by a
        single-threaded mm; multi-sized THP and mapped-shared folios are not modelled.
        ``cow``: skip pinned pages of COW (private) mappings (v6.5 ``page_count != 1``,
        v6.10 ``folio_maybe_dma_pinned``); ``anon``: skip pinned anon pages (RFC v2 patch 2);
        ``any``: skip every pinned folio (v6.19 folio_can_map_prot_numa()).
        """
        rule = self.pmd_pinned_skip if pmd else self.pte_pinned_skip
        skips = (
            rule == "any"
            or (rule == "cow" and region.is_cow)
            or (rule == "anon" and region.is_anon)
        )
        if skips:
            return ~pinned
        return np.ones(pinned.shape, bool)
