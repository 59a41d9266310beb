"""Mixed SPTE levels: which THPs of a VM KVM maps with 4K SPTEs, beside the 2M SPTEs of
their neighbours, on the TDP MMU (ADR 0371).

Kernel rules (v6.5, arch/x86/kvm/mmu/mmu.c and tdp_mmu.c; KERNEL.md §5.4): a TDP fault maps
at the level kvm_mmu_hugepage_adjust() allows, 2M where the host maps a THP PMD, except that

* with the NX huge page mitigation (kvm.nx_huge_pages, on for CPUs with
  X86_BUG_ITLB_MULTIHIT) an instruction fetch sets ``huge_page_disallowed`` and the 2M region
  is mapped with 4K SPTEs under a page table marked ``nx_huge_page_disallowed``;
  disallowed_hugepage_adjust() then forces every later fault in that 2M region, exec or not,
  down to 4K ("A small SPTE exists for this pfn, but ... would like to create a large PTE
  instead: just force them to go down another level"). tdp_mmu_zap_leafs() zaps the leaves
  and keeps that page table, so the 2M region stays split across NUMA-balancing zaps (only
  the NX recovery thread, 1/60 of the split pages per minute by default, undoes it);
* a page faulted while the host still had 4K PTEs there (before khugepaged collapsed them)
  and dirty logging map 4K the same way.

Such a THP is one PMD for the host (change_huge_pmd(), one numa_protect() call under RFC v2,
which zaps all its 4K SPTEs with one flush) but up to 512 leaves for the baseline's range
zap, each a step of tdp_mmu_zap_leafs() that can yield with a pending flush under mmu_lock
contention (:mod:`pipeline.replay.contention`). That is the range Yan Zhao described: "this
range is mapped in both 2M and 4K in secondary MMU" (14 Aug 2023, KERNEL.md §2.5d).

Which THPs (``ReplayParams.spte_4k``):

* ``None`` (default): derived from the boot profile. A THP whose first guest fault is
  4K-grained (every access run reaching it in its first epoch is shorter than 2 MiB) is
  mapped by 4K SPTEs: in a boot those are the kernel image and the executables and libraries
  read into the page cache, fetched page by page (the NX split); memory first touched by a
  2 MiB-wide run (zeroing, a working set of THPs) gets a 2M SPTE. This is an assumption of
  the model (the trace has no instruction fetches), written down in ADR 0371.
* a share in [0, 1]: that share of every THP region's granules, chosen by a fixed hash of
  the granule number (no RNG: the same granules for every seed and policy), for sweeps.

Only the TDP MMU uses it: on the shadow MMU every SPTE is 4K already (``shadow_guest_2m``).

THP faults that fall back (``ReplayParams.thp_fault_fallback``, default 0): mm/memory.c
__handle_mm_fault() -> create_huge_pmd() -> do_huge_pmd_anonymous_page() returns
VM_FAULT_FALLBACK when vma_alloc_folio() cannot get a THP (a fragmented host; /proc/vmstat
``thp_fault_fallback`` counts them) and the fault is served by do_anonymous_page() with a 4K
page; the rest of that 2 MiB is faulted 4K too (its PMD now holds a page table), until
khugepaged collapses it, long after a boot. That share of THP-region granules (the same
fixed hash, independent of the 4K-SPTE choice) gets 4K host pages at its first touch: 4K
PTEs for change_pte_range() (one numa_protect() call per protected PTE under RFC v2) and 4K
SPTEs. A host fact, not a guest one: 0 unless given.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.replay.state import PAGES_PER_PMD, VmState

I64 = npt.NDArray[np.int64]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def granule_hash(granules: I64) -> npt.NDArray[np.float64]:
    """A fixed pseudo-uniform value in [0, 1) per granule number (Fibonacci hashing)."""
    with np.errstate(over="ignore"):
        h = granules.astype(np.uint64) * _GOLDEN
    out: npt.NDArray[np.float64] = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


class SpteLevels:
    """Decides ``VmState.g_spte4k`` (THPs mapped by 4K SPTEs) and ``VmState.g_small``
    (THP-region granules backed by 4K pages)."""

    def __init__(self, vm: VmState, share: float | None, thp_fault_fallback: float = 0.0) -> None:
        self.vm = vm
        self.share = share
        thp_regions = np.asarray([r.thp for r in vm.cfg.regions] + [False], bool)
        self.thp_g = thp_regions[vm.g_region]  # g_region -1 (no region) -> False
        g = np.arange(vm.cfg.nr_granules, dtype=np.int64)
        if share is not None:
            vm.g_spte4k[:] = self.thp_g & (granule_hash(g) < share)
        if thp_fault_fallback > 0.0:
            # an independent choice: the same hash of the granule number xor a constant
            fallback = granule_hash(g ^ np.int64(0x5DEECE66D)) < thp_fault_fallback
            vm.g_small[:] = self.thp_g & fallback & (vm.g_npop == 0)

    def decide(self, granules: I64, run_len: I64) -> None:
        """Boot-profile rule for THPs the guest has not faulted through KVM yet (populated or
        not: a pinned THP is populated at t=0, its first KVM fault comes with the guest's
        first touch): ``granules`` (with repeats) are touched this epoch by access runs of
        ``run_len`` pages; a THP reached only by runs shorter than 2 MiB is mapped by 4K
        SPTEs."""
        if self.share is not None or granules.size == 0:
            return
        vm = self.vm
        new = (
            self.thp_g[granules]
            & ~vm.g_faulted2m[granules]
            & ~vm.g_spte4k[granules]
            & ~vm.g_small[granules]
        )
        if not new.any():
            return
        u, inv = np.unique(granules[new], return_inverse=True)
        longest = np.zeros(u.size, np.int64)
        np.maximum.at(longest, inv, run_len[new])
        vm.g_spte4k[u[longest < PAGES_PER_PMD]] = True
