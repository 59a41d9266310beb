"""What the host and the VMM process add around one VM's guest RAM (ADR 0320).

The ``vms`` table describes guest RAM. Three things of the *process* and the *host* also
decide how often task_numa_work() reaches guest RAM and how many flushes a zap costs:

* the VMM's other VMAs (heap, stacks, libraries' data), walked by task_numa_work() in address
  order with the same budget and skip rules as guest RAM, and counted in get_mm_rss();
* the CPU share each vCPU thread gets (task_tick_numa() compares se.sum_exec_runtime, CPU
  time, not wall time);
* how loaded the host CPUs are (need_resched() during the KVM zap walk).

:class:`VmHosting` carries them for one VM (``ReplayParams.hosting``); every field defaults to
"not known", which keeps the engine's earlier behaviour (guest RAM only, busy vCPUs owning a
CPU, idle host).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # polars is imported where used: the lab's VMM process imports this module
    import polars as pl

PAGE_SIZE = 4096
# the kinds of a VMM area, by the skip rules of task_numa_work() (KERNEL.md §3.4)
SCANNED_KINDS = ("anon", "file_rw")  # private anonymous, private writable file mapping
SKIPPED_KINDS = ("file_ro", "shared", "inaccessible", "special")
AREA_KINDS = SCANNED_KINDS + SKIPPED_KINDS


@dataclass(frozen=True)
class VmmArea:
    """One VMA of the VMM process that is not guest RAM (``/proc/PID/smaps`` row).

    ``kind`` follows task_numa_work()'s VMA skips (kernel/sched/fair.c, v6.5 = v6.18 = v7.1,
    KERNEL.md §3.4): ``anon`` and ``file_rw`` (private writable file mapping: vma_policy_mof()
    is true under the default policy) are scanned; ``file_ro`` (``shared_ro``: file-backed
    and not writable), ``shared`` (shmem without a MOF policy: vma_policy_mof() false),
    ``inaccessible`` (no READ/WRITE/EXEC: vma_is_accessible()) and ``special`` (VM_IO,
    VM_PFNMAP, VM_MIXEDMAP, hugetlbfs: !vma_migratable()) are skipped.

    ``tls_vcpu``: the vCPU whose thread's TLS lives here (its glibc stack mapping, which
    holds the TCB and the rseq area), -1 for none (ADR 0350). The kernel writes that rseq
    area each time the thread goes back to user or guest mode after a preemption
    (kernel/rseq.c __rseq_handle_notify_resume() -> rseq_update_cpu_node_id(), reached from
    xfer_to_guest_mode_handle_work() for a vCPU in KVM_RUN, v4.18+, v6.18), so once a scan
    has made the page PROT_NONE the thread takes a hinting fault there within milliseconds
    and do_numa_page() -> vma_set_access_pid_bit() gives the area its pid bit.
    """

    hva_start: int
    size_bytes: int
    rss_bytes: int
    kind: str
    tls_vcpu: int = -1

    @property
    def hva_end(self) -> int:
        return self.hva_start + self.size_bytes

    @property
    def scanned(self) -> bool:
        return self.kind in SCANNED_KINDS

    @property
    def active(self) -> bool:
        """Assumed touched by the VMM's threads between two scans: populated (Rss > 0). Such
        an area has PTEs to change at every scan (its pages were used again since the last
        PROT_NONE) and its access_pids hold the threads' bits (their hinting faults)."""
        return self.rss_bytes > 0

    def rss_pages_in(self, start: int, end: int) -> int:
        """Populated pages of ``[start, end)`` of this area (spread evenly; at least 1 when
        the chunk is non-empty and the area is populated)."""
        if not self.active or end <= start:
            return 0
        share = (end - start) / self.size_bytes
        return max(1, round(self.rss_bytes // PAGE_SIZE * share))


@dataclass(frozen=True)
class VmmThread:
    """A thread of the VMM process that is not a vCPU (the main loop, helpers), as
    ``capture.json`` ``thread_sched`` measured it (ADR 0363).

    kernel/sched/fair.c task_tick_numa() (v6.5 = v6.18 = v7.1, KERNEL.md §3.3) runs for
    whichever thread of the mm is current on a CPU at a scheduler tick, so every thread of the
    VMM paces the scans, not only the vCPUs: its se.sum_exec_runtime against node_stamp +
    numa_scan_period. ``main``: the mm's first thread (tid == tgid), whose node_stamp starts
    at 0 (init_numa_balancing() staggers only CLONE_VM children), so a main thread that
    already ran longer than scan_delay crosses on its first tick after numa_balancing=1.
    ``runtime_start_ms``: its runtime when the capture started; ``cpu_share``: its CPU
    seconds over the capture's seconds."""

    tid: int
    main: bool
    runtime_start_ms: float
    cpu_share: float


@dataclass(frozen=True)
class VmHosting:
    """Process and host facts of one VM (``ReplayParams.hosting``; ADR 0320).

    * ``vcpu_cpu_share``: CPU time / wall time of each vCPU thread while it runs the guest
      (schedstat over the capture); empty = 1.0 (a busy vCPU owns a CPU).
    * ``vmm_areas``: the VMM's non-RAM VMAs (empty = guest RAM is the whole mm).
    * ``nr_threads``: get_nr_threads() of the VMM process (None: vCPUs +
      ``ReplayParams.vmm_threads``).
    * ``host_runnable``: tasks other than the zapping thread runnable on its CPU (0 = idle
      host): with one or more, need_resched() is set at each end of the thread's slice.
    * ``zap_ns_per_spte``: CPU time of the KVM zap walk per SPTE zapped (None: the
      :class:`pipeline.replay.kvm.ReschedModel` default).
    * ``host_cpus``: online CPUs of the host (scales the scheduler slice; None: the
      ReschedModel default).
    * ``vcpu_runtime_start_ms``: each vCPU thread's se.sum_exec_runtime when the replay
      starts (it ran before numa_balancing went on; empty = 0). The mm is then at least that
      old, so mm->numa_next_scan (mm creation + scan_delay) is that much nearer.
    * ``preempt_per_s``: need_resched() events on a vCPU thread's CPU per second of its CPU
      time (its involuntary context switches; None: not measured, ``host_runnable`` decides).
    * ``scan_ns_per_spte_4k`` / ``scan_ns_per_spte_2m``: CPU time of a scan per SPTE it zaps
      (KVM's zap plus the PTE/PMD change; :class:`pipeline.replay.workcost.NumaWorkCost`;
      None: its default).
    * ``vmm_threads``: the VMM's other threads with their runtime and CPU share
      (:class:`VmmThread`, ADR 0363; empty: only the vCPUs tick).
    * ``main_thread_share`` / ``main_thread_runtime_start_ms``: the VMM's main thread as a
      scanning thread of the mm (task_tick_numa() runs for every thread of the process,
      kernel/sched/fair.c, v6.5 = v6.18 = v7.1, KERNEL.md §3.3): its CPU share and its
      se.sum_exec_runtime when numa_balancing went on (ADR 0366). None: not modelled
      (``ReplayParams.vmm_thread`` still adds it with ``vmm_thread_share``).
    """

    vm: str
    vcpu_cpu_share: tuple[float, ...] = ()
    vmm_areas: tuple[VmmArea, ...] = ()
    nr_threads: int | None = None
    host_runnable: float = 0.0
    zap_ns_per_spte: float | None = None
    host_cpus: int | None = None
    vcpu_runtime_start_ms: tuple[float, ...] = ()
    preempt_per_s: float | None = None
    scan_ns_per_spte_4k: float | None = None
    scan_ns_per_spte_2m: float | None = None
    vmm_threads: tuple[VmmThread, ...] = ()
    main_thread_share: float | None = None
    main_thread_runtime_start_ms: float = 0.0

    def share(self, vcpu: int) -> float:
        if not self.vcpu_cpu_share:
            return 1.0
        return float(self.vcpu_cpu_share[min(vcpu, len(self.vcpu_cpu_share) - 1)])

    @property
    def vmm_rss_pages(self) -> int:
        """get_mm_rss() of the non-RAM part of the mm: every area's Rss, whatever its kind
        (MM_FILEPAGES + MM_ANONPAGES + MM_SHMEMPAGES)."""
        return sum(a.rss_bytes for a in self.vmm_areas) // PAGE_SIZE


def ram_ranges(vm: Mapping[str, Any]) -> list[tuple[int, int]]:
    """hva ``[start, end)`` of each guest-RAM region of a ``vms`` row."""
    return [
        (int(r["hva_start"]), int(r["hva_start"]) + int(r["size_bytes"])) for r in vm["regions"]
    ]


def hosting_for(hosting: Sequence[VmHosting], vm: str) -> VmHosting:
    """The entry of ``vm`` (the defaults when there is none)."""
    for h in hosting:
        if h.vm == vm:
            return h
    return VmHosting(vm)


def area_kind(perms: str, path: str, vm_flags: Sequence[str] = ()) -> str:
    """The :data:`AREA_KINDS` entry of a ``/proc/PID/maps`` line (perms like ``rw-p``, the
    path, smaps VmFlags), per task_numa_work()'s skips (KERNEL.md §3.4)."""
    flags = set(vm_flags)
    if flags & {"io", "pf", "mm", "ht"}:  # VM_IO, VM_PFNMAP, VM_MIXEDMAP, hugetlb
        return "special"
    if not any(c in perms[:3] for c in "rwx"):
        return "inaccessible"
    if perms[3:4] == "s":
        return "shared"
    file_backed = bool(path) and not path.startswith("[")
    if file_backed and "w" not in perms[:3]:
        return "file_ro"
    return "file_rw" if file_backed else "anon"


def areas_from_smaps(
    vmas: Sequence[dict[str, object]],
    ram: Sequence[tuple[int, int]],
    tls_hva: Sequence[int | None] = (),
) -> tuple[VmmArea, ...]:
    """The VMM's non-RAM areas from ``capture.json`` ``vmas_before`` rows (``start``,
    ``end`` hex strings, ``perms``, ``path``, ``smaps_kb.Rss``, ``vm_flags``), leaving out
    VMAs that overlap guest RAM (``ram``: hva ``[start, end)`` ranges). ``tls_hva[v]`` is an
    address inside vCPU ``v``'s stack mapping (None: unknown); the area holding it gets
    ``tls_vcpu = v``."""
    out = []
    for row in vmas:
        start, end = int(str(row["start"]), 16), int(str(row["end"]), 16)
        if any(start < hi and lo < end for lo, hi in ram):
            continue
        smaps = row.get("smaps_kb") or {}
        rss_kb = int(smaps.get("Rss", 0)) if isinstance(smaps, dict) else 0
        flags = row.get("vm_flags") or ()
        kind = area_kind(
            str(row.get("perms") or "---p"),
            str(row.get("path") or ""),
            [str(f) for f in flags] if isinstance(flags, list | tuple) else (),
        )
        owner = next(
            (v for v, hva in enumerate(tls_hva) if hva is not None and start <= hva < end), -1
        )
        out.append(VmmArea(start, end - start, rss_kb * 1024, kind, owner))
    return tuple(out)


def vmm_threads_from_sched(
    sched: Mapping[str, Mapping[str, float]],
    seconds: float,
    vcpu_tids: Sequence[int],
    tgid: int | None,
    *,
    main_known: bool = True,
) -> tuple[VmmThread, ...]:
    """The VMM's threads other than the vCPUs from a ``thread_sched`` record (tid ->
    ``cpu_s``, ``runtime_start_ms``) over ``seconds``: those that ran in it (cpu_s > 0; a
    thread that never runs is never current at a tick), in tid order; ``main`` where the tid
    is the process's (``tgid``). Empty without a usable record.

    ``main_known`` False leaves the main thread out: its CPU time in the record is not its
    pace in numa_balancing's window. That is so for ``capture.json`` of a `lab run`, which
    spans the lab's own statistics reads before and after the window (0.2-0.8 s, most of
    the main thread's 55-150 ms; ADR 0363); `lab run` now records the window alone."""
    if seconds <= 0:
        return ()
    vcpus = {int(t) for t in vcpu_tids}
    out = []
    for tid_text, row in sorted(sched.items(), key=lambda kv: int(kv[0])):
        tid = int(tid_text)
        cpu_s = float(row.get("cpu_s", 0.0))
        if tid in vcpus or cpu_s <= 0 or (tid == tgid and not main_known):
            continue
        start = float(row.get("runtime_start_ms", 0.0))
        out.append(VmmThread(tid, tid == tgid, start, round(cpu_s / seconds, 6)))
    return tuple(out)


def share_and_preempt_rate(delta: dict[str, float], seconds: float) -> tuple[float, float]:
    """A thread's CPU share over ``seconds`` and its involuntary switches per second of CPU
    time, from one :func:`sched_delta` row (0.0 where there is nothing to divide by)."""
    cpu_s = float(delta["cpu_s"])
    share = round(cpu_s / seconds, 3) if seconds > 0 else 0.0
    rate = round(float(delta["nonvoluntary"]) / cpu_s, 3) if cpu_s > 0 else 0.0
    return share, rate


def host_runnable(vcpu_cpu_share: Sequence[float]) -> float:
    """Mean number of other runnable tasks on a vCPU thread's CPU, from its CPU share: the
    vCPU thread always wants to run (a guest that never halts), and the fair scheduler
    (kernel/sched/fair.c, equal weights) gives each of ``1 + k`` runnable tasks ``1/(1+k)``
    of the CPU, so ``k = 1/share - 1`` (0 when the share is unknown or 1)."""
    if not vcpu_cpu_share:
        return 0.0
    share = sum(vcpu_cpu_share) / len(vcpu_cpu_share)
    return max(0.0, 1.0 / share - 1.0) if share > 0 else 0.0


def preempt_per_s(vcpu_preempt_per_s: Sequence[float]) -> float | None:
    """How often need_resched() is set on a vCPU thread's CPU, per second of its CPU time:
    the mean of the vCPUs' involuntary context switches per CPU second (None: not recorded).
    A vCPU thread of a guest that never halts never sleeps, so every switch-out is another
    task taking its CPU (kernel/sched/core.c __schedule() counts it in ``nivcsw``), i.e. one
    need_resched() (wake-up preemption, check_preempt_wakeup_fair(), or the end of a slice,
    update_deadline()) that a zap walk running at that moment would have honoured."""
    if not vcpu_preempt_per_s:
        return None
    return sum(vcpu_preempt_per_s) / len(vcpu_preempt_per_s)


def has_facts(h: VmHosting) -> bool:
    """Whether ``h`` knows anything the engine's defaults do not."""
    return h != VmHosting(h.vm)


def hosting_frame(rows: Sequence[VmHosting]) -> pl.DataFrame:
    """Table ``hosting`` of ``rows``."""
    import polars as pl
    import pyarrow as pa

    from pipeline.schema import conform, table_schema

    data = {
        "vm": [h.vm for h in rows],
        "vcpu_cpu_share": [list(h.vcpu_cpu_share) for h in rows],
        "vmm_areas": [[asdict(a) for a in h.vmm_areas] for h in rows],
        "nr_threads": [h.nr_threads for h in rows],
        "host_runnable": [h.host_runnable for h in rows],
        "zap_ns_per_spte": [h.zap_ns_per_spte for h in rows],
        "host_cpus": [h.host_cpus for h in rows],
        "vcpu_runtime_start_ms": [list(h.vcpu_runtime_start_ms) for h in rows],
        "preempt_per_s": [h.preempt_per_s for h in rows],
        "scan_ns_per_spte_4k": [h.scan_ns_per_spte_4k for h in rows],
        "scan_ns_per_spte_2m": [h.scan_ns_per_spte_2m for h in rows],
        "vmm_threads": [[asdict(t) for t in h.vmm_threads] for h in rows],
        "main_thread_share": [h.main_thread_share for h in rows],
        "main_thread_runtime_start_ms": [h.main_thread_runtime_start_ms for h in rows],
    }
    schema = table_schema("hosting").arrow()
    # hva_start is uint64: /proc/PID/maps lists [vsyscall] at 0xffffffffff600000
    table = conform(pa.Table.from_pydict(data, schema=schema), "hosting")
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _opt_float(value: Any) -> float | None:
    """A nullable float column's value (absent in hosting.parquet written before ADR 0350)."""
    return None if value is None else float(value)


def hosting_from_frame(frame: pl.DataFrame) -> tuple[VmHosting, ...]:
    """The :class:`VmHosting` of each row of table ``hosting``."""
    out = []
    for row in frame.to_dicts():
        out.append(
            VmHosting(
                vm=str(row["vm"]),
                vcpu_cpu_share=tuple(float(x) for x in row["vcpu_cpu_share"] or ()),
                vmm_areas=tuple(
                    VmmArea(
                        int(a["hva_start"]),
                        int(a["size_bytes"]),
                        int(a["rss_bytes"]),
                        a["kind"],
                        -1 if a.get("tls_vcpu") is None else int(a["tls_vcpu"]),  # ADR 0350
                    )
                    for a in row["vmm_areas"] or ()
                ),
                nr_threads=None if row["nr_threads"] is None else int(row["nr_threads"]),
                host_runnable=float(row["host_runnable"]),
                zap_ns_per_spte=None
                if row["zap_ns_per_spte"] is None
                else float(row["zap_ns_per_spte"]),
                host_cpus=None if row["host_cpus"] is None else int(row["host_cpus"]),
                vcpu_runtime_start_ms=tuple(float(x) for x in row["vcpu_runtime_start_ms"] or ()),
                # absent in hosting.parquet written before ADR 0350
                preempt_per_s=_opt_float(row.get("preempt_per_s")),
                scan_ns_per_spte_4k=_opt_float(row.get("scan_ns_per_spte_4k")),
                scan_ns_per_spte_2m=_opt_float(row.get("scan_ns_per_spte_2m")),
                # absent in hosting.parquet written before ADR 0363
                vmm_threads=tuple(
                    VmmThread(
                        int(t["tid"]),
                        bool(t["main"]),
                        float(t["runtime_start_ms"]),
                        float(t["cpu_share"]),
                    )
                    for t in row.get("vmm_threads") or ()
                ),
                # absent in hosting.parquet written before ADR 0366
                main_thread_share=_opt_float(row.get("main_thread_share")),
                main_thread_runtime_start_ms=float(row.get("main_thread_runtime_start_ms") or 0.0),
            )
        )
    return tuple(out)
