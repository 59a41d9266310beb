"""The NUMA-balancing scanner of one mm: task_tick_numa(), task_numa_work(), the adaptive
scan period (kernel/sched/fair.c; KERNEL.md §3).

The threads that can run task_numa_work are the vCPU threads (their task_work runs before the
next guest entry, §3.3) and optionally the VMM main thread (§10a). A thread's runtime
(se.sum_exec_runtime) advances in every epoch it ran (a vCPU ran if it accessed memory) by
its CPU share of the epoch (1.0 unless ``VmHosting.vcpu_cpu_share`` says otherwise). The walk
covers guest RAM and, when given, the VMM's other VMAs (``VmHosting.vmm_areas``, ADR 0320).

Just over 500 lines: task_numa_work() is one kernel function whose budget, VMA skips, PID
filter and wrap share mm->numa_scan_offset / numa_scan_seq, and the rseq fault timing of its
work item (ADR 0361) reads them; splitting it would scatter that state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.model.hosting import VmmArea
from pipeline.replay.context import EpochCtx
from pipeline.replay.mprotect import ChangeProtNuma
from pipeline.replay.policies.base import Policy
from pipeline.replay.state import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, Region, VmState
from pipeline.replay.workcost import NumaWorkCost

MAX_SCAN_WINDOW = 2560  # MB/s
NUMA_PERIOD_SLOTS = 10
NUMA_PERIOD_THRESHOLD = 7
VIRT_BUDGET_FACTOR = 8
NUMA_NO_NODE = -1
BITS_PER_LONG = 64
GOLDEN_RATIO_32 = 0x61C88647
TICK_MS = 4  # HZ=250
# init_numa_balancing() staggers a new CLONE_VM thread: node_stamp = min(task_scan_max(current),
# numa_scan_period * mm_users * NSEC_PER_MSEC) + 2 * TICK_NSEC, where task_scan_max() is in ms
# but used as ns (so about 0) -> about 2 ticks. A non-zero node_stamp means task_tick_numa()
# never sets numa_scan_period = task_scan_start(): the thread keeps scan_delay until
# update_task_scan_period() changes it. The mm's first thread (the VMM main thread) has 0.
CLONE_VM_NODE_STAMP_MS = 2 * TICK_MS


def hash_32(val: int, bits: int) -> int:
    """include/linux/hash.h hash_32() (generic, v6.5 and v7.x): the multiplicative hash used
    by vma_set_access_pid_bit() / vma_is_accessed() (KERNEL.md §3.4)."""
    return ((val * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def pid_bit(pid: int) -> int:
    """The access_pids bit of a pid on 64-bit: hash_32(pid, ilog2(BITS_PER_LONG) = 6), as in
    kernel/sched/fair.c vma_is_accessed() and mm/memory.c vma_set_access_pid_bit() (v6.5+,
    KERNEL.md §3.4)."""
    return 1 << hash_32(pid, 6)


def vma_policy_mof(region: Region) -> bool:
    """Models mm/mempolicy.c vma_policy_mof() (v6.5 and v7.1, KERNEL.md §3.6, ADR 0360):
    whether the VMA's policy has MPOL_F_MOF, without which task_numa_work() skips it as
    ``unsuitable``.

    * shmem / memfd (``vm_ops->get_policy``, shmem_get_policy()): the shared policy's flags;
      with no shared policy (``default``) it returns NULL, so false;
    * anon (no ``get_policy``): ``vma->vm_policy``, else get_task_policy(current), which for
      a task without a policy is ``preferred_node_policy[node]`` (MPOL_F_MOF|MPOL_F_MORON):
      ``default`` anon is scanned;
    * an mbind() policy has MPOL_F_MOF only with MPOL_F_NUMA_BALANCING, which
      sanitize_mpol_flags() accepts for MPOL_BIND (``bind+numa_balancing``); a plain
      ``bind``, ``preferred`` or ``interleave`` VMA is never scanned, anon or shared (Sean
      Christopherson's workaround in the RFC v2 thread).
    """
    if region.mempolicy == "bind+numa_balancing":
        return True
    return region.mempolicy == "default" and region.backing == "anon"


@dataclass
class TaskNuma:
    """The NUMA fields of one task_struct (a vCPU thread or the VMM main thread)."""

    index: int
    pid: int
    node: int
    nodes: int
    main_thread: bool = False
    runtime_ms: float = 0.0  # sum_exec_runtime
    node_stamp_ms: float = 0.0
    numa_scan_period: int = 0  # ms; set to scan_delay by init_numa_balancing()
    numa_scan_period_max: int = 0
    numa_scan_seq: int = 0
    numa_preferred_nid: int = NUMA_NO_NODE
    numa_migrate_retry_ms: int = 0
    has_faults: bool = False  # p->numa_faults allocated
    locality: list[int] = field(default_factory=lambda: [0, 0, 0])  # remote, local, failed
    faults_buf: list[int] = field(default_factory=lambda: [0, 0])  # shared, private since placement
    faults_mem: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    def __post_init__(self) -> None:
        self.faults_mem = np.zeros(self.nodes, np.float64)


@dataclass
class VmaNumab:
    """vma->numab_state of one guest-RAM region."""

    next_scan_ms: int
    pid_reset_ms: int
    pids_active: list[int]
    start_scan_seq: int
    prev_scan_seq: int


@dataclass
class ScanRecord:
    """One task_numa_work() that walked memory (a row of table ``scans``)."""

    epoch: int
    t_ms: int
    thread: int
    numa_scan_seq: int
    scan_period_ms: int
    gfn_start: int
    gfn_end: int
    chunks: int
    notifiers: int
    nr_pte_updates: int
    virt_pages: int


class Scanner:
    """mm->numa_* state and the scan of one VM under one policy."""

    def __init__(
        self,
        vm: VmState,
        policy: Policy,
        cprot: ChangeProtNuma,
        tasks: list[TaskNuma],
        knobs: dict[str, int],
        *,
        nr_threads: int | None = None,
        vmm_areas: tuple[VmmArea, ...] = (),
        work_cost: NumaWorkCost | None = None,
    ) -> None:
        self.vm = vm
        self.work_cost = work_cost or NumaWorkCost()
        # the fault path's hinting fault of a vCPU thread on its own rseq area (ADR 0350)
        self.tls_fault: Callable[[int, TaskNuma], None] | None = None
        # each thread's CPU share and wall ms from a PTE change on its stack to its next
        # return to guest mode (its rseq write; None: after the work item; set by the engine)
        self.cpu_share: list[float] = [1.0] * len(tasks)
        self.resume_ms: list[float | None] = [None] * len(tasks)
        # the VMM's non-RAM VMAs (ADR 0320): walked with guest RAM in address order
        self.vmm_areas = tuple(sorted(vmm_areas, key=lambda a: a.hva_start))
        self.vmm_rss_pages = sum(a.rss_bytes for a in vmm_areas) // PAGE_SIZE
        # get_nr_threads(current): every thread of the QEMU process, not only the modelled ones
        self.nr_threads = len(tasks) if nr_threads is None else max(nr_threads, len(tasks))
        self.policy = policy
        self.cprot = cprot
        self.tasks = tasks
        self.scan_delay = knobs["scan_delay_ms"]
        self.period_min = knobs["scan_period_min_ms"]
        self.period_max = knobs["scan_period_max_ms"]
        self.scan_size_mb = knobs["scan_size_mb"]
        # init_numa_balancing(): mm and tasks
        self.numa_next_scan = self.scan_delay
        self.numa_scan_seq = 0
        self.numa_scan_offset = 0  # hva
        self.numab: dict[int, VmaNumab] = {}
        for t in tasks:
            t.numa_scan_period = self.scan_delay
            t.node_stamp_ms = 0 if t.main_thread else CLONE_VM_NODE_STAMP_MS
        self.records: list[ScanRecord] = []

    # -- §3.2 bounds -------------------------------------------------------------------------
    def scan_pages(self) -> int:
        """kernel/sched/fair.c SCAN_PAGES: scan_size_mb in pages (v6.5 = v7.1, §3.2)."""
        return self.scan_size_mb << (20 - PAGE_SHIFT)

    def nr_scan_windows(self) -> int:
        """kernel/sched/fair.c task_nr_scan_windows(): get_mm_rss(p->mm) rounded up to whole
        scan windows (v6.5 = v6.18 = v7.1, KERNEL.md §3.2). The RSS is the whole mm's: guest
        RAM populated so far plus the VMM's other VMAs (ADR 0320)."""
        sp = self.scan_pages()
        rss = max(self.vm.rss_pages + self.vmm_rss_pages, sp)
        return -(-rss // sp)

    def task_scan_min(self) -> int:
        """kernel/sched/fair.c task_scan_min(): max(1000 / (MAX_SCAN_WINDOW / scan_size),
        scan_period_min / windows) ms (v6.5 = v7.1, KERNEL.md §3.2)."""
        windows = MAX_SCAN_WINDOW // self.scan_size_mb if self.scan_size_mb < MAX_SCAN_WINDOW else 1
        floor = 1000 // windows
        return max(floor, self.period_min // self.nr_scan_windows())

    def task_scan_start(self) -> int:
        """kernel/sched/fair.c task_scan_start() without a numa_group: task_scan_min()
        (the group scaling of §3.2 is not modelled; docs/engine.md, numa_group) (v6.5 =
        v7.1)."""
        return self.task_scan_min()

    def task_scan_max(self) -> int:
        """kernel/sched/fair.c task_scan_max() without a numa_group: max(task_scan_min(),
        scan_period_max / windows) ms (v6.5 = v7.1, KERNEL.md §3.2)."""
        smin = self.task_scan_min()
        return max(smin, self.period_max // self.nr_scan_windows())

    # -- §3.3 tick ---------------------------------------------------------------------------
    def task_tick_numa(self, ctx: EpochCtx, task: TaskNuma) -> None:
        """Models task_tick_numa() after ``task`` ran for an epoch (one check per epoch):
        runtime past node_stamp + period -> node_stamp += period (and, for a thread whose
        node_stamp was 0, numa_scan_period = task_scan_start()); queue the work if
        ``now >= mm->numa_next_scan``. Models kernel/sched/fair.c task_tick_numa() (v6.5 =
        v7.1, KERNEL.md §3.3); task_tick_fair() calls it only while sched_numa_balancing is
        on, i.e. kernel.numa_balancing != 0 (the engine's tick loop checks that)."""
        period = task.numa_scan_period
        if task.runtime_ms > task.node_stamp_ms + period:
            if task.node_stamp_ms == 0:
                task.numa_scan_period = self.task_scan_start()
            task.node_stamp_ms += period
            if ctx.now_ms >= self.numa_next_scan:
                self.task_numa_work(ctx, task)

    # -- §3.4 ------------------------------------------------------------------------------
    @staticmethod
    def _numab_key(vma: Region | VmmArea) -> int:
        """vma->numab_state slot: guest regions by index (the fault path sets their pid
        bits), VMM areas by a negative key."""
        return -1 - vma.hva_start if isinstance(vma, VmmArea) else vma.index

    def _vma_skipped_unsuitable(self, region: Region | VmmArea) -> bool:
        """kernel/sched/fair.c task_numa_work() VMA skips (v6.5 and v7.x, KERNEL.md §3.4,
        §3.6): !vma_migratable() / is_vm_hugetlb_page(): hugetlbfs never; !vma_policy_mof()
        (:func:`vma_policy_mof`, by the region's ``mempolicy``). ``placement`` is a layout,
        not a mempolicy (ADR 0310). A VMM area is skipped by its kind (``shared_ro``,
        ``inaccessible``, ``unsuitable``: :class:`VmmArea`)."""
        if isinstance(region, VmmArea):
            return not region.scanned
        if region.backing == "hugetlbfs":
            return True
        return not vma_policy_mof(region)

    def _vma_is_accessed(self, region: Region | VmmArea, numab: VmaNumab, task: TaskNuma) -> bool:
        """kernel/sched/fair.c vma_is_accessed(): v6.5 ``seq < 2 || pid bit``; v6.7+
        (mm, vma) conditions (1)-(3) and, from f22cde4371f3 (~v6.12; every v6.7+ policy
        modelled is >= v6.12), (4) ``numa_scan_seq > prev_scan_seq + get_nr_threads()``
        with every QEMU thread counted (``nr_threads``), KERNEL.md §3.4."""
        pids = numab.pids_active[0] | numab.pids_active[1]
        # access_pids bits are set only by NUMA hinting faults (mm/memory.c do_numa_page() ->
        # vma_set_access_pid_bit(), current's pid); on VMM areas only the vCPU thread's own
        # rseq writes to its TLS fault (set after each scan, below; ADR 0350): the rest are
        # reached through rules (1), (3) and (4) only (ADR 0340; seen as pid_inactive on 6.18)
        hit = bool(pids & pid_bit(task.pid))
        if not self.policy.pid_filter_v67:
            return self.numa_scan_seq < 2 or hit
        if self.numa_scan_seq - numab.start_scan_seq < 2 or hit:
            return True
        if self.numa_scan_offset > region.hva_start:
            return True  # NUMAB_SKIP_IGNORE_PID: finish a partly scanned VMA
        return self.numa_scan_seq > numab.prev_scan_seq + self.nr_threads

    def task_numa_work(self, ctx: EpochCtx, task: TaskNuma) -> None:
        """Models kernel/sched/fair.c task_numa_work() (v6.5 = v6.18 = v7.1, KERNEL.md §3.4),
        rule by rule:

        * one cmpxchg winner of mm->numa_next_scan per period per mm;
        * ``pages = scan_size_mb << (20 - PAGE_SHIFT)``, ``virtpages = pages * 8``;
        * the VMA walk starts at mm->numa_scan_offset, kept between work items; VMAs skipped
          by the VMA rules (unsuitable, shared_ro, inaccessible, scan_delay, pid_inactive,
          seq_completed) spend no budget, the VMM's own scanned VMAs do (ADR 0320);
        * each chunk: ``start = max(start, vm_start)``, ``end = min(ALIGN(start + (pages <<
          PAGE_SHIFT), HPAGE_SIZE), vm_end)`` with the pages left, so the last chunk of a VMA
          is partial; ``pages`` drops by the chunk only when change_prot_numa() updated a PTE
          or PMD, ``virtpages`` always; the item stops (``goto out``) when either is <= 0 and
          then keeps numa_scan_offset = end;
        * when the walk runs past the last VMA: reset_ptenuma_scan(), numa_scan_seq++ and
          numa_scan_offset = 0, and the item ends (the next one starts at the lowest VMA);
        * the winner's node_stamp += 2 ticks, and += 32 x the work's CPU time at the end
          (:class:`NumaWorkCost`, ADR 0350).

        Per version: v6.5 order
        scan_delay -> vma_is_accessed() -> pid reset; v6.7+ scan_delay -> pid reset ->
        seq_completed -> pid_inactive, and the forced retry of one inactive VMA when every VMA
        was skipped (retry_pids, ~v6.12)."""
        now = ctx.now_ms
        if now < self.numa_next_scan:
            return
        self.numa_next_scan = now + task.numa_scan_period  # the cmpxchg winner
        # "Delay this task enough that another task of this mm will likely win the next time
        # around": p->node_stamp += 2 * TICK_NSEC (v6.5 = v7.1, KERNEL.md §3.4)
        task.node_stamp_ms += 2 * TICK_MS
        zapped0 = list(self.cprot.kvm.zapped)
        vmm_ptes = 0
        # the vCPU stacks whose PTEs this work changed: their owners fault after it (ADR 0350)
        tls_areas: dict[int, tuple[VmaNumab, TaskNuma, float]] = {}  # + work ns before it
        seq0 = self.numa_scan_seq
        ctx.thread = task.index
        ctx.counters.add_thread(ctx.epoch, task.index, "task_numa_work_runs", 1)
        pages = self.scan_pages()
        virtpages = pages * VIRT_BUDGET_FACTOR
        regions: list[Region | VmmArea] = sorted(
            [*self.vm.cfg.regions, *self.vmm_areas], key=lambda r: r.hva_start
        )
        v67 = self.policy.pid_filter_v67
        rec = {"gfn_start": -1, "gfn_end": -1, "chunks": 0, "notifiers": 0, "nr": 0, "virt": 0}
        forced = False
        pids_skipped = False
        start = self.numa_scan_offset
        while True:  # the retry label of v6.7+
            todo = [r for r in regions if r.hva_end > start]
            if not todo:
                self._reset_ptenuma_scan()
                start = 0
                todo = regions
            stopped = None
            for region in todo:
                start = max(start, region.hva_start)
                if self._vma_skipped_unsuitable(region):
                    continue
                key = self._numab_key(region)
                numab = self.numab.get(key)
                if numab is None:
                    numab = VmaNumab(
                        next_scan_ms=now + self.scan_delay,
                        pid_reset_ms=now + self.scan_delay + 4 * self.scan_delay,
                        pids_active=[0, 0],
                        start_scan_seq=self.numa_scan_seq,
                        prev_scan_seq=self.numa_scan_seq - 1,
                    )
                    self.numab[key] = numab
                if self.numa_scan_seq and now < numab.next_scan_ms:
                    continue  # scan_delay
                if not v67 and not self._vma_is_accessed(region, numab, task):
                    continue
                if self.numa_scan_seq and now > numab.pid_reset_ms:
                    numab.pid_reset_ms += 4 * self.scan_delay
                    numab.pids_active = [numab.pids_active[1], 0]
                if v67:
                    if numab.prev_scan_seq == self.numa_scan_seq:
                        self.numa_scan_offset = region.hva_end
                        continue  # seq_completed
                    if not forced and not self._vma_is_accessed(region, numab, task):
                        pids_skipped = True
                        continue  # pid_inactive
                while True:
                    end = min(_align_up(start + pages * PAGE_SIZE, PMD_SIZE), region.hva_end)
                    nr = (end - start) // PAGE_SIZE
                    if isinstance(region, VmmArea):
                        updated = region.rss_pages_in(start, end)
                        vmm_ptes += updated
                        if updated and 0 <= region.tls_vcpu < len(self.tasks):
                            done = self._work_ns(zapped0, vmm_ptes)
                            owner = self.tasks[region.tls_vcpu]
                            tls_areas[region.hva_start] = (numab, owner, done)
                    else:
                        g_s, g_e = region.hva_to_gfn(start), region.hva_to_gfn(end)
                        res = self.cprot(ctx, region, g_s, g_e)
                        updated = res.nr_updated
                        rec["chunks"] += 1
                        rec["notifiers"] += res.notifiers
                        rec["nr"] += res.nr_updated
                        rec["virt"] += nr
                        first = rec["gfn_start"]
                        rec["gfn_start"] = g_s if first < 0 else min(first, g_s)
                        rec["gfn_end"] = max(rec["gfn_end"], g_e)
                    if updated:
                        pages -= nr
                    virtpages -= nr
                    start = end
                    if pages <= 0 or virtpages <= 0:
                        stopped = region
                        break
                    if end == region.hva_end:
                        break
                if stopped is not None:
                    break
                if v67:
                    numab.prev_scan_seq = self.numa_scan_seq
                    if forced:
                        stopped = region
                        break
            if stopped is None and v67 and not forced and pids_skipped:
                forced = True
                start = self.numa_scan_offset
                continue
            if stopped is not None:
                self.numa_scan_offset = start
            else:
                self._reset_ptenuma_scan()
            break
        # p->node_stamp += 32 * (runtime of this work) (ADR 0350, pipeline/replay/workcost.py)
        z4k, z2m = (b - a for a, b in zip(zapped0, self.cprot.kvm.zapped, strict=True))
        task.node_stamp_ms += self.work_cost.node_stamp_delay_ms(z4k, z2m, vmm_ptes)
        item_ns = self._work_ns(zapped0, vmm_ptes)
        for numab, owner, done_ns in tls_areas.values():
            before = owner is not task and self._faults_before_end(task, owner, done_ns, item_ns)
            self._tls_fault(now, numab, owner, seq0 if before else None)
        if rec["chunks"]:
            self.records.append(
                ScanRecord(
                    epoch=ctx.epoch,
                    t_ms=now,
                    thread=task.index,
                    numa_scan_seq=self.numa_scan_seq,
                    scan_period_ms=task.numa_scan_period,
                    gfn_start=rec["gfn_start"],
                    gfn_end=rec["gfn_end"],
                    chunks=rec["chunks"],
                    notifiers=rec["notifiers"],
                    nr_pte_updates=rec["nr"],
                    virt_pages=rec["virt"],
                )
            )

    def _work_ns(self, zapped0: list[int], vmm_ptes: int) -> float:
        """CPU ns of the current work item so far (:class:`NumaWorkCost`)."""
        z4k, z2m = (b - a for a, b in zip(zapped0, self.cprot.kvm.zapped, strict=True))
        return self.work_cost.work_ns(z4k, z2m, vmm_ptes)

    def _faults_before_end(
        self, task: TaskNuma, owner: TaskNuma, done_ns: float, item_ns: float
    ) -> bool:
        """Whether ``owner``'s rseq write (its next return to guest mode, ``resume_ms``
        after the PTE change on its stack) comes before ``task``'s work item ends. The item
        takes its CPU time over the scanning thread's CPU share in wall time (a vCPU with a
        tenth of a CPU spends ~200 ms on a 1 GiB pinned 4K walk, docs/lab.md), so on a loaded
        host the other vCPUs fault while the walk is still on; the item's
        reset_ptenuma_scan() (numa_scan_seq++) has then not happened yet (ADR 0361)."""
        resume = self.resume_ms[owner.index]
        if resume is None:
            return False
        share = max(self.cpu_share[task.index], 1e-3)
        return done_ns / 1e6 / share + resume < item_ns / 1e6 / share

    def _tls_fault(
        self, now_ms: int, numab: VmaNumab, owner: TaskNuma, mm_seq: int | None = None
    ) -> None:
        """The owning vCPU thread's hinting fault on its rseq area, which this work item
        made PROT_NONE (:class:`VmmArea` ``tls_vcpu``): kernel/rseq.c
        rseq_update_cpu_node_id() writes it on the thread's next return to guest mode after a
        preemption (~8 ms at the lab's 125/s), so after the work item and its seq wrap. mm/
        memory.c do_numa_page() -> vma_set_access_pid_bit() sets the thread's bit in the
        area's pids_active[1] (v6.5+, KERNEL.md §3.4) and task_numa_fault() records one
        private local fault for it (``tls_fault``, the fault path; ADR 0350)."""
        numab.pids_active[1] |= pid_bit(owner.pid)
        if self.tls_fault is None:
            return
        if mm_seq is None:
            self.tls_fault(now_ms, owner)
            return
        # the fault comes while the walk is on: task_numa_placement() reads
        # mm->numa_scan_seq as it was before this item's wrap
        after = self.numa_scan_seq
        self.numa_scan_seq = mm_seq
        try:
            self.tls_fault(now_ms, owner)
        finally:
            self.numa_scan_seq = after

    def _reset_ptenuma_scan(self) -> None:
        """kernel/sched/fair.c reset_ptenuma_scan(): a full pass is done, numa_scan_seq++ and
        numa_scan_offset = 0 (v6.5 = v7.1, KERNEL.md §3.4)."""
        self.numa_scan_seq += 1
        self.numa_scan_offset = 0

    # -- §3.5 ------------------------------------------------------------------------------
    def task_numa_placement(self, now_ms: int, task: TaskNuma) -> None:
        """Models kernel/sched/fair.c task_numa_placement() as far as the scan period needs
        it (v6.5 = v7.1, KERNEL.md §3.5): once per pass (p->numa_scan_seq !=
        mm->numa_scan_seq), decay the memory-fault stats, pick the preferred node,
        update_task_scan_period(). No numa_group (docs/engine.md)."""
        if task.numa_scan_seq == self.numa_scan_seq:
            return
        task.numa_scan_seq = self.numa_scan_seq
        task.numa_scan_period_max = self.task_scan_max()
        shared, private = task.faults_buf
        task.faults_buf = [0, 0]
        if task.faults_mem.any():
            task.numa_preferred_nid = int(np.argmax(task.faults_mem))
        task.faults_mem /= 2
        self.update_task_scan_period(now_ms, task, shared, private)

    def update_task_scan_period(
        self, now_ms: int, task: TaskNuma, shared: int, private: int
    ) -> None:
        """Models kernel/sched/fair.c update_task_scan_period() exactly as written (v6.5 =
        v7.1, KERNEL.md §3.5), including the sticky doubling once numa_faults_locality[2]
        (migrate failures) is non-zero."""
        remote, local, failed = task.locality
        if local + shared == 0 or failed:
            task.numa_scan_period = min(task.numa_scan_period_max, 2 * task.numa_scan_period)
            self.numa_next_scan = now_ms + task.numa_scan_period
            return
        slot = -(-task.numa_scan_period // NUMA_PERIOD_SLOTS)
        lr = (local * NUMA_PERIOD_SLOTS) // (local + remote)
        ps = (private * NUMA_PERIOD_SLOTS) // (private + shared)
        if ps >= NUMA_PERIOD_THRESHOLD:
            diff = max(ps - NUMA_PERIOD_THRESHOLD, 1) * slot
        elif lr >= NUMA_PERIOD_THRESHOLD:
            diff = max(lr - NUMA_PERIOD_THRESHOLD, 1) * slot
        else:
            diff = -(NUMA_PERIOD_THRESHOLD - max(lr, ps)) * slot
        task.numa_scan_period = min(
            max(task.numa_scan_period + diff, self.task_scan_min()), self.task_scan_max()
        )
        task.locality = [0, 0, 0]


def _align_up(x: int, a: int) -> int:
    return -(-x // a) * a
