"""mmu_lock contention during a zap, as a seeded process: the yields-with-a-flush of one
kvm_unmap_gfn_range() while vCPUs fault inside the range (ADR 0370).

Kernel rules (v6.5, TDP MMU; KERNEL.md §2.5d, §5.2, §5.4):

* virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start() -> kvm_mmu_invalidate_begin()
  marks the range in progress (mmu_invalidate_in_progress, mmu_invalidate_range_start/end)
  before the zap; kvm_mmu_notifier_invalidate_range_end() clears it after.
* arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs() walks the range leaf by leaf and calls
  tdp_mmu_iter_cond_resched() at each step that made progress: when ``need_resched() ||
  rwlock_needbreak(&kvm->mmu_lock)`` it calls kvm_flush_remote_tlbs() if ``flush`` (an SPTE
  was zapped since the last yield), clears ``flush`` and drops the lock
  (cond_resched_rwlock_write()).
* arch/x86/kvm/mmu/mmu.c kvm_tdp_mmu_page_fault() of a vCPU that faults inside the range:
  kvm_faultin_pfn(), then read_lock(&kvm->mmu_lock) (a contending reader: rwlock_needbreak()
  is true for the writer on a preemptible kernel, include/linux/spinlock.h), then
  is_page_fault_stale() -> mmu_invalidate_retry_gfn() is true while the range is in
  progress: RET_PF_RETRY, the vCPU re-enters the guest, faults on the same gfn and contends
  again. It stays in this loop until invalidate_range_end: Yan Zhao's anatomy of one range
  (14 Aug 2023, <ZNnPF4W26ZbAyGto@yzhao56-desk.sh.intel.com>): GFN 0xb804c retried 3,298
  times, 0xb8074 3,161 times, 0xb81ce 15,190 times, for 3,209 kvm_flush_remote_tlbs() of one
  kvm_unmap_gfn_range(), "because flush requests are not batched", on a range "mapped in
  both 2M and 4K in secondary MMU". So from the first catch on, every zapped SPTE is one
  yield with a pending flush: the rest of the zap is paid one flush per SPTE.
* d02c357e5bfa (v6.8): kvm_faultin_pfn() checks mmu_invalidate_retry_gfn_unsafe() *before*
  taking mmu_lock, so a caught vCPU retries without contending: the loop is gone.
  c793a62823d1 (~v6.11): rwlock_needbreak() is false unless the kernel is preemptible. Which
  kernels take the loop is :meth:`pipeline.replay.kvm.YieldModel.factor`.

The process, per zap of ``S`` SPTEs (4K + 2M leaves) over a range: the walk takes ``W = S x
zap_ns_per_spte`` ns. The vCPUs other than the zapping thread touch pages of the range in the
epoch (``touches``: the pages of their access runs there, each touched at least once), spread
over the epoch as a Poisson process. A touch at time ``t`` of the walk lands on an SPTE the
walk has already cleared with probability ``t / W`` (the share of the range zapped so far; the
rest is still mapped and does not fault), and faults. The catches are then a Poisson process
of intensity ``lam x t / W`` (``lam`` = touches per ns), whose first point ``T`` has
``P(T > t) = exp(-lam t^2 / (2 W))``. When ``T < W`` the walk is caught at ``u = T / W`` and
the rest of it costs one flush per SPTE: ``Y = floor((S - 1) x (1 - u))``; else ``Y = 0``.

Nothing is fitted: ``W`` uses the same zap cost as the need_resched() term
(:class:`pipeline.replay.kvm.ReschedModel`, 100 ns per SPTE unless measured), the touches come
from the trace. The spread comes from the process: a long 4K zap (big ``W``) in a range the
vCPUs work in is caught most of the time and early (``Y`` close to ``S``), a short 2M zap
rarely, a range the vCPUs only graze (a few pages per epoch) now and then. The draws come
from one ``numpy.random.Generator`` per (seed, policy, VM), so the same inputs and seed give
the same flushes whatever else runs.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

DEFAULT_ZAP_NS_PER_SPTE = 100.0


def contention_rng(seed: int, policy: str, vm: str) -> np.random.Generator:
    """The generator of one (seed, policy, VM) replay: independent of the other policies and
    VMs of the run, of the workers and of the batch size."""
    key = [int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(policy.encode()), zlib.crc32(vm.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))


def first_catch(rng: np.random.Generator, touches_per_ns: float, walk_ns: float) -> float | None:
    """Where the first vCPU is caught in a walk of ``walk_ns`` (a share ``u`` of it in
    [0, 1)), or None if no touch lands on a zapped SPTE before the walk ends: one draw of the
    first point of the Poisson process of intensity ``touches_per_ns x t / walk_ns``."""
    if touches_per_ns <= 0.0 or walk_ns <= 0.0:
        return None
    e = float(rng.exponential())
    t = math.sqrt(2.0 * walk_ns * e / touches_per_ns)
    return None if t >= walk_ns else t / walk_ns


def draw_yields(
    rng: np.random.Generator,
    spte_zapped: int,
    touches: int,
    *,
    epoch_ns: float,
    zap_ns_per_spte: float = DEFAULT_ZAP_NS_PER_SPTE,
) -> int:
    """Yields with a pending flush of one zap of ``spte_zapped`` SPTEs while other vCPUs
    touched ``touches`` pages of the range over an epoch of ``epoch_ns`` (see the module doc)."""
    if spte_zapped <= 1 or touches <= 0:
        return 0
    walk_ns = spte_zapped * zap_ns_per_spte
    u = first_catch(rng, touches / epoch_ns, walk_ns)
    if u is None:
        return 0
    return math.floor((spte_zapped - 1) * (1.0 - u))
