"""Guest accesses of one epoch: first touch, EPT refaults, NUMA hinting faults, migration.

Models the KVM fault path of KERNEL.md §5.4 (EPT violation -> GUP -> handle_mm_fault) and the
hinting-fault path of §8: mm/memory.c do_numa_page(), mm/huge_memory.c
do_huge_pmd_numa_page(), mm/mempolicy.c mpol_misplaced() ->
kernel/sched/fair.c should_numa_migrate_memory(), mm/migrate.c migrate_misplaced_page()
(v6.5) / migrate_misplaced_folio() (v7.x), and the task_numa_fault() bookkeeping (§3.5).

Only pages in the dirty set (possibly unmapped: never touched, zapped or PROT_NONE) cost any
work; accesses to mapped pages change nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.replay.context import EpochCtx
from pipeline.replay.counters import PS_2M, PS_4K, V
from pipeline.replay.intervals import IntervalSet, expand, intersect
from pipeline.replay.kvm import Kvm
from pipeline.replay.policies.base import Policy
from pipeline.replay.scanner import NUMA_NO_NODE, Scanner, TaskNuma, pid_bit
from pipeline.replay.spte_levels import SpteLevels
from pipeline.replay.state import (
    CPUPID_UNSET,
    P_FAULTED,
    P_PROTNONE,
    P_SPTE,
    PAGES_PER_PMD,
    VmState,
    encode_cpupid,
)

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
NR_MAX_MIGRATE_PAGES_RETRY = 10  # mm/migrate.c migrate_pages_batch() nr_pass (v6.5, v7.x)
PTE_PREFETCH_NUM = 8  # arch/x86/kvm/mmu/mmu.h; FNAME(pte_prefetch)() in paging_tmpl.h


def bind_masks(vm: VmState) -> npt.NDArray[np.bool_]:
    """[region index, node] -> may a hinting fault migrate a page of the region to the node.

    ``mof_policy`` is MPOL_BIND|MPOL_F_NUMA_BALANCING over the region's nodes (ADR 0310): for
    ``placement = "node:N"`` the mask is {N}, else every host node (interleave with MOF does
    not exist: MPOL_F_NUMA_BALANCING is BIND-only). mm/mempolicy.c mpol_misplaced() (v6.5 and
    v7.x, KERNEL.md §8.3): for MPOL_BIND with MPOL_F_MORON, a faulting CPU whose node is
    outside the mask gets NUMA_NO_NODE (no migration, no last_cpupid update). Without
    ``mof_policy`` the task's default policy applies and every node is allowed. The last row
    (index -1) is for gfns outside every region."""
    regions = vm.cfg.regions
    mask = np.ones((len(regions) + 1, vm.cfg.host_nodes), bool)
    for r in regions:
        if r.mof_policy and r.placement.startswith("node:"):
            mask[r.index] = False
            mask[r.index, int(r.placement[5:]) % vm.cfg.host_nodes] = True
    return mask


class FaultPath:
    """Applies one epoch's accesses of one VM."""

    def __init__(
        self,
        vm: VmState,
        kvm: Kvm,
        policy: Policy,
        *,
        scanner: Scanner,
        tasks: list[TaskNuma],
        dirty: IntervalSet,
        spte_4k: float | None = None,
        thp_fault_fallback: float = 0.0,
    ) -> None:
        self.vm = vm
        self.levels = SpteLevels(vm, spte_4k, thp_fault_fallback)
        self.kvm = kvm
        self.policy = policy
        self.scanner = scanner
        self.tasks = tasks
        self.dirty = dirty
        self.vnode = vm.cfg.vcpu_nodes.astype(np.int16)
        self.pid8 = (vm.cfg.vcpu_tids & 0xFF).astype(np.int32)
        self.pid_bits = [pid_bit(int(t)) for t in vm.cfg.vcpu_tids]
        # include/linux/mm.h cpu_pid_to_cpupid() of each vCPU thread, as the fault writes it
        self.vcpu_cpupid = encode_cpupid(self.vnode, self.pid8)
        by_gfn = sorted(vm.cfg.regions, key=lambda r: r.gfn_start)
        self.rg_start = np.asarray([r.gfn_start for r in by_gfn], np.int64)
        self.rg_end = np.asarray([r.gfn_end for r in by_gfn], np.int64)
        self.rg_pmd = np.asarray([r.pmd_mapped for r in by_gfn], bool)
        is_anon = np.asarray([r.is_anon for r in vm.cfg.regions] + [False], bool)
        self.g_anon = is_anon[vm.g_region]  # g_region -1 (no region) -> False
        self.bind_mask = bind_masks(vm)

    # -- entry point ---------------------------------------------------------------------------
    def apply(self, ctx: EpochCtx) -> None:
        """Process the epoch's access runs in ``ctx`` (sorted by vcpu, gfn).

        Runs are cut to the dirty set, then at region boundaries. PMD-mapped regions (THP,
        hugetlbfs) are handled per 2 MiB granule under TDP; 4K regions, every region's 4K
        SPTEs on a shadow MMU, THPs KVM maps with 4K SPTEs and THP-region granules backed by
        4K pages (ADR 0371) per page.
        """
        s, e, ai = intersect(ctx.run_start, ctx.run_end, self.dirty.starts, self.dirty.ends)
        if s.size == 0:
            return
        if self.rg_start.size == 1 and s.min() >= self.rg_start[0] and e.max() <= self.rg_end[0]:
            # one region holding every piece: the cut at region boundaries changes nothing
            s2, e2, a2 = s, e, ai
            gran = np.full(s.size, self.rg_pmd[0])
        else:
            s2, e2, bi = intersect(s, e, self.rg_start, self.rg_end)
            a2 = ai[bi]
            reg = np.searchsorted(self.rg_start, s2, side="right") - 1
            gran = self.rg_pmd[reg]
        v2 = ctx.run_vcpu[a2]
        page_s, page_e, page_v = s2[~gran], e2[~gran], v2[~gran]
        if gran.any():
            gs, ge = s2[gran] // PAGES_PER_PMD, -(-e2[gran] // PAGES_PER_PMD)
            gexp = expand(gs, ge)
            rep = np.repeat(np.flatnonzero(gran), ge - gs)
            run_len = (ctx.run_end - ctx.run_start)[a2]
            self.levels.decide(gexp, run_len[rep])
            # 4K SPTEs of PMD-mapped granules (shadow MMU; THPs mapped 4K, ADR 0371) and
            # THP-region granules backed by 4K pages (a THP fault fell back)
            small = self.vm.g_small[gexp]
            split = np.ones(gexp.size, bool) if self.kvm.shadow else self.vm.g_spte4k[gexp]
            split |= small
            if split.any():
                g, r = gexp[split], rep[split]
                page_s = np.concatenate([page_s, np.maximum(s2[r], g * PAGES_PER_PMD)])
                page_e = np.concatenate([page_e, np.minimum(e2[r], (g + 1) * PAGES_PER_PMD)])
                page_v = np.concatenate([page_v, v2[r]])
            if not small.all():
                granules, gv = self._first_per_unit(gexp[~small], v2[rep][~small], ctx.epoch)
                self._first_touch_granules(granules, gv)
                self._thp_units(ctx, granules, gv)
        if page_s.size:
            pages, pv = self._first_per_unit(
                expand(page_s, page_e), np.repeat(page_v, page_e - page_s), ctx.epoch
            )
            self._first_touch(ctx, pages, pv)
            self._page_units(ctx, pages, pv)
        if gran.any() and not self.kvm.shadow:
            # a touched PMD-mapped granule is wholly mapped again: keep the dirty set coarse
            # (not at the edge of a THP mapped by 4K SPTEs: only its touched pages are)
            vm = self.vm
            g_lo, g_hi = s2 // PAGES_PER_PMD, (e2 - 1) // PAGES_PER_PMD
            lo_big = gran & ~(vm.g_spte4k[g_lo] | vm.g_small[g_lo])
            hi_big = gran & ~(vm.g_spte4k[g_hi] | vm.g_small[g_hi])
            cut_s = np.where(lo_big, s2 // PAGES_PER_PMD * PAGES_PER_PMD, s2)
            cut_e = np.where(hi_big, -(-e2 // PAGES_PER_PMD) * PAGES_PER_PMD, e2)
            self.dirty.subtract(cut_s, cut_e)
        else:
            self.dirty.subtract(s, e)

    def _first_per_unit(self, units: I64, vcpus: I64, epoch: int) -> tuple[I64, I64]:
        """A unit (page or granule) touched by several vCPUs in one epoch faults once, in the
        vCPU that gets there first; which one rotates with the epoch (deterministic, fair)."""
        n = max(self.vm.cfg.vcpus, 1)
        order = np.lexsort(((vcpus - epoch) % n, units))
        units, vcpus = units[order], vcpus[order]
        first = np.concatenate([[True], units[1:] != units[:-1]])
        return units[first], vcpus[first]

    # -- population (first touch) -------------------------------------------------------
    def _first_touch_granules(self, granules: I64, vcpus: I64) -> None:
        """First touch in a PMD-mapped region: a THP (or hugetlbfs page) on the node of the
        placement policy (first-touch: the vCPU's node)."""
        vm = self.vm
        new = vm.g_npop[granules] == 0
        if not new.any():
            return
        ug, v = granules[new], vcpus[new]
        regs = vm.g_region[ug]
        indices = sorted(set(regs.tolist()))
        for index in indices:
            m = regs == index if len(indices) > 1 else slice(None)
            reg = vm.cfg.regions[index]
            vm.populate_granules(ug[m], vm.placement_nodes(reg, ug[m], self.vnode[v[m]]))

    def _first_touch(self, ctx: EpochCtx, pages: I64, vcpus: I64) -> None:
        """First touch of 4K pages of a 4K region, on the placement policy's node."""
        vm = self.vm
        g = pages // PAGES_PER_PMD
        unpop = ~vm.page_populated(pages) & ~vm.g_thp[g]
        if not unpop.any():
            return
        p, v = pages[unpop], vcpus[unpop]
        regs = vm.g_region[p // PAGES_PER_PMD]
        for index in np.unique(regs).tolist():
            m = regs == index
            reg = vm.cfg.regions[index]
            if reg.pmd_mapped:
                # populated per granule (shadow MMU, THPs mapped 4K), except granules
                # whose THP fault fell back to 4K pages (ADR 0371)
                m &= vm.g_small[p // PAGES_PER_PMD]
                if not m.any():
                    continue
            nodes = vm.placement_nodes(reg, p[m] // PAGES_PER_PMD, self.vnode[v[m]])
            vm.populate_pages(p[m], nodes)

    # -- 2 MiB units ------------------------------------------------------------------------
    def _thp_units(self, ctx: EpochCtx, granules: I64, vcpus: I64) -> None:
        """Faults on PMD-mapped folios (distinct granules, populated): the hinting fault of a
        PROT_NONE PMD, and under TDP the 2M EPT violation or first fault-in (KVM
        kvm_tdp_page_fault() -> kvm_faultin_pfn() -> GUP -> handle_mm_fault(), with
        kvm_mmu_hugepage_adjust() mapping 2M where the host has a PMD; v6.5 = v7.1, KERNEL.md
        §5.4)."""
        vm = self.vm
        ug, v = granules, vcpus
        # a 2M SPTE unless the MMU is shadow or this THP is mapped by 4K SPTEs (ADR 0371)
        two_m = ~vm.g_spte4k[ug] if self.kvm.spte_2m else np.zeros(ug.size, bool)
        keep = ~two_m | ~vm.g_spte2m[ug]
        ug, v, two_m = ug[keep], v[keep], two_m[keep]
        prot = vm.g_nprot[ug] == PAGES_PER_PMD
        if prot.any():
            self._hinting_faults(ctx, ug[prot] * PAGES_PER_PMD, v[prot], thp=True)
        if not two_m.any():
            return  # the 4K SPTEs are handled as page units
        ug, v = ug[two_m], v[two_m]
        refault = vm.g_faulted2m[ug]
        self._count_ept(ctx, v[refault], PS_2M)
        self._count_faultin(ctx, v[~refault])
        vm.g_spte2m[ug] = True
        vm.g_faulted2m[ug] = True

    # -- 4 KiB units --------------------------------------------------------------------------
    def _page_units(self, ctx: EpochCtx, pages: I64, vcpus: I64) -> None:
        """4K faults (distinct pages): a missing SPTE faults in through GUP (KERNEL.md §5.4,
        v6.5 = v7.1); a PROT_NONE host PTE takes a hinting fault first (§8.2); on the shadow
        MMU the FNAME(pte_prefetch)() walk maps neighbours (:meth:`_pte_prefetch`)."""
        vm = self.vm
        g = pages // PAGES_PER_PMD
        sel = (~vm.g_thp[g] | vm.g_spte4k[g]) if self.kvm.spte_2m else np.ones(pages.size, bool)
        p, v = pages[sel], vcpus[sel]
        flags = vm.pflags[p]
        missing = (flags & P_SPTE) == 0
        p, v, flags = p[missing], v[missing], flags[missing]
        if p.size == 0:
            return
        prot = ((flags & P_PROTNONE) != 0) & ~vm.g_thp[p // PAGES_PER_PMD]
        if prot.any():
            self._hinting_faults(ctx, p[prot], v[prot], thp=False)
        faulting = np.ones(p.size, bool)
        prefetched = p[:0]
        if self.kvm.shadow:
            faulting, prefetched = self._pte_prefetch(p, prot)
        refault = (flags & P_FAULTED) != 0
        self._count_ept(ctx, v[faulting & refault], PS_4K)
        self._count_faultin(ctx, v[faulting & ~refault])
        self._install_4k(p)
        self._install_4k(prefetched)

    def _pte_prefetch(self, pages: I64, prot: B) -> tuple[B, I64]:
        """Models arch/x86/kvm/mmu/paging_tmpl.h FNAME(pte_prefetch)() (v6.5 and v6.18, the
        shadow MMU of kvm_pvm; KERNEL.md §5.4): after a 4K fault, walk the aligned block of
        PTE_PREFETCH_NUM = 8 SPTEs from its start, skip present ones and the faulting one,
        and prefetch each other entry with FNAME(prefetch_gpte)(), which takes the host pfn
        by GUP-fast (gfn_to_pfn_memslot_atomic()); the walk *breaks* at the first entry it
        cannot map (not populated, PROT_NONE, or a PROT_NONE THP).

        ``pages`` are the touched pages without an SPTE (ascending), ``prot`` those that are
        PROT_NONE (they take a hinting fault). Faults in a block are taken in ascending
        order, each restarting the walk at the block start, so: an untouched unmappable
        entry at offset f0 stops every walk; the first touched page, every PROT_NONE one and
        every touched page past f0 fault; the mappable entries before f0 are prefetched.
        Returns (faulting mask over ``pages``, prefetched pages).

        The walk also returns early while kvm->mmu_invalidate_in_progress; in this engine
        every notifier pair ends within its change_prot_numa() call, before any fault, so
        that case never arises. The guest PTE is assumed present and accessed. One gfn can
        be mapped by several shadow SPTEs (several guest mappings, the rmap); the model keeps
        one per gfn, so ``spte_zapped`` is a lower bound on a shadow MMU."""
        vm = self.vm
        block = pages // PTE_PREFETCH_NUM
        first = np.concatenate([[True], block[1:] != block[:-1]])
        blocks = block[first]
        base = blocks * PTE_PREFETCH_NUM
        ends = np.minimum(base + PTE_PREFETCH_NUM, vm.cfg.nr_pages)
        near = expand(base, ends)
        counts = ends - base
        offset = near - np.repeat(base, counts)
        g = near // PAGES_PER_PMD
        mappable = vm.page_populated(near) & ((vm.pflags[near] & P_PROTNONE) == 0)
        mappable &= ~(vm.g_thp[g] & (vm.g_nprot[g] == PAGES_PER_PMD))
        present = (vm.pflags[near] & P_SPTE) != 0
        touched = np.isin(near, pages, assume_unique=True)
        fail = ~touched & ~present & ~mappable
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        f0 = np.minimum.reduceat(np.where(fail, offset, PTE_PREFETCH_NUM), starts)
        bidx = np.searchsorted(blocks, block)
        beyond = pages % PTE_PREFETCH_NUM > f0[bidx]
        faulting: B = prot | first | beyond
        take = mappable & ~touched & ~present & (offset < np.repeat(f0, counts))
        return faulting, near[take]

    def _install_4k(self, pages: I64) -> None:
        vm = self.vm
        new = pages[(vm.pflags[pages] & P_SPTE) == 0]
        vm.pflags[new] |= P_SPTE | P_FAULTED
        np.add.at(vm.g_nspte, new // PAGES_PER_PMD, 1)

    def _count_ept(self, ctx: EpochCtx, vcpus: I64, page_size: int) -> None:
        ctx.counters.add(ctx.epoch, page_size, "ept_violations", int(vcpus.size))
        np.add.at(ctx.counters.threads[ctx.epoch, :, V["ept_violations"]], vcpus, 1)

    def _count_faultin(self, ctx: EpochCtx, vcpus: I64) -> None:
        np.add.at(ctx.counters.threads[ctx.epoch, :, V["spte_faultins"]], vcpus, 1)

    # -- NUMA hinting faults -------------------------------------------------------------------
    def _hinting_faults(self, ctx: EpochCtx, heads: I64, vcpus: I64, *, thp: bool) -> None:
        """mm/memory.c do_numa_page() / mm/huge_memory.c do_huge_pmd_numa_page() for each
        faulting folio (``heads`` are first gfns; ``thp`` means 2 MiB folios), in the vCPU
        thread that touched it (KERNEL.md §8.2): vma_set_access_pid_bit(), NUMA_HINT_FAULTS
        (_LOCAL) in numa_migrate_prep() (v6.5) / numa_migrate_check() (v7.x, §8.5),
        mm/mempolicy.c mpol_misplaced() -> kernel/sched/fair.c should_numa_migrate_memory()
        without a numa_group (§8.3), migrate_misplaced_page() (v6.5) /
        migrate_misplaced_folio() (v7.x) with the room check (§8.4), then task_numa_fault()
        (§3.5)."""
        vm = self.vm
        c = ctx.counters
        ps = PS_2M if thp else PS_4K
        nr_pages = PAGES_PER_PMD if thp else 1
        g = heads // PAGES_PER_PMD
        node = vm.g_node[g].astype(np.int16) if thp else vm.page_nodes(heads)
        dst = self.vnode[vcpus]
        pid8 = self.pid8[vcpus]
        pinned = vm.g_npinned[g] > 0 if thp else vm.page_pinned(heads)
        regs = vm.g_region[g]
        # vma_set_access_pid_bit() and the vmstat counters (numa_migrate_prep/_check)
        numabs = self.scanner.numab
        if numabs:
            for reg_index, v in set(zip(regs.tolist(), vcpus.tolist(), strict=True)):
                numab = numabs.get(reg_index)
                if numab is not None:
                    numab.pids_active[1] |= self.pid_bits[v]
        local = node == dst
        c.add(ctx.epoch, ps, "numa_hint_faults", int(heads.size))
        c.add(ctx.epoch, ps, "numa_hint_faults_local", int(local.sum()))
        # mpol_misplaced() -> should_numa_migrate_memory(): xchg last_cpupid, two-stage filter
        cpupid_arr = vm.g_cpupid if thp else vm.pcpupid
        idx = g if thp else heads
        last = cpupid_arr[idx]  # a copy (fancy indexing)
        # MPOL_BIND|MPOL_F_NUMA_BALANCING outside the mask: mpol_misplaced() returns
        # NUMA_NO_NODE before should_numa_migrate_memory(), so no xchg either
        outside = ~self.bind_mask[regs, dst]
        mine = self.vcpu_cpupid[vcpus]  # encode_cpupid(dst, pid8)
        cpupid_arr[idx] = np.where(outside, last, mine) if outside.any() else mine
        unset = last == CPUPID_UNSET
        last_pid8 = (last - 1) & 0xFF
        last_nid = (last - 1) // 256
        same_pid = ~unset & (last_pid8 == pid8)
        if self.policy.migrate_filter == "oracle":
            want = np.ones(heads.size, bool)
        else:
            tasks = self.tasks
            early = np.fromiter(
                (
                    tasks[v].numa_preferred_nid == NUMA_NO_NODE or tasks[v].numa_scan_seq <= 4
                    for v in vcpus.tolist()
                ),
                bool,
                heads.size,
            )
            want = (early & (unset | same_pid)) | unset | (last_nid == dst)
        misplaced = want & ~local & ~outside
        # migrate_misplaced_*: pinned folios fail after the retry passes, others need room
        fail_pin = misplaced & pinned
        try_move = misplaced & ~pinned
        room = np.zeros(heads.size, bool)
        if try_move.any():
            room[try_move] = vm.host.has_room(dst[try_move], nr_pages)
        moved = try_move & room
        failed = fail_pin | (try_move & ~room)
        self._migration_notifiers(ctx, heads[moved], nr_pages, passes=1, page_size=ps)
        if fail_pin.any():
            anon = self.g_anon[g]
            self._migration_notifiers(
                ctx,
                heads[fail_pin & anon],
                nr_pages,
                passes=NR_MAX_MIGRATE_PAGES_RETRY,
                page_size=ps,
            )
            self._migration_notifiers(
                ctx, heads[fail_pin & ~anon], nr_pages, passes=1, page_size=ps
            )
        if moved.any():
            vm.host.move(node[moved], dst[moved], nr_pages)
            if thp:
                vm.g_node[g[moved]] = dst[moved]
            else:
                vm.set_page_nodes(heads[moved], dst[moved])
        c.add(ctx.epoch, ps, "numa_pages_migrated", int(moved.sum()) * nr_pages)
        c.add(ctx.epoch, ps, "numa_migrate_failed", int(failed.sum()) * nr_pages)
        # out_map: the PTE/PMD is present again (migration installs a normal PTE too)
        if thp:
            vm.g_nprot[g] = 0
        else:
            vm.pflags[heads] &= ~P_PROTNONE
            np.subtract.at(vm.g_nprot, g, 1)
        # per thread, in one add of the (fault x count) rows: the vmstat counters above, then
        # task_numa_fault()'s five counts
        k = len(self.tasks)
        nodes = vm.cfg.host_nodes
        priv = unset | same_pid
        ones = np.ones(heads.size, bool)
        per_fault = np.stack([ones, local, moved, failed, priv, ~priv, local, ~local, failed], 1)
        per = np.zeros((k, per_fault.shape[1]), np.int64)
        np.add.at(per, vcpus, per_fault)
        th = c.threads[ctx.epoch]
        th[:, V["numa_hint_faults"]] += per[:, 0]
        th[:, V["numa_hint_faults_local"]] += per[:, 1]
        th[:, V["numa_pages_migrated"]] += per[:, 2] * nr_pages
        th[:, V["numa_migrate_failed"]] += per[:, 3] * nr_pages
        per_task = per[:, 4:] * nr_pages
        mem_node = np.where(moved, dst, node).astype(np.int64)
        w = float(nr_pages)
        mem = np.bincount(vcpus * nodes + mem_node, minlength=k * nodes).reshape(k, nodes) * w
        rows = per_task.tolist()
        for v in sorted(set(vcpus.tolist())):
            n_priv, n_shared, n_local, n_remote, n_failed = rows[v]
            self._task_numa_fault(
                ctx.now_ms,
                self.tasks[v],
                shared=n_shared,
                private=n_priv,
                local=n_local,
                remote=n_remote,
                failed=n_failed,
                mem=mem[v],
            )

    def _migration_notifiers(
        self, ctx: EpochCtx, heads: I64, nr_pages: int, *, passes: int, page_size: int
    ) -> None:
        """The MMU_NOTIFY_CLEAR notifiers of mm/rmap.c try_to_migrate_one(), called from
        mm/migrate.c migrate_folio_unmap() in the unmap phase of migrate_pages_batch() (v6.5;
        the same phases in v7.x, KERNEL.md §5.5): one notifier over the folio per unmap pass.

        ``passes`` is how often try_to_migrate() runs for the folio: 1 for a folio that
        unmaps (a successful migration, and a pinned shared/file folio, which then fails in
        the move phase at folio_migrate_mapping()'s refcount freeze and is retried by
        migrate_folio_move() alone, with no further notifier); NR_MAX_MIGRATE_PAGES_RETRY
        for a pinned anon-exclusive folio, which page_try_share_anon_rmap() (v6.5) /
        folio_try_share_anon_rmap_*() (v7.x) keeps mapped, so the unmap phase retries it.

        A PMD migration entry is installed by set_pmd_migration_entry() -> pmdp_invalidate(),
        an immediate 2 MiB host flush per pass; a PROT_NONE PTE is not pte_accessible(), so
        try_to_migrate_one() defers no flush for it (mm/rmap.c set_tlb_ubc_flush_pending(),
        v6.5 and v7.x): no host flush for a 4K folio."""
        if heads.size == 0:
            return
        self.kvm.invalidate_folios(ctx, heads, nr_pages, page_size, passes=passes)
        if nr_pages > 1:
            n = passes * int(heads.size)
            ctx.counters.add(ctx.epoch, page_size, "host_tlb_flushes", n)
            ctx.counters.add(ctx.epoch, page_size, "host_tlb_flush_ipis", n * ctx.others_in_guest())

    def tls_fault(self, now_ms: int, task: TaskNuma) -> None:
        """The vCPU thread's NUMA hinting fault on its own rseq area after a scan made that
        page PROT_NONE (:class:`pipeline.model.hosting.VmmArea` ``tls_vcpu``, ADR 0350): one
        private (the thread's own last cpupid), local page fault through task_numa_fault()
        (v6.5 = v7.1, KERNEL.md §3.5). It keeps update_task_scan_period() running for a
        thread whose guest pages take no fault (pinned anonymous RAM). Not counted in
        ``numa_hint_faults``, which counts the guest's."""
        mem = np.zeros(task.nodes, np.float64)
        mem[task.node] = 1.0
        self._task_numa_fault(
            now_ms, task, shared=0, private=1, local=1, remote=0, failed=0, mem=mem
        )

    def _task_numa_fault(
        self,
        now_ms: int,
        task: TaskNuma,
        *,
        shared: int,
        private: int,
        local: int,
        remote: int,
        failed: int,
        mem: npt.NDArray[np.float64],
    ) -> None:
        """kernel/sched/fair.c task_numa_fault() (v6.5 = v7.1, KERNEL.md §3.5) for a batch of
        faults of one thread in one epoch (in base pages): placement (and so
        update_task_scan_period()) sees the faults recorded before this epoch; then
        locality, TNF_MIGRATE_FAIL and the per-node memory faults."""
        if not task.has_faults:
            task.has_faults = True
            task.locality = [0, 0, 0]
        if now_ms > task.numa_migrate_retry_ms:
            self.scanner.task_numa_placement(now_ms, task)
            if task.numa_preferred_nid != NUMA_NO_NODE:
                task.numa_migrate_retry_ms = now_ms + min(1000, task.numa_scan_period // 16)
        task.locality[2] += failed
        task.faults_buf[1] += private
        task.faults_buf[0] += shared
        task.locality[1] += local
        task.locality[0] += remote
        task.faults_mem += mem
