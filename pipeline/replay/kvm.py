"""The KVM side: MMU-notifier invalidation, SPTE zaps, remote TLB flushes, EPT refaults.

Models virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start()/_end() and
__kvm_handle_hva_range(), arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs() and
kvm_flush_remote_tlbs() (KERNEL.md §5.1-§5.4), with the RFC v2 ``numa_protect`` callback
(§2.2). KVM never looks at the notifier event in v6.5 or v7.1: every invalidation is a full
unmap of the present SPTEs in the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from pipeline.model.hosting import VmHosting
from pipeline.replay.contention import contention_rng, draw_yields
from pipeline.replay.context import EpochCtx
from pipeline.replay.counters import PS_2M, PS_4K, V
from pipeline.replay.policies.base import Policy
from pipeline.replay.state import P_SPTE, PAGE_SIZE, PAGES_PER_PMD, VmState

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class YieldModel:
    """The yield-while-pending term Y of KERNEL.md §5.2 / §7 (``F = 1[zapped] + Y``).

    Kernel rule (v6.5 arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs() ->
    tdp_mmu_iter_cond_resched()): at every iterator step that made forward progress, if
    ``need_resched() || rwlock_needbreak(&kvm->mmu_lock)``, the zap flushes when a flush is
    pending (an SPTE was zapped since the last yield) and drops mmu_lock. A vCPU that faults
    on a gfn the running invalidation has already zapped takes mmu_lock for read (contending),
    sees mmu_invalidate_retry_gfn() (is_page_fault_stale()), returns RET_PF_RETRY, re-enters
    the guest and faults again: it contends again within one exit/entry, i.e. in lock-step
    with the zap, until invalidate_range_end. Yan Zhao's anatomy of one bad range (§2.5d):
    two retrying gfns retried 3298 and 3161 times for 3209 flushes of one kvm_unmap_gfn_range
    -- one retry per yield-with-flush. So from the moment the first vCPU is caught, every
    later zapped SPTE costs one yield and one flush.

    The model, per invalidation that zapped ``S`` SPTEs (4K + 2M leaves, the zap length) while
    ``n`` vCPUs other than the invalidating thread faulted inside the range in the same
    epoch: the zap sweeps the range at constant speed and each of the ``n`` vCPUs is first
    caught at a uniformly distributed point of it; the first of ``n`` uniform points comes,
    in expectation, after ``1/(n+1)`` of the zap, so

        Y = (S - 1) * n / (n + 1)                      (no fitted constant)

    It is 0 for a one-entry zap (RFC v2 numa_protect, a migration CLEAR of one folio) and for
    an uncontended one (n = 0). ``per_vcpu`` (None by default) optionally caps the retries
    of each caught vCPU: ``Y = min(Y, per_vcpu * n)``, for sensitivity sweeps.

    Y is 0 unless the zap can yield on contention:

    * rwlock_needbreak() is true on contention with preempt=full; before c793a62823d1
      (~v6.11) also with none/voluntary on a CONFIG_PREEMPT_DYNAMIC build
      (``preempt_dynamic``, default True: distro kernels), §5.2;
    * the shadow MMU (tdp_mmu=N, kvm_pvm): v6.5 kvm_unmap_gfn_range() zaps with
      kvm_handle_gfn_range(kvm, range, kvm_zap_rmap), which never yields; from v6.12
      (Sean Christopherson's rmap series) it calls __kvm_rmap_zap_gfn_range(...,
      range->may_block, ...) -> __walk_slot_rmaps(), which yields and flushes first as
      the TDP walk does (review finding 5);
    * from d02c357e5bfa (v6.8) kvm_faultin_pfn() checks mmu_invalidate_retry_gfn_unsafe()
      before taking mmu_lock, so a caught vCPU retries without contending: the lock-step
      loop is gone. ``d02c357e5bfa_factor`` (default 0.0) is the share of Y left.
    * the oracle sends exact one-entry ranges and never yields (ADR 0302).

    ``mode`` ``"process"`` (the default, ADR 0370): Y is not this expected value but one
    seeded draw per zap of the contention process of :mod:`pipeline.replay.contention` (the
    first vCPU caught by a visit to an already-zapped SPTE, then one flush per SPTE left),
    thinned by :meth:`factor` and capped by ``per_vcpu``. ``"expected"``: the expected value
    above, accumulated per VM, whole flushes emitted as the running sum crosses integers.
    """

    per_vcpu: float | None = None
    d02c357e5bfa_factor: float = 0.0
    preempt_dynamic: bool = True
    mode: str = "process"

    def factor(self, policy: Policy, preempt: str, mmu: str = "tdp") -> float:
        """The share of the lock-step yields the kernel of ``policy`` takes (0: none)."""
        yields = preempt == "full" or (
            not policy.needbreak_iff_preemptible and self.preempt_dynamic
        )
        if not yields or policy.migrate_filter == "oracle":
            return 0.0
        if mmu == "shadow" and not policy.rmap_zap_yields:
            return 0.0
        return self.d02c357e5bfa_factor if policy.fault_retry_precheck else 1.0

    def extra_flushes(self, spte_zapped: int, contending_vcpus: int) -> float:
        """Expected yields with a pending flush of one zap (before :meth:`factor`)."""
        if spte_zapped <= 1 or contending_vcpus <= 0:
            return 0.0
        n = contending_vcpus
        y = (spte_zapped - 1) * n / (n + 1)
        if self.per_vcpu is not None:
            y = min(y, self.per_vcpu * n)
        return y


# kernel/sched/fair.c sysctl_sched_base_slice (EEVDF, v6.6+): 0.75 ms, scaled at boot by
# get_update_sysctl_factor() = 1 + ilog2(min(online CPUs, 8)) (SCHED_TUNABLESCALING_LOG)
BASE_SLICE_NS = 750_000
TICK_NS = 4_000_000  # HZ=250 (the lab host's CONFIG_HZ; KERNEL.md §3.3 uses the same tick)


def sched_slice_ns(cpus: int) -> float:
    """sysctl_sched_base_slice of a host with ``cpus`` CPUs (v6.6+ EEVDF; v6.18)."""
    return BASE_SLICE_NS * (1 + int(math.log2(max(1, min(cpus, 8)))))


@dataclass(frozen=True)
class ReschedModel:
    """The need_resched() term of the zap walk's yields (ADR 0320, ADR 0350): when another
    task wants the zapping thread's CPU during a long zap, the walk flushes before it yields.

    Kernel rule: arch/x86/kvm/mmu/mmu.c __walk_slot_rmaps() (shadow MMU, reached from
    kvm_unmap_gfn_range() -> kvm_rmap_zap_gfn_range() with ``can_yield = range->may_block``
    and ``flush_on_yield = true``, v6.12+, v6.18) checks ``need_resched() ||
    rwlock_needbreak(&kvm->mmu_lock)`` after every rmap head; when true it calls
    kvm_flush_remote_tlbs_range() if a zap is pending and then cond_resched_rwlock_write().
    arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_iter_cond_resched() does the same for the TDP MMU
    (v6.5 = v6.18 = v7.1). need_resched() is tested explicitly, so this happens under every
    preemption model (KERNEL.md §5.2, second term of "flushes per range"; the contention
    term rwlock_needbreak() is :class:`YieldModel`). The notifier of change_prot_numa() is
    blockable (mmu_notifier_invalidate_range_start() sets MMU_NOTIFIER_RANGE_BLOCKABLE), so
    ``may_block`` is true.

    Scheduler side (kernel/sched/core.c, fair.c, EEVDF v6.6+): need_resched() is set on the
    thread's CPU in two ways (ADR 0350).

    * **Slice ends.** With another task runnable, update_curr() -> update_deadline() ->
      resched_curr() runs at a scheduler tick once the thread's slice (the base slice,
      :func:`sched_slice_ns`) is used. The check comes only at ticks, so a slice lasts
      ``max(slice, TICK_NS)``. The tick that queues task_numa_work() (task_tick_numa()) is
      such a tick when the slice is shorter than a tick. The work then runs when the thread
      is next scheduled in, at the start of a fresh slice. A walk of ``W`` ns of CPU
      therefore yields about ``(W - L) / L`` times with ``L = max(slice, TICK_NS)`` (none
      when ``W < L``), weighted by ``min(1, host_runnable)``, the time a competitor is there.
    * **Wake-ups.** check_preempt_wakeup_fair() -> resched_curr() at any moment: a Poisson
      rate, ``W x rate`` yields.

    ``preempt_per_s`` is the vCPU threads' measured involuntary context switches per second
    of CPU time. A vCPU thread of a guest that never halts never sleeps, so every switch-out
    is one need_resched() of its CPU. The wake-up rate is what is left of it after the slice
    ends, ``min(1, host_runnable) / L`` per second. Without a measured rate, only the slice
    term applies (ADR 0320's model, 0 on an idle host). In the lab:
    - at an idle host's ~125/s, almost all wake-ups, the zap walks' yields match pooled
      (51 / 51);
    - at a CPU share of 0.33 (300/s, mostly 4 ms slice ends), walks shorter than a tick do
      not yield, and the observed flushes show it.

    ``W = S * zap_ns_per_spte`` for ``S`` SPTEs zapped; the empty rmap heads are ignored
    (THP ranges walk 128 heads of 2 MiB). ``zap_ns_per_spte`` is the CPU cost per zapped
    SPTE: the lab's mprotect() probe, else 100 ns, an assumption of the order measured.
    """

    zap_ns_per_spte: float = 100.0
    host_runnable: float = 0.0
    host_cpus: int = 8
    preempt_per_s: float | None = None

    def for_host(self, hosting: VmHosting) -> ReschedModel:
        """This model with the VM's measured host facts (:class:`VmHosting`) where known."""
        out = replace(self, host_runnable=hosting.host_runnable or self.host_runnable)
        if hosting.zap_ns_per_spte is not None:
            out = replace(out, zap_ns_per_spte=hosting.zap_ns_per_spte)
        if hosting.host_cpus is not None:
            out = replace(out, host_cpus=hosting.host_cpus)
        if hosting.preempt_per_s is not None:
            out = replace(out, preempt_per_s=hosting.preempt_per_s)
        return out

    @property
    def slice_ns(self) -> float:
        """How long a slice lasts: the base slice, but need_resched() is only set at a tick."""
        return max(sched_slice_ns(self.host_cpus), TICK_NS)

    @property
    def competing(self) -> float:
        """The share of the time another task is runnable on the CPU (0 to 1)."""
        return min(1.0, max(0.0, self.host_runnable))

    @property
    def wakeups_per_s(self) -> float:
        """Wake-up preemptions per second of CPU time: the measured rate less the slice ends."""
        if self.preempt_per_s is None:
            return 0.0
        return max(0.0, self.preempt_per_s - self.competing * 1e9 / self.slice_ns)

    def applies(self, policy: Policy, mmu: str = "tdp") -> bool:
        """Whether the zap of ``policy``'s kernel yields on need_resched() with a flush:
        the TDP walk always; the shadow rmap zap from v6.12 (``rmap_zap_yields``; v6.5's
        kvm_handle_gfn_range(kvm_zap_rmap) never yields); never for the oracle (ADR 0302)."""
        if (self.competing <= 0 and self.wakeups_per_s <= 0) or policy.migrate_filter == "oracle":
            return False
        return not (mmu == "shadow" and not policy.rmap_zap_yields)

    def extra_flushes(self, spte_zapped: int) -> float:
        """Expected need_resched() yields with a pending flush of one zap of
        ``spte_zapped`` SPTEs (the flush at the end of the range is not counted)."""
        if spte_zapped <= 1:
            return 0.0
        walk_ns = spte_zapped * self.zap_ns_per_spte
        slice_ns = self.slice_ns
        slice_ends = self.competing * max(0.0, walk_ns - slice_ns) / slice_ns
        return slice_ends + self.wakeups_per_s * walk_ns / 1e9


class Kvm:
    """KVM's view of one VM: counts and zaps on its :class:`VmState`."""

    def __init__(
        self,
        vm: VmState,
        policy: Policy,
        yields: YieldModel,
        *,
        shadow_2m: bool,
        resched: ReschedModel | None = None,
        seed: int = 0,
        epoch_ms: int = 100,
    ) -> None:
        self.vm = vm
        self.policy = policy
        self.shadow = vm.cfg.mmu == "shadow"
        self.spte_2m = not self.shadow or shadow_2m
        self.yields = yields
        self.yield_factor = yields.factor(policy, vm.cfg.preempt, vm.cfg.mmu)
        self.resched = resched or ReschedModel()
        self.resched_on = self.resched.applies(policy, vm.cfg.mmu)
        self.yield_carry = 0.0
        self.rng = contention_rng(seed, policy.name, vm.cfg.name)
        self.epoch_ns = epoch_ms * 1e6
        self.in_progress = 0
        # SPTEs zapped by notifier calls so far (4 KiB, 2 MiB): the scan's CPU cost
        self.zapped = [0, 0]

    # -- SPTE zaps ------------------------------------------------------------------------
    def zap_range(self, gfn_start: int, gfn_end: int) -> tuple[int, int]:
        """Models arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs() (and, shadow MMU, the rmap
        zap kvm_zap_rmap()) over ``[gfn_start, gfn_end)``: clear every present leaf SPTE
        overlapping it, a 2M leaf on any overlap (v6.5: SPTE := 0; v7.x:
        SHADOW_NONPRESENT_VALUE; both non-present, KERNEL.md §5.2). Returns (4K, 2M)."""
        vm = self.vm
        g0, g1 = gfn_start // PAGES_PER_PMD, -(-gfn_end // PAGES_PER_PMD)
        n2m = int(np.count_nonzero(vm.g_spte2m[g0:g1]))
        if n2m:
            vm.g_spte2m[g0:g1] = False
        counts = vm.g_nspte[g0:g1]
        nz = np.flatnonzero(counts)
        if nz.size == 0:
            return 0, n2m
        aligned = gfn_start % PAGES_PER_PMD == 0 and gfn_end % PAGES_PER_PMD == 0
        if aligned:
            n4k = int(counts.sum())
            lo, hi = (g0 + int(nz[0])) * PAGES_PER_PMD, (g0 + int(nz[-1]) + 1) * PAGES_PER_PMD
            vm.pflags[lo:hi] &= ~P_SPTE
            counts[:] = 0
            return n4k, n2m
        lo = max(gfn_start, (g0 + int(nz[0])) * PAGES_PER_PMD)
        hi = min(gfn_end, (g0 + int(nz[-1]) + 1) * PAGES_PER_PMD)
        idx = np.flatnonzero(vm.pflags[lo:hi] & P_SPTE) + lo
        return self.zap_pages(idx), n2m

    def zap_pages(self, pages: I64) -> int:
        """Clear the 4K SPTEs of these pages; returns how many were present."""
        vm = self.vm
        if pages.size == 0:
            return 0
        present = pages[(vm.pflags[pages] & P_SPTE) != 0]
        if present.size:
            vm.pflags[present] &= ~P_SPTE
            np.subtract.at(vm.g_nspte, present // PAGES_PER_PMD, 1)
        return int(present.size)

    def _account_zap(self, ctx: EpochCtx, n4k: int, n2m: int) -> None:
        ctx.counters.add(ctx.epoch, PS_4K, "spte_zapped", n4k)
        ctx.counters.add(ctx.epoch, PS_2M, "spte_zapped", n2m)

    # -- flushes --------------------------------------------------------------------------
    def flush_remote_tlbs(
        self, ctx: EpochCtx, page_size: int, nr: int, *, numa: bool = False
    ) -> None:
        """Models virt/kvm/kvm_main.c kvm_flush_remote_tlbs() ``nr`` times (v6.5 = v7.1,
        KERNEL.md §5.2): kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH) sets the request on
        every vCPU and, per kvm_request_needs_ipi(), IPIs each one in guest mode other than
        the caller. ``numa``: also count them as ``numa_remote_tlb_flushes``."""
        if nr <= 0:
            return
        c = ctx.counters
        c.add(ctx.epoch, page_size, "remote_tlb_flushes", nr)
        if numa:
            c.add(ctx.epoch, page_size, "numa_remote_tlb_flushes", nr)
        c.add(ctx.epoch, page_size, "shootdown_ipis", nr * ctx.others_in_guest())
        targets = np.flatnonzero(ctx.active)
        c.threads[ctx.epoch, targets[targets != ctx.thread], V["shootdown_ipis"]] += nr

    def _yields(self, ctx: EpochCtx, gfn_start: int, gfn_end: int, spte_zapped: int) -> int:
        """Whole extra flushes of one zap of ``spte_zapped`` SPTEs over the range: the
        contention term Y (:class:`YieldModel`: a seeded draw of the process of
        :mod:`pipeline.replay.contention`, or its expected value) plus the need_resched()
        term (:class:`ReschedModel`, accumulated as an expected value)."""
        if spte_zapped <= 1 or (self.yield_factor == 0.0 and not self.resched_on):
            return 0
        drawn = 0
        if self.yield_factor and self.yields.mode == "process":
            drawn = self._draw_contention(ctx, gfn_start, gfn_end, spte_zapped)
        elif self.yield_factor:
            n = int(ctx.vcpus_touching(gfn_start, gfn_end).size)
            self.yield_carry += self.yield_factor * self.yields.extra_flushes(spte_zapped, n)
        if self.resched_on:
            self.yield_carry += self.resched.extra_flushes(spte_zapped)
        whole = math.floor(self.yield_carry)
        self.yield_carry -= whole
        return drawn + whole

    def _draw_contention(self, ctx: EpochCtx, gfn_start: int, gfn_end: int, spte: int) -> int:
        """One draw of the contention process for this zap: the other vCPUs' page touches in
        the range this epoch, the walk at the zap cost per SPTE, then
        :meth:`YieldModel.factor` as a binomial thinning and the ``per_vcpu`` cap."""
        lo = np.maximum(ctx.run_start, gfn_start)
        hi = np.minimum(ctx.run_end, gfn_end)
        hit = (hi > lo) & (ctx.run_vcpu != ctx.thread)
        touches = int((hi - lo)[hit].sum())
        if touches == 0:
            return 0
        y = draw_yields(
            self.rng,
            spte,
            touches,
            epoch_ns=self.epoch_ns,
            zap_ns_per_spte=self.resched.zap_ns_per_spte,
        )
        if 0.0 < self.yield_factor < 1.0 and y:
            y = int(self.rng.binomial(y, self.yield_factor))
        if self.yields.per_vcpu is not None:
            n = int(np.unique(ctx.run_vcpu[hit]).size)
            y = min(y, math.floor(self.yields.per_vcpu * n))
        return y

    # -- notifier entry points --------------------------------------------------------------
    def invalidate_range_start(
        self,
        ctx: EpochCtx,
        starts: I64,
        ends: I64,
        page_size: int,
        *,
        zap: bool = True,
        numa: bool = True,
    ) -> int:
        """Models kvm_mmu_notifier_invalidate_range_start() for one notifier call covering the
        gfn sub-ranges ``[starts, ends)`` (one range, except the batched notify-changed
        proposal). Fires kvm_unmap_hva_range, marks the range in progress
        (kvm_mmu_invalidate_begin), and unless ``zap`` is False (RFC v2 NUMA range) runs
        kvm_unmap_gfn_range per sub-range and flushes once if anything was zapped, plus the
        yields (§5.2). ``numa``: the call is change_prot_numa()'s PROTECTION_VMA notifier, so
        its unmap call and flushes also count as ``numa_*`` (Yan Zhao's columns). Returns the
        SPTEs zapped."""
        c = ctx.counters
        self.in_progress += 1
        if ctx.trace is not None:
            ctx.trace.append(("start", int(starts.min()), int(ends.max())))
        c.add(ctx.epoch, page_size, "mmu_notifier_invalidations", 1)
        c.add(ctx.epoch, page_size, "notifier_bytes", int((ends - starts).sum()) * PAGE_SIZE)
        if not zap:
            return 0
        c.add(ctx.epoch, page_size, "kvm_unmap_gfn_range_calls", int(starts.size))
        if numa:
            c.add(ctx.epoch, page_size, "numa_unmap_gfn_range_calls", int(starts.size))
        n4k = n2m = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            a, b = self.zap_range(s, e)
            n4k += a
            n2m += b
        self._account_zap(ctx, n4k, n2m)
        self.zapped[0] += n4k
        self.zapped[1] += n2m
        if n4k + n2m:
            extra = self._yields(ctx, int(starts.min()), int(ends.max()), n4k + n2m)
            self.flush_remote_tlbs(ctx, page_size, 1 + extra, numa=numa)
        return n4k + n2m

    def invalidate_folios(
        self, ctx: EpochCtx, heads: I64, nr_pages: int, page_size: int, *, passes: int = 1
    ) -> None:
        """``passes`` invalidate_range_start/end pairs over each folio ``[head, head +
        nr_pages)``, vectorized: the MMU_NOTIFY_CLEAR notifiers of try_to_migrate() (§5.5).
        Only the first pass can find a present SPTE (the folio stays locked, so no vCPU can
        map it again before the last pass); each range that zapped flushes once plus Y."""
        n = int(heads.size)
        if n == 0:
            return
        c = ctx.counters
        calls = n * passes
        c.add(ctx.epoch, page_size, "mmu_notifier_invalidations", calls)
        c.add(ctx.epoch, page_size, "notifier_bytes", calls * nr_pages * PAGE_SIZE)
        c.add(ctx.epoch, page_size, "kvm_unmap_gfn_range_calls", calls)
        if ctx.trace is not None:
            for _ in range(passes):
                for h in heads.tolist():
                    ctx.trace.append(("start", h, h + nr_pages))
                    ctx.trace.append(("end", h, h + nr_pages))
        vm = self.vm
        if nr_pages == 1:
            zapped = (vm.pflags[heads] & P_SPTE) != 0
            n4k, n2m = self.zap_pages(heads), 0
        else:
            g = heads // PAGES_PER_PMD
            had2m = vm.g_spte2m[g].copy()
            vm.g_spte2m[g] = False
            n2m = int(had2m.sum())
            zapped = had2m
            n4k = 0
            flushes = 0
            for i in np.flatnonzero(vm.g_nspte[g] > 0).tolist():  # shadow MMU 4K SPTEs
                h = int(heads[i])
                z = self.zap_range(h, h + nr_pages)[0]
                n4k += z
                zapped[i] |= z > 0
                flushes += self._yields(ctx, h, h + nr_pages, z + int(had2m[i]))
            self._account_zap(ctx, n4k, n2m)
            self.flush_remote_tlbs(ctx, page_size, flushes + int(zapped.sum()))
            return
        # one 4K SPTE per folio: a one-entry zap never yields with a flush pending (Y = 0)
        self._account_zap(ctx, n4k, n2m)
        self.flush_remote_tlbs(ctx, page_size, int(zapped.sum()))

    def invalidate_range_end(self, ctx: EpochCtx, starts: I64, ends: I64) -> None:
        """Models virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end() (v6.5 = v7.1,
        KERNEL.md §5.1): kvm_mmu_invalidate_end(), no zap, no flush."""
        self.in_progress -= 1
        if ctx.trace is not None:
            ctx.trace.append(("end", int(starts.min()), int(ends.max())))

    def numa_protect(self, ctx: EpochCtx, pages: I64, granules: I64, page_size: int) -> None:
        """Models RFC v2 kvm_mmu_notifier_numa_protect(): kvm_handle_hva_range() with
        kvm_unmap_gfn_range, may_block false, flush_on_ret: one call per protected PTE or PMD,
        one flush per call whose SPTE was present (§2.2, ``F_p``)."""
        vm = self.vm
        c = ctx.counters
        calls = int(pages.size + granules.size)
        c.add(ctx.epoch, page_size, "kvm_unmap_gfn_range_calls", calls)
        c.add(ctx.epoch, page_size, "numa_unmap_gfn_range_calls", calls)
        flushes = self.zap_pages(pages)
        n4k = flushes
        n2m = 0
        if granules.size:
            present2m = vm.g_spte2m[granules]
            n2m = int(present2m.sum())
            vm.g_spte2m[granules] = False
            flushes += n2m
            # shadow MMU: 4K SPTEs under a THP; one flush per PMD call that zapped any
            for i in np.flatnonzero(vm.g_nspte[granules] > 0).tolist():
                g = int(granules[i])
                z = self.zap_range(g * PAGES_PER_PMD, (g + 1) * PAGES_PER_PMD)[0]
                n4k += z
                flushes += int(z > 0 and not present2m[i])
        self._account_zap(ctx, n4k, n2m)
        self.flush_remote_tlbs(ctx, page_size, flushes, numa=True)
