"""The hosting facts a plain trace shows, without ``capture.json`` or the lab's measurements
(issue 11 item 2, ADR 0365).

* the VMM's threads: the vCPU threads (``pid`` of ``kvm_exit``, ``kvm_page_fault``,
  ``kvm_mmu_spte_requested``; KVM runs them in the vCPU thread's context, virt/kvm/kvm_main.c
  kvm_vcpu_ioctl(KVM_RUN)) and every thread whose ``kvm_unmap_hva_range`` reaches the VM's
  guest RAM (task_numa_work() runs in a thread of the mm it scans, task_work of
  task_tick_numa(), kernel/sched/fair.c, v6.5 = v6.18 = v7.1, KERNEL.md §3.3); other
  processes' events in the trace are left out;
* the VMM's skipped VMAs and their reasons: ``sched_skip_vma_numa`` of those threads
  (include/trace/events/sched.h, v6.7+);
* when numa_balancing took effect: ``[lab].numa_balancing_on_ns``, else the lab's trace
  marker, else the VMM's first scan event;
* the first scan after it: the VMM threads' first ``sched_skip_vma_numa`` or notifier.

Two facts a trace cannot show are inferred from what it does show (ADR 0365):

* each vCPU's CPU share, from the guest's work: sweeps per second x pages per sweep x CPU
  time per guest page touch (:data:`TOUCH_NS_4K` / :data:`TOUCH_NS_2M`), plus the pages it
  first touched in the window as the trace shows them x :data:`POPULATE_NS_4K` (ADR 0367;
  fitted on the fit cells of ``traces/real/regimes/SPLIT.toml`` and its control only);
* each vCPU's se.sum_exec_runtime when numa_balancing went on, from the first scan's delay:
  task_tick_numa() queues task_numa_work() once ``sum_exec_runtime > node_stamp + period``
  (node_stamp 0 and period = scan_delay before the first scan), so a thread that reaches it
  ``delay`` ms of wall time after numa_balancing=1 at CPU share ``s`` had
  ``scan_delay - s * delay`` ms of runtime then (a lower bound: at delay 0, scan_delay);
* which thread crossed first (ADR 0366): the ``common_pid`` of the first scan event. When it
  is not a vCPU (the VMM's main thread, whose runtime was past scan_delay when
  numa_balancing went on; the vCPUs of a guest that had not run yet were not), that thread
  becomes a scanning thread of the model with the default profile's share
  (:data:`pipeline.model.vmmprofile.MAIN_THREAD_SHARE`) and the same lower bound at that
  share, and the vCPUs start at runtime 0: the delay bounds the thread that scanned, not
  them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from pipeline.model.hosting import VmHosting, host_runnable, ram_ranges
from pipeline.model.vmmprofile import MAIN_THREAD_SHARE, PROFILE_ORIGIN, default_hosting

# CPU time of the lab guest per 4 KiB page write, by the size of the SPTE that maps it (the
# guest's page walk and the TLB misses differ), and per first touch of a page while the guest
# populates private anonymous 4K RAM in the window (the host's page fault: allocation and
# zeroing; KVM's GUP and the SPTE install; ADR 0367). Fitted on traces/real/regimes: the fit
# cells and the numa_balancing=0 control (regimes/control, outside the split), vcpu_cpu_share
# = passes_per_s x pages x TOUCH + first touches per s x POPULATE, least squares of the
# relative error per vCPU:
# * 4K: anon-4k-pin 1 GiB (no population), anon-4k-nopin-early 256 MiB (65,536 first
#   touches in 60 s), the control (50,837 and 51,703 first touches in 20 s, no sweep):
#   56.9 ns and 29.1 us, each vCPU's share within 10% (+1.0%, -9.4%, +8.4%, -2.8%, +1.5%);
# * 2M: 17.3, 17.3 (anon-thp-nopin 2 GiB), 16.6, 16.3, 16.1, 16.2 (anon-thp-pin-t24 1 GiB),
#   mean 16.6 ns; no fit capture populates THP, shmem or pinned RAM in its window.
TOUCH_NS_4K = 56.9
TOUCH_NS_2M = 16.6
POPULATE_NS_4K = 29_100.0
PAGE_4K = 4096
VCPU_EVENTS = ("kvm_exit", "kvm_page_fault", "kvm_mmu_spte_requested")


@dataclass(frozen=True)
class TraceFacts:
    """What one VM's trace shows of its VMM process (module docstring)."""

    vcpu_tids: tuple[int, ...]
    vmm_pids: tuple[int, ...]
    # distinct (vm_start, vm_end, reason) of the VMM's sched_skip_vma_numa, by address
    skipped_vmas: tuple[tuple[int, int, str], ...]
    numa_balancing_on_ns: int | None
    on_source: str
    first_scan_ns: int | None
    # common_pid of the first scan event: the thread that ran the first task_numa_work()
    first_scan_pid: int | None = None

    @property
    def first_scan_by_vcpu(self) -> bool | None:
        """Whether a vCPU thread ran the first task_numa_work() (None: no scan)."""
        if self.first_scan_pid is None:
            return None
        return self.first_scan_pid in self.vcpu_tids

    @property
    def first_scan_delay_ms(self) -> float | None:
        if self.first_scan_ns is None or self.numa_balancing_on_ns is None:
            return None
        return max(0.0, (self.first_scan_ns - self.numa_balancing_on_ns) / 1e6)

    def manifest(self) -> dict[str, object]:
        """The facts for a manifest (JSON)."""
        reasons: dict[str, int] = {}
        for _, _, reason in self.skipped_vmas:
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "vcpu_tids": list(self.vcpu_tids),
            "vmm_pids": list(self.vmm_pids),
            "skipped_vmas_by_reason": dict(sorted(reasons.items())),
            "numa_balancing_on_ns": self.numa_balancing_on_ns,
            "numa_balancing_on_from": self.on_source,
            "first_scan_delay_ms": self.first_scan_delay_ms,
            "first_scan_pid": self.first_scan_pid,
            "first_scan_thread": None
            if self.first_scan_by_vcpu is None
            else ("vcpu" if self.first_scan_by_vcpu else "vmm"),
        }


def overlap_bytes(
    starts: np.ndarray, ends: np.ndarray, ram: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Bytes of each hva range ``[starts, ends)`` inside the ``ram`` ranges."""
    total = np.zeros(starts.size, dtype=np.int64)
    for lo, hi in ram:
        total += np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0, None).astype(np.int64)
    return total


def cpus_seen(tables: Mapping[str, pl.DataFrame]) -> int | None:
    """The host's CPUs as the trace shows them: the highest ``cpu`` of any event, plus 1."""
    seen = [int(t["cpu"].max()) for t in tables.values() if t.height and "cpu" in t.columns]  # type: ignore[arg-type]
    return max(seen) + 1 if seen else None


def vcpu_tids(tables: Mapping[str, pl.DataFrame]) -> tuple[int, ...]:
    """The threads that ran a vCPU in the trace (pids of :data:`VCPU_EVENTS`), ordered by
    the ``vcpu`` index of ``kvm_exit`` when it has one, else by thread id."""
    exits = tables.get("kvm_exit", pl.DataFrame())
    if exits.height and "vcpu" in exits.columns:
        order = exits.group_by("pid").agg(pl.col("vcpu").min()).sort("vcpu", "pid")
        return tuple(int(p) for p in order["pid"].to_list())
    pids: set[int] = set()
    for name in VCPU_EVENTS:
        frame = tables.get(name, pl.DataFrame())
        if frame.height:
            pids.update(int(p) for p in frame["pid"].unique().to_list())
    return tuple(sorted(pids))


def infer_trace_facts(
    tables: Mapping[str, pl.DataFrame],
    ram: Sequence[tuple[int, int]],
    *,
    known_vcpu_tids: Sequence[int] = (),
    on_ns: int | None = None,
) -> TraceFacts:
    """The :class:`TraceFacts` of the VM whose guest RAM is at hva ``ram`` (``[start, end)``
    ranges). ``known_vcpu_tids``: the sidecar's ``vcpu_tids`` (else from the trace);
    ``on_ns``: ``[lab].numa_balancing_on_ns`` (else the marker, else the first scan)."""
    empty = pl.DataFrame()
    vcpus = tuple(int(t) for t in known_vcpu_tids) or vcpu_tids(tables)
    pids = set(vcpus)
    unmap = tables.get("kvm_unmap_hva_range", empty)
    if unmap.height:
        over = overlap_bytes(
            unmap["hva_start"].to_numpy().astype(np.int64),
            unmap["hva_end"].to_numpy().astype(np.int64),
            ram,
        )
        reach = unmap.filter(pl.Series(over > 0))
        pids.update(int(p) for p in reach["pid"].unique().to_list())
    skip = tables.get("sched_skip_vma_numa", empty)
    skip = skip.filter(pl.col("pid").is_in(sorted(pids))) if skip.height else skip
    skipped: tuple[tuple[int, int, str], ...] = ()
    if skip.height:
        rows = skip.select("vm_start", "vm_end", "reason").unique().sort("vm_start", "reason")
        skipped = tuple((int(s), int(e), str(r)) for s, e, r in rows.iter_rows())
    scan_ts, scan_pid = [], []
    for frame in (skip, unmap.filter(pl.col("pid").is_in(sorted(pids))) if unmap.height else unmap):
        if frame.height:
            scan_ts.append(frame["ts_ns"].to_numpy().astype(np.int64))
            scan_pid.append(frame["pid"].to_numpy().astype(np.int64))
    all_scan = np.concatenate(scan_ts) if scan_ts else np.zeros(0, np.int64)
    all_pid = np.concatenate(scan_pid) if scan_pid else np.zeros(0, np.int64)
    order = np.argsort(all_scan, kind="stable")
    all_scan, all_pid = all_scan[order], all_pid[order]
    source = "[lab].numa_balancing_on_ns" if on_ns is not None else ""
    marks = tables.get("tracing_mark_write", empty)
    if on_ns is None and marks.height:
        rows = marks.filter(pl.col("buf").str.contains("numa_balancing=1")).sort("ts_ns")
        if rows.height:
            on_ns, source = int(rows["ts_ns"][0]), "trace marker numa_balancing=1"
    if on_ns is None and all_scan.size:
        on_ns, source = int(all_scan[0]), "the VMM's first scan event"
    keep = all_scan >= on_ns if on_ns is not None else np.ones(all_scan.size, bool)
    after, after_pid = all_scan[keep], all_pid[keep]
    return TraceFacts(
        vcpu_tids=vcpus,
        vmm_pids=tuple(sorted(pids)),
        skipped_vmas=skipped,
        numa_balancing_on_ns=on_ns,
        on_source=source or "unknown",
        first_scan_ns=int(after[0]) if after.size else None,
        first_scan_pid=int(after_pid[0]) if after.size else None,
    )


def share_from_work(
    passes_per_s: Sequence[float],
    pages_per_pass: Sequence[int],
    spte_2m: bool,
    first_touch_per_s: Sequence[float] = (),
) -> tuple[float, ...]:
    """Each vCPU's CPU share from its guest's work (module docstring): sweeps per second x
    4 KiB pages per sweep x :data:`TOUCH_NS_2M` (2 MiB SPTEs) or :data:`TOUCH_NS_4K`, plus
    its first touches per second x :data:`POPULATE_NS_4K` (``first_touch_per_s``, from
    :func:`first_touches`), at most 1."""
    touch_ns = TOUCH_NS_2M if spte_2m else TOUCH_NS_4K
    first = list(first_touch_per_s) or [0.0] * len(passes_per_s)
    return tuple(
        round(min(1.0, rate * pages * touch_ns * 1e-9 + pops * POPULATE_NS_4K * 1e-9), 3)
        for rate, pages, pops in zip(passes_per_s, pages_per_pass, first, strict=True)
    )


def first_touches(
    tables: Mapping[str, pl.DataFrame],
    vm: Mapping[str, Any],
    vcpus: Sequence[int],
    span_ns: tuple[int, int],
) -> tuple[int, ...]:
    """Per vCPU thread (``vcpus``), the 4 KiB pages of populatable guest RAM (private
    anonymous, 4K, not pinned: :data:`POPULATE_NS_4K`'s fit) it touched first in ``span_ns``:
    the first kvm_mmu_set_spte of each gfn, by the thread that installed it. Counted only
    when the trace holds the population (an install of guest RAM before the first notifier
    reaching it, observed_events.population_in_trace()'s rule): otherwise the first install
    a trace shows is a refault after a zap. All 0 when nothing qualifies."""
    zero = (0,) * len(vcpus)
    sets = tables.get("kvm_mmu_set_spte", pl.DataFrame())
    regions = [
        r
        for r in vm["regions"]
        if r["backing"] == "anon" and not r["thp"] and r.get("pinned") in (None, "none", [])
    ]
    if not sets.height or not regions or "gfn" not in sets.columns:
        return zero
    cond = pl.lit(False)
    for r in regions:
        first = int(r["gpa_start"]) // PAGE_4K
        cond = cond | pl.col("gfn").is_between(first, first + int(r["size_bytes"]) // PAGE_4K - 1)
    guest = sets.filter(cond)
    if not guest.height:
        return zero
    unmap = tables.get("kvm_unmap_hva_range", pl.DataFrame())
    notified = None
    if unmap.height:
        over = overlap_bytes(
            unmap["hva_start"].to_numpy().astype(np.int64),
            unmap["hva_end"].to_numpy().astype(np.int64),
            ram_ranges(vm),
        )
        ts = unmap["ts_ns"].to_numpy()[over > 0]
        notified = int(ts.min()) if ts.size else None
    if notified is not None and int(guest["ts_ns"].min()) >= notified:  # type: ignore[arg-type]
        return zero
    lo, hi = span_ns
    firsts = (
        guest.sort("ts_ns")
        .unique("gfn", keep="first", maintain_order=True)
        .filter((pl.col("ts_ns") >= lo) & (pl.col("ts_ns") < hi))
    )
    counts = dict(firsts.group_by("pid").len().iter_rows())
    return tuple(int(counts.get(t, 0)) for t in vcpus)


def runtime_at_start_ms(
    first_scan_delay_ms: float | None, share: Sequence[float], scan_delay_ms: int
) -> float:
    """A vCPU's se.sum_exec_runtime when numa_balancing went on, from the first scan's delay
    (module docstring): ``scan_delay - share * delay``, at least 0, plus 1 ms so the first
    tick's ``now > node_stamp + period`` holds at delay 0. 0 when there was no scan."""
    if first_scan_delay_ms is None:
        return 0.0
    fastest = max(share) if share else 1.0
    return round(max(0.0, scan_delay_ms - fastest * first_scan_delay_ms) + 1.0, 1)


def share_from_lab(
    lab: Mapping[str, Any], vm: Mapping[str, Any], first_touch_per_s: Sequence[float] = ()
) -> tuple[float, ...]:
    """:func:`share_from_work` of a sidecar's ``[lab]`` workload (``passes_per_s``,
    ``touch_start_gpa``, ``touch_end_gpa``, ``guest_page_bytes``) and the first touches the
    trace shows; the guest's pages are mapped by 2 MiB SPTEs when THP backs a region and the
    guest maps 2 MiB pages. Empty when the table does not give the workload."""
    try:
        rates = [float(x) for x in lab["passes_per_s"]]
        pages = [
            (int(e) - int(s)) // PAGE_4K
            for s, e in zip(lab["touch_start_gpa"], lab["touch_end_gpa"], strict=True)
        ]
    except (KeyError, TypeError, ValueError):
        return ()
    if len(rates) != len(pages):
        return ()
    spte_2m = any(r["thp"] for r in vm["regions"]) and int(
        lab.get("guest_page_bytes", 2 << 20)
    ) >= (2 << 20)
    return share_from_work(rates, pages, spte_2m, first_touch_per_s)


def inferred_hosting(
    vm: Mapping[str, Any],
    tables: Mapping[str, pl.DataFrame],
    lab: Mapping[str, Any],
    on_ns: int | None = None,
) -> tuple[VmHosting, dict[str, str], TraceFacts]:
    """The VM's :class:`VmHosting` without capture.json and the lab's measurements (ADR
    0365), each fact's origin (ADR 0511) and the trace's facts: the default VMM profile
    (model/vmmprofile.py), the vCPUs' CPU share from the ``[lab]`` workload (defaulted to
    1.0 without one), their runtime at the start from the first scan's delay, the host load
    from the share, the CPUs seen in the trace."""
    ram = tuple(ram_ranges(vm))
    facts = infer_trace_facts(tables, ram, known_vcpu_tids=vm.get("vcpu_tids") or (), on_ns=on_ns)
    window_s = float(lab.get("window_s") or 0.0)
    pops: tuple[int, ...] = ()
    if window_s > 0 and facts.numa_balancing_on_ns is not None:
        start = facts.numa_balancing_on_ns
        pops = first_touches(tables, vm, facts.vcpu_tids, (start, start + int(window_s * 1e9)))
    share = share_from_lab(lab, vm, [n / window_s for n in pops] if any(pops) else ())
    delay = facts.first_scan_delay_ms
    scan_delay_ms = int(vm["scan_delay_ms"])
    by_vmm = facts.first_scan_by_vcpu is False
    # the delay bounds the runtime of the thread that scanned first (module docstring)
    runtime = 0.0 if by_vmm else runtime_at_start_ms(delay, share, scan_delay_ms)
    base = default_hosting(str(vm["vm"]), int(vm["vcpus"]), ram)
    hosting = replace(
        base,
        vcpu_cpu_share=share,
        host_runnable=host_runnable(share),
        vcpu_runtime_start_ms=(runtime,) * int(vm["vcpus"]) if runtime else (),
        host_cpus=cpus_seen(tables),
        main_thread_share=MAIN_THREAD_SHARE if by_vmm else None,
        main_thread_runtime_start_ms=runtime_at_start_ms(delay, (MAIN_THREAD_SHARE,), scan_delay_ms)
        if by_vmm
        else 0.0,
    )
    profile = PROFILE_ORIGIN
    origin = {
        "vcpu_cpu_share": "inferred ([lab] sweeps per second x CPU time per page touch"
        + (
            f", + {sum(pops)} first touches in the trace x CPU time per first touch)"
            if any(pops)
            else ")"
        ),
        "vmm_areas": profile,
        "nr_threads": profile,
        "host_runnable": "inferred (from the vCPUs' CPU share)",
        "host_cpus": "inferred (CPUs seen)",
        "vcpu_runtime_start_ms": f"inferred (first scan {delay:.0f} ms after numa_balancing "
        f"on, {facts.on_source}; a lower bound)"
        if delay is not None and not by_vmm
        else "defaulted",
        "main_thread_share": profile,
        "main_thread_runtime_start_ms": f"inferred (thread {facts.first_scan_pid}, not a vCPU, "
        f"ran the first scan {delay or 0:.0f} ms after numa_balancing on: past scan_delay)",
    }
    default = VmHosting(hosting.vm)
    provenance = {
        name: origin.get(name, "defaulted")
        if getattr(hosting, name) != getattr(default, name)
        else "defaulted"
        for name in VmHosting.__dataclass_fields__
        if name != "vm"
    }
    return hosting, provenance, facts
