"""The epoch engine: the only loop over time (STYLE.md, SimPy's step()/run(until=)).

``Engine.step()`` advances every VM of the replay by one epoch under one policy: first the
epoch's guest accesses (faults on what earlier scans zapped or protected), then the scheduler
ticks of the threads that ran, which may run task_numa_work (its zaps hit the next epoch's
accesses). No clock, no RNG: time is ``epoch * epoch_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.model.hosting import VmHosting
from pipeline.replay.context import EpochCtx
from pipeline.replay.counters import Counters
from pipeline.replay.fault import FaultPath
from pipeline.replay.intervals import IntervalSet
from pipeline.replay.kvm import Kvm, ReschedModel, YieldModel
from pipeline.replay.mprotect import ChangeProtNuma
from pipeline.replay.policies.base import Policy
from pipeline.replay.scanner import TICK_MS, Scanner, TaskNuma
from pipeline.replay.state import HostState, VmConfig, VmState
from pipeline.replay.workcost import NumaWorkCost

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class VmAccesses:
    """One VM's access runs as arrays sorted by epoch (then vcpu, gfn)."""

    epoch: I64
    vcpu: I64
    gfn_start: I64
    nr_pages: I64

    def bounds(self, n_epochs: int) -> I64:
        out: I64 = np.searchsorted(self.epoch, np.arange(n_epochs + 1)).astype(np.int64)
        return out


@dataclass(frozen=True)
class EngineOptions:
    """Model switches that are not the policy's (see params.ReplayParams)."""

    epoch_ms: int
    yields: YieldModel
    vmm_thread: bool = False
    shadow_guest_2m: bool = False
    busy_vcpus: bool = False
    vmm_threads: int = 8
    vmm_thread_share: float = 0.05
    resched: ReschedModel = field(default_factory=ReschedModel)
    work_cost: NumaWorkCost = field(default_factory=NumaWorkCost)
    seed: int = 0
    spte_4k: float | None = None
    thp_fault_fallback: float = 0.0


class VmRun:
    """Everything one VM needs during a replay under one policy."""

    def __init__(
        self,
        cfg: VmConfig,
        acc: VmAccesses,
        policy: Policy,
        host: HostState,
        *,
        opts: EngineOptions,
        n_epochs: int,
        knobs: dict[str, int],
        hosting: VmHosting | None = None,
    ) -> None:
        self.cfg = cfg
        self.hosting = hosting or VmHosting(cfg.name)
        self.acc = acc
        self.bounds = acc.bounds(n_epochs)
        self.state = VmState(cfg, host)
        self.dirty = IntervalSet.of(
            [r.gfn_start for r in cfg.regions], [r.gfn_end for r in cfg.regions]
        )
        self.kvm = Kvm(
            self.state,
            policy,
            opts.yields,
            shadow_2m=opts.shadow_guest_2m,
            resched=opts.resched.for_host(self.hosting),
            seed=opts.seed,
            epoch_ms=opts.epoch_ms,
        )
        self.cprot = ChangeProtNuma(self.state, self.kvm, policy, self.dirty)
        self.tasks = [
            TaskNuma(
                index=i,
                pid=int(cfg.vcpu_tids[i]),
                node=int(cfg.vcpu_nodes[i]),
                nodes=cfg.host_nodes,
            )
            for i in range(cfg.vcpus)
        ]
        # the VMM's other threads tick with ``vmm_thread`` from measured facts (ADR 0363: off
        # by default); else the VMM main thread ticks: asked for (vmm_thread), or known from
        # the trace (ADR 0366)
        others = self.hosting.vmm_threads if opts.vmm_thread else ()
        self.measured_threads = bool(others)
        for j, th in enumerate(others):
            node = int(cfg.vcpu_nodes[0]) if cfg.vcpus else 0
            self.tasks.append(
                TaskNuma(
                    index=cfg.vcpus + j, pid=th.tid, node=node, nodes=cfg.host_nodes,
                    main_thread=th.main, runtime_ms=th.runtime_start_ms,
                )
            )  # fmt: skip
        main_share = self.hosting.main_thread_share
        if not others and (opts.vmm_thread or main_share is not None):
            pid = int(cfg.vcpu_tids[0]) - 1 if cfg.vcpus else 1
            node = int(cfg.vcpu_nodes[0]) if cfg.vcpus else 0
            self.tasks.append(
                TaskNuma(
                    index=cfg.vcpus, pid=pid, node=node, nodes=cfg.host_nodes, main_thread=True
                )
            )
        self.vmm_thread = opts.vmm_thread or main_share is not None
        # task_tick_numa() compares se.sum_exec_runtime: each thread gains its CPU share of
        # the epoch; the QEMU main thread mostly sleeps in ppoll()
        share = opts.vmm_thread_share if main_share is None else main_share
        self.vcpu_ms = [self.hosting.share(i) * opts.epoch_ms for i in range(cfg.vcpus)]
        self.gain_ms = self.vcpu_ms + (
            [th.cpu_share * opts.epoch_ms for th in others]
            if others
            else [share * opts.epoch_ms] * (len(self.tasks) - cfg.vcpus)
        )
        # ticks that land on each measured VMM thread (ADR 0363; the synthetic one: every epoch)
        self.ticks = VmmTicks(self.gain_ms[cfg.vcpus :] if others else [])
        nr_threads = self.hosting.nr_threads or cfg.vcpus + opts.vmm_threads
        self.busy_vcpus = opts.busy_vcpus
        self.scanner = Scanner(
            self.state,
            policy,
            self.cprot,
            self.tasks,
            knobs,
            nr_threads=nr_threads,
            vmm_areas=self.hosting.vmm_areas,
            work_cost=opts.work_cost.for_host(self.hosting),
        )
        self._start_runtime(knobs["scan_delay_ms"])
        self.fault = FaultPath(
            self.state,
            self.kvm,
            policy,
            scanner=self.scanner,
            tasks=self.tasks,
            dirty=self.dirty,
            spte_4k=opts.spte_4k,
            thp_fault_fallback=opts.thp_fault_fallback,
        )
        self.scanner.tls_fault = self.fault.tls_fault
        self.scanner.cpu_share = [self.hosting.share(i) for i in range(len(self.tasks))]
        self.scanner.resume_ms = [resume_ms(self.hosting, i) for i in range(len(self.tasks))]
        self.counters = Counters(n_epochs, len(self.tasks))
        self.trace: list[tuple[str, int, int]] | None = None

    def _start_runtime(self, scan_delay_ms: int) -> None:
        """vCPU threads that ran before the replay (``VmHosting.vcpu_runtime_start_ms``) start
        with that se.sum_exec_runtime; node_stamp keeps its init_numa_balancing() value, since
        task_tick_numa() did not run while numa_balancing was 0 (kernel/sched/fair.c, v6.5 =
        v6.18 = v7.1, KERNEL.md §3.3). The mm is at least as old as its oldest thread's CPU
        time, so mm->numa_next_scan (creation + scan_delay) comes that much earlier. The VMM
        main thread starts with ``main_thread_runtime_start_ms`` (ADR 0366)."""
        start = self.hosting.vcpu_runtime_start_ms
        main = self.hosting.main_thread_runtime_start_ms if self.vmm_thread else 0.0
        if not start and not main and not self.measured_threads:
            return
        for t in self.tasks[: self.cfg.vcpus]:
            t.runtime_ms = float(start[min(t.index, len(start) - 1)]) if start else 0.0
        if not self.measured_threads:  # measured threads start with their own runtime
            for t in self.tasks[self.cfg.vcpus :]:
                t.runtime_ms = float(main)
        oldest = max(t.runtime_ms for t in self.tasks)
        self.scanner.numa_next_scan = max(0, scan_delay_ms - int(oldest))


class Engine:
    """All VMs of one replay under one policy, advanced epoch by epoch."""

    def __init__(self, runs: list[VmRun], epoch_ms: int, n_epochs: int) -> None:
        self.runs = runs
        self.epoch_ms = epoch_ms
        self.n_epochs = n_epochs
        self.epoch = 0

    def step(self) -> None:
        """Advance every VM by one epoch."""
        e = self.epoch
        for run in self.runs:
            self._step_vm(run, e)
        self.epoch += 1

    def run(self, until: int | None = None, progress: Callable[[int], None] | None = None) -> None:
        """Step until epoch ``until`` (default: the end of the accesses); ``progress`` gets
        the number of epochs just done."""
        stop = self.n_epochs if until is None else min(until, self.n_epochs)
        while self.epoch < stop:
            self.step()
            if progress is not None:
                progress(1)

    def _step_vm(self, run: VmRun, e: int) -> None:
        lo, hi = int(run.bounds[e]), int(run.bounds[e + 1])
        acc = run.acc
        vcpu = acc.vcpu[lo:hi]
        start = acc.gfn_start[lo:hi]
        active = np.zeros(run.cfg.vcpus, bool)
        active[vcpu] = True
        if run.busy_vcpus:
            active[:] = True
        ctx = EpochCtx(
            epoch=e,
            now_ms=e * self.epoch_ms,
            active=active,
            run_vcpu=vcpu,
            run_start=start,
            run_end=start + acc.nr_pages[lo:hi],
            counters=run.counters,
            trace=run.trace,
        )
        run.fault.apply(ctx)
        # scheduler ticks at the end of the epoch, threads in a rotating order
        ctx.now_ms = (e + 1) * self.epoch_ms
        n = len(run.tasks)
        vcpus = run.cfg.vcpus
        ran = [t for t in run.tasks if t.index >= vcpus or active[t.index]]
        # kernel/sched/fair.c task_tick_numa() compares se.sum_exec_runtime, CPU time (v6.5 =
        # v6.18 = v7.1, KERNEL.md §3.3): a vCPU gains its CPU share of the epoch (ADR 0320)
        for t in ran:
            t.runtime_ms += run.gain_ms[t.index]
        # a measured VMM thread is ticked only in an epoch where a tick lands on it (ADR 0363)
        ran = [t for t in ran if t.index < vcpus or run.ticks.lands(t.index - vcpus)]
        if ran and run.cfg.numa_balancing:  # sysctl 0: sched_numa_balancing off, no ticks
            self._tick(run, ctx, ran, (e % n, n))
        run.counters.scan_period_ms[e, :] = [t.numa_scan_period for t in run.tasks]

    def _tick(self, run: VmRun, ctx: EpochCtx, ran: list[TaskNuma], rot: tuple[int, int]) -> None:
        """The scheduler ticks of the threads that ran: the thread whose runtime crossed
        node_stamp + period earliest in the epoch ticks first (it wins the cmpxchg on
        numa_next_scan); equal times in a rotating order (``rot``: epoch % threads, threads).

        Only a thread past node_stamp + period does anything in task_tick_numa() (its crossing
        time is finite); the others tick after them in the rotating order, and only need a
        look if a task_numa_work() ran before them, since its rseq hinting fault may shorten
        another thread's period (ADR 0372: the same calls with an effect, in the same order)."""
        k, n = rot
        due = [t for t in ran if t.runtime_ms > t.node_stamp_ms + t.numa_scan_period]
        if not due:
            return
        gained = {t.index: run.gain_ms[t.index] for t in due}
        due.sort(key=lambda t: (_crossing_ms(t, gained[t.index], self.epoch_ms), (t.index - k) % n))
        works = run.scanner.work_items
        for t in due:
            run.scanner.task_tick_numa(ctx, t)
        if run.scanner.work_items == works:
            return
        ids = {t.index for t in due}
        rest = sorted((t for t in ran if t.index not in ids), key=lambda t: (t.index - k) % n)
        for t in rest:
            run.scanner.task_tick_numa(ctx, t)


class VmmTicks:
    """Which epochs a scheduler tick lands on each measured VMM thread (ADR 0363).

    kernel/sched/fair.c task_tick_numa() runs from task_tick_fair() for the task current on
    the CPU at a tick (HZ=250: every 4 ms; v6.5 = v6.18 = v7.1, KERNEL.md §3.3). A VMM thread
    that wakes briefly (a main loop, a helper waking every 100 ms) is current at a tick in
    proportion to its CPU time: ``cpu ms / TICK_MS`` ticks per epoch on average. Each thread
    carries that as a credit; an epoch where the credit reaches a whole tick is one its
    task_tick_numa() runs in. The credit starts at half a tick, the mean phase of a tick
    against a thread's first run. Deterministic: no RNG."""

    def __init__(self, gain_ms: list[float]) -> None:
        self.per_epoch = [g / TICK_MS for g in gain_ms]
        self.credit = [0.5] * len(gain_ms)

    def lands(self, j: int) -> bool:
        """Whether a tick lands on thread ``j`` in this epoch (call once per epoch)."""
        if j >= len(self.per_epoch):
            return True  # not a measured thread: ticked every epoch (opts.vmm_thread)
        self.credit[j] += self.per_epoch[j]
        if self.credit[j] < 1.0:
            return False
        self.credit[j] -= math.floor(self.credit[j])
        return True


def resume_ms(hosting: VmHosting, vcpu: int) -> float | None:
    """Wall ms from a random moment to a vCPU thread's next return to guest mode after a
    preemption, where kernel/rseq.c rseq_update_cpu_node_id() writes its rseq area
    (ADR 0350): one preemption cycle, 1000 / (preemptions per CPU second x CPU share)
    (``VmHosting.preempt_per_s``; None when not measured)."""
    rate = hosting.preempt_per_s
    if not rate:
        return None
    return 1000.0 / (rate * hosting.share(vcpu))


def _crossing_ms(task: TaskNuma, gained_ms: float, epoch_ms: int) -> float:
    """When in the epoch ``task``'s se.sum_exec_runtime passed node_stamp + numa_scan_period,
    the point at which kernel/sched/fair.c task_tick_numa() (at the next 4 ms tick) queues its
    work (v6.5 = v7.1, KERNEL.md §3.3): 0 if it was already past at the epoch start (as for
    every vCPU when numa_balancing goes on late), infinity if it does not pass."""
    threshold = task.node_stamp_ms + task.numa_scan_period
    before = task.runtime_ms - gained_ms
    if before > threshold:
        return 0.0
    if task.runtime_ms <= threshold or gained_ms <= 0:
        return math.inf
    return (threshold - before) / gained_ms * epoch_ms
