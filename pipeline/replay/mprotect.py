"""change_prot_numa() of one scanner chunk: notifier ranges, per-page rules, host flush.

Models mm/mempolicy.c change_prot_numa() -> mm/mprotect.c change_protection_range() ->
change_pud_range() / change_pmd_range() -> change_pte_range() / mm/huge_memory.c
change_huge_pmd() (KERNEL.md §4.1-§4.4), for the rules of each policy (§7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.replay.context import EpochCtx
from pipeline.replay.counters import PS_2M, PS_4K
from pipeline.replay.intervals import IntervalSet, expand, normalize, runs_of
from pipeline.replay.kvm import Kvm
from pipeline.replay.policies.base import Policy
from pipeline.replay.state import (
    P4D_SIZE,
    P_PINNED,
    P_POP,
    P_PROTNONE,
    PAGES_PER_PMD,
    PUD_SIZE,
    Region,
    VmState,
)

I64 = npt.NDArray[np.int64]
NUMA_BALANCING_NORMAL = 1


@dataclass
class ChunkResult:
    """What one change_prot_numa() call did."""

    nr_updated: int  # base pages made PROT_NONE (the return value; THP counts 512)
    notifiers: int


def notifier_ranges_pud(vm: VmState, region: Region, g0: int, g1: int) -> list[tuple[int, int]]:
    """Models the v6.5 (to v6.11) notifier in change_pmd_range(): per PUD (1 GiB of hva) the
    range runs from the first non-none PMD in the chunk to the end of the PUD range clipped
    to the chunk end, and is sent before any per-page check (§4.1). Returns gfn ranges."""
    pop = vm.g_npop[g0:g1] > 0
    if not pop.any():
        return []
    gfn0, gfn1 = g0 * PAGES_PER_PMD, g1 * PAGES_PER_PMD
    hva0, hva1 = region.gfn_to_hva(gfn0), region.gfn_to_hva(gfn1)
    out = []
    pud = hva0 - hva0 % PUD_SIZE
    while pud < hva1:
        lo, hi = max(pud, hva0), min(pud + PUD_SIZE, hva1)
        a, b = (
            (region.hva_to_gfn(lo) - gfn0) // PAGES_PER_PMD,
            (region.hva_to_gfn(hi) - gfn0) // PAGES_PER_PMD,
        )
        first = np.flatnonzero(pop[a:b])
        if first.size:
            out.append((gfn0 + (a + int(first[0])) * PAGES_PER_PMD, region.hva_to_gfn(hi)))
        pud += PUD_SIZE
    return out


def notifier_ranges_p4d(vm: VmState, region: Region, g0: int, g1: int) -> list[tuple[int, int]]:
    """Models the v6.12+ notifier in change_pud_range(): per P4D (512 GiB) range, from the
    first non-none PUD at or after the chunk start to the P4D end clipped to the chunk end
    (§4.1; Peter Xu, "push mmu notifier to PUDs", v6.12). A PUD is non-none if its PMD
    table exists, i.e. anything in that 1 GiB of hva was ever faulted, in any VMA: every
    guest region that intersects the PUD counts (review finding 7); the VMM's non-RAM VMAs
    are not in the model, so a PUD holding only those looks empty."""
    gfn0, gfn1 = g0 * PAGES_PER_PMD, g1 * PAGES_PER_PMD
    hva0, hva1 = region.gfn_to_hva(gfn0), region.gfn_to_hva(gfn1)
    out = []
    p4d = hva0 - hva0 % P4D_SIZE
    while p4d < hva1:
        lo, hi = max(p4d, hva0), min(p4d + P4D_SIZE, hva1)
        pud = lo - lo % PUD_SIZE
        while pud < hi:
            if _pud_populated(vm, pud):
                out.append((region.hva_to_gfn(max(pud, lo)), region.hva_to_gfn(hi)))
                break
            pud += PUD_SIZE
        p4d += P4D_SIZE
    return out


def _pud_populated(vm: VmState, pud: int) -> bool:
    """Does any guest region have a populated granule in ``[pud, pud + PUD_SIZE)`` of hva?"""
    for reg in vm.cfg.regions:  # sorted by hva
        if reg.hva_start >= pud + PUD_SIZE:
            break
        if reg.hva_end <= pud:
            continue
        ga = reg.hva_to_gfn(max(pud, reg.hva_start)) // PAGES_PER_PMD
        gb = reg.hva_to_gfn(min(pud + PUD_SIZE, reg.hva_end)) // PAGES_PER_PMD
        if (vm.g_npop[ga:gb] > 0).any():
            return True
    return False


class ChangeProtNuma:
    """change_prot_numa() for one VM under one policy."""

    def __init__(self, vm: VmState, kvm: Kvm, policy: Policy, dirty: IntervalSet) -> None:
        self.vm = vm
        self.kvm = kvm
        self.policy = policy
        self.dirty = dirty

    # -- per-page rules ---------------------------------------------------------------------
    def _changes(self, ctx: EpochCtx, region: Region, g0: int, g1: int) -> tuple[I64, I64]:
        """Models the prot_numa decisions of mm/mprotect.c change_pte_range() (KERNEL.md §4.2
        4K rows 1 and 3-5: pte_protnone "Avoid TLB flush if possible"; the pinned rule per
        policy: v6.5 COW ``page_count != 1``, v6.10 folio_maybe_dma_pinned() for COW, v6.19
        folio_can_map_prot_numa() for any) and of mm/huge_memory.c change_huge_pmd() (PMD
        rows 3-4: pmd_protnone skip; no pin check before v6.19) for the chunk, plus row 8
        (NUMA_BALANCING_MEMORY_TIERING only: every node is toptier, all skipped). Returns (4K
        pages, THP granules) that become PROT_NONE."""
        vm = self.vm
        empty = np.empty(0, np.int64)
        if not vm.cfg.numa_balancing & NUMA_BALANCING_NORMAL:
            return empty, empty  # every node is toptier: row 8 of §4.2 skips all
        gs = np.arange(g0, g1, dtype=np.int64)
        pop = vm.g_npop[g0:g1] > 0
        thp = vm.g_thp[g0:g1] & pop
        cand_g = gs[thp & (vm.g_nprot[g0:g1] == 0)]
        ok = self.policy.can_map_prot_numa(vm.g_npinned[cand_g] > 0, region, pmd=True)
        thp_changed = cand_g[ok]
        small_g = gs[pop & ~thp & (vm.g_nprot[g0:g1] < vm.g_npop[g0:g1])]
        pages = empty
        if small_g.size:
            pages = expand(small_g * PAGES_PER_PMD, (small_g + 1) * PAGES_PER_PMD)
            flags = vm.pflags[pages]
            full = np.repeat(vm.g_npop[small_g] == PAGES_PER_PMD, PAGES_PER_PMD)
            full_pin = np.repeat(vm.g_npinned[small_g] == PAGES_PER_PMD, PAGES_PER_PMD)
            keep = (full | ((flags & P_POP) != 0)) & ((flags & P_PROTNONE) == 0)
            pinned = full_pin | ((flags & P_PINNED) != 0)
            keep[keep] = self.policy.can_map_prot_numa(pinned[keep], region, pmd=False)
            pages = pages[keep]
        if self.policy.migrate_filter == "oracle":
            pages, thp_changed = self._will_migrate(ctx, pages, thp_changed)
        return pages, thp_changed

    def _will_migrate(self, ctx: EpochCtx, pages: I64, granules: I64) -> tuple[I64, I64]:
        """The oracle's knowledge: keep the pages a vCPU on another node touched this epoch."""
        vm = self.vm
        vnode = vm.cfg.vcpu_nodes.astype(np.int16)[ctx.run_vcpu]
        keep_p = np.zeros(pages.size, bool)
        keep_g = np.zeros(granules.size, bool)
        if pages.size:
            lo = np.searchsorted(pages, ctx.run_start)
            hi = np.searchsorted(pages, ctx.run_end)
            idx = expand(lo, hi)
            node = np.repeat(vnode, hi - lo)
            keep_p[idx[node != vm.page_nodes(pages)[idx]]] = True
        if granules.size:
            lo = np.searchsorted(granules, ctx.run_start // PAGES_PER_PMD)
            hi = np.searchsorted(granules, -(-ctx.run_end // PAGES_PER_PMD))
            idx = expand(lo, hi)
            node = np.repeat(vnode, hi - lo)
            keep_g[idx[node != vm.g_node[granules][idx]]] = True
        return pages[keep_p], granules[keep_g]

    def _nothing_to_do(self, g0: int, g1: int) -> bool:
        """Nothing populated in the chunk: no change and no PUD-scope or sub-range notifier,
        which start at a populated PMD; a v6.12+ P4D-scope notifier can start in a populated
        PUD before the chunk, so it takes the whole path (ADR 0373: a shortcut, same result)."""
        return self.policy.notifier_scope != "p4d" and not self.vm.g_npop[g0:g1].any()

    # -- the call -----------------------------------------------------------------------------
    def __call__(self, ctx: EpochCtx, region: Region, gfn_start: int, gfn_end: int) -> ChunkResult:
        """Models mm/mempolicy.c change_prot_numa(vma, start, end) for a 2 MiB-aligned chunk
        of ``region`` (KERNEL.md §4.1-§4.4): the notifier ranges of the policy (v6.5 per PUD,
        v6.12+ per P4D, or the proposals' sub-ranges) sent before the per-page changes, the
        changes, RFC v2 numa_protect, invalidate_range_end, then mm/mmu_gather.c
        tlb_finish_mmu(): one flush_tlb_mm_range() if anything changed (§4.4)."""
        vm = self.vm
        g0, g1 = gfn_start // PAGES_PER_PMD, -(-gfn_end // PAGES_PER_PMD)
        if self._nothing_to_do(g0, g1):
            return ChunkResult(nr_updated=0, notifiers=0)
        pages, thps = self._changes(ctx, region, g0, g1)
        ps = region.page_size
        # 1. the notifier(s), sent before the per-page changes
        if self.policy.notifier_scope in ("pud", "p4d"):
            finder = (
                notifier_ranges_pud if self.policy.notifier_scope == "pud" else notifier_ranges_p4d
            )
            ranges = [
                (np.asarray([s], np.int64), np.asarray([e], np.int64))
                for s, e in finder(vm, region, g0, g1)
            ]
        else:
            sub_s, sub_e = normalize(
                np.concatenate([pages, thps * PAGES_PER_PMD]),
                np.concatenate([pages + 1, (thps + 1) * PAGES_PER_PMD]),
            )
            ranges = [(sub_s, sub_e)] if sub_s.size else []
        zap = self.policy.kvm_zaps_numa_range
        for s, e in ranges:
            self.kvm.invalidate_range_start(ctx, s, e, ps, zap=zap)
            if zap:
                self.dirty.add(s, e)
        # 2. change_pte_range() / change_huge_pmd(): PROT_NONE, under the notifier
        nr_updated = self._apply(ctx, pages, thps)
        if self.policy.numa_protect and nr_updated:
            self.kvm.numa_protect(ctx, pages, thps, ps)
        for s, e in ranges:
            self.kvm.invalidate_range_end(ctx, s, e)
        # 3. tlb_finish_mmu(): one flush_tlb_mm_range() if anything changed (§4.4)
        if nr_updated:
            ctx.counters.add(ctx.epoch, ps, "host_tlb_flushes", 1)
            ctx.counters.add(ctx.epoch, ps, "host_tlb_flush_ipis", ctx.others_in_guest())
        return ChunkResult(nr_updated=nr_updated, notifiers=len(ranges))

    def _apply(self, ctx: EpochCtx, pages: I64, thps: I64) -> int:
        """Set PROT_NONE and count as the kernel does (v6.5 = v7.1, KERNEL.md §8.5):
        change_pte_range() / change_huge_pmd() return base pages (a THP counts 512),
        change_pmd_range() counts nr_huge_updates into NUMA_HUGE_PTE_UPDATES, and
        mm/mempolicy.c change_prot_numa() adds the total to NUMA_PTE_UPDATES."""
        vm = self.vm
        if pages.size:
            vm.pflags[pages] |= P_PROTNONE | P_POP
            np.add.at(vm.g_nprot, pages // PAGES_PER_PMD, 1)
            s, e = runs_of(pages)
            self.dirty.add(s, e)
        if thps.size:
            vm.g_nprot[thps] = PAGES_PER_PMD
            self.dirty.add(thps * PAGES_PER_PMD, (thps + 1) * PAGES_PER_PMD)
        nr = int(pages.size) + PAGES_PER_PMD * int(thps.size)
        ctx.counters.add(ctx.epoch, PS_4K, "numa_pte_updates", int(pages.size))
        ctx.counters.add(ctx.epoch, PS_2M, "numa_pte_updates", PAGES_PER_PMD * int(thps.size))
        ctx.counters.add(ctx.epoch, PS_2M, "numa_huge_pte_updates", int(thps.size))
        return nr
