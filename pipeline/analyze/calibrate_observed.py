"""Calibrate's observed side: a capture's DATASET read (trace tables, sidecar, capture.json,
vmstat samples) and what the real kernel did in its window, counted from the trace (notifier
bursts as scans, re-installs as zaps and refaults, first touches apart) and from /proc/vmstat
(attributed to guest RAM, less the baseline); ADR 0502, ADR 0510."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.analyze import observed_events as obs_events
from pipeline.analyze.calibrate_input import (
    PAGE_4K,
    CalibrationInput,
    LabWorkload,
)
from pipeline.errors import DatasetError, InputError
from pipeline.ingest.capture_facts import (
    BURST_GAP_NS,
    TRACE_TABLES,
    guest_overlap_bytes,
    read_capture_doc,
    stem_of,
    trace_window,
)

COUNTERS = (
    "remote_tlb_flushes",
    "notifier_calls",
    "notifier_bytes",
    "spte_zapped",
    "refaults",
    "numa_pte_updates",
    "numa_huge_pte_updates",
    "numa_hint_faults",
    "scans",
    "first_scan_ms",
    "scan_interval_ms",
)


PER_SCAN = COUNTERS[:8]  # the counters that add up per task_numa_work()


VMSTAT_COUNTERS = ("numa_pte_updates", "numa_huge_pte_updates", "numa_hint_faults")


def with_per_scan(values: dict[str, float]) -> dict[str, float]:
    """Add ``<counter>_per_scan``: what one task_numa_work() reaching guest RAM does, which
    does not depend on the scan cadence."""
    scans = values["scans"]
    out = dict(values)
    for name in PER_SCAN:
        out[f"{name}_per_scan"] = values[name] / scans if scans else float("nan")
    return out


def _resolve(path_text: str, dataset: Path) -> Path:
    path = Path(path_text)
    if path.is_absolute() or path.exists():
        return path
    return dataset.parent / path


def _read_ftrace(dataset: Path, name: str) -> pl.DataFrame:
    path = dataset / "ftrace" / f"{name}.parquet"
    if not path.is_file():
        return pl.DataFrame()
    return pl.read_parquet(path)


def load_input(
    dataset: Path, sidecar: Path | None = None, vmstat: Path | None = None, epoch_ms: int = 100
) -> CalibrationInput:
    """Read a DATASET ingested from a lab capture plus its sidecar's [lab] and vmstat samples."""
    from pipeline.schema import read_manifest

    manifest = read_manifest(dataset)
    if manifest.get("kind") != "dataset":
        raise DatasetError(dataset, "not a DATASET (manifest kind is not `dataset`)")
    vms = pl.read_parquet(dataset / "vms.parquet")
    if vms.height != 1:
        raise DatasetError(dataset, f"calibration needs one VM, the dataset has {vms.height}")
    if sidecar is None:
        text = (manifest.get("parameters") or {}).get("vm_config")
        if not text:
            raise DatasetError(dataset, "no sidecar recorded in the manifest: pass --sidecar")
        sidecar = _resolve(str(text), dataset)
    try:
        doc = tomllib.loads(sidecar.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(sidecar, f"cannot read the sidecar: {exc}") from exc
    if "lab" not in doc:
        raise InputError(sidecar, "no [lab] table: the workload of this capture is not known")
    lab = LabWorkload.from_table(doc["lab"], sidecar)
    sources = manifest.get("sources") or []
    stem = None
    if sources:
        trace = _resolve(str(sources[0]["path"]), dataset)
        stem = stem_of(trace)
    if vmstat is None and stem is not None:
        guess = Path(f"{stem}.vmstat.json")
        vmstat = guess if guess.is_file() else None
    vmstat_doc = json.loads(vmstat.read_text()) if vmstat is not None else None
    capture = read_capture_doc(Path(f"{stem}.capture.json") if stem else None)
    kvm_delta = _kvm_stats_delta(capture)
    tables = {name: _read_ftrace(dataset, name) for name in TRACE_TABLES}
    t_on, t_end = _window(tables, lab, epoch_ms)
    events, source = obs_events.enabled_events(
        capture, {"events": list(lab.events)} if lab.events else {}, tables
    )
    missing = obs_events.unavailable(
        mmu=str(vms.row(0, named=True)["mmu"]),
        events=events,
        source=source,
        has_kvm_stats="remote_tlb_flush_requests" in kvm_delta,
        has_vmstat=bool((vmstat_doc or {}).get("samples")),
    )
    return CalibrationInput(
        dataset, vms, lab, vmstat_doc, t_on, t_end, tables, kvm_delta, capture, missing
    )


def _kvm_stats_delta(doc: dict[str, Any]) -> dict[str, int]:
    """KVM's VM-wide binary stats over the lab window (``capture.json`` lab.kvm_stats_delta.vm):
    ``remote_tlb_flush_requests`` counts kvm_flush_remote_tlbs() calls (virt/kvm/kvm_main.c)."""
    delta = ((doc.get("lab") or {}).get("kvm_stats_delta") or {}).get("vm") or {}
    return {str(k): int(v) for k, v in delta.items()}


def _window(tables: dict[str, pl.DataFrame], lab: LabWorkload, epoch_ms: int) -> tuple[int, int]:
    """[numa_balancing on, on + whole epochs of the window) in trace ns (the lab's markers)."""
    return trace_window(tables, lab.window_s, epoch_ms, lab.numa_balancing_on_ns)


def _regions(vm: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(hva_start, hva_end, gpa_start) of each guest-RAM region."""
    return [
        (int(r["hva_start"]), int(r["hva_start"]) + int(r["size_bytes"]), int(r["gpa_start"]))
        for r in vm["regions"]
    ]


def _in_window(frame: pl.DataFrame, inp: CalibrationInput) -> pl.DataFrame:
    if not frame.height:
        return frame
    return frame.filter((pl.col("ts_ns") >= inp.t_on_ns) & (pl.col("ts_ns") < inp.t_end_ns))


def _guest_gfns(frame: pl.DataFrame, vm: dict[str, Any], column: str = "gfn") -> pl.DataFrame:
    if not frame.height:
        return frame
    cond = pl.lit(False)
    for hva_start, hva_end, gpa in _regions(vm):
        first, end = gpa // PAGE_4K, (gpa + hva_end - hva_start) // PAGE_4K
        cond = cond | ((pl.col(column) >= first) & (pl.col(column) < end))
    return frame.filter(cond)


def _overlap_bytes(starts: np.ndarray, ends: np.ndarray, vm: dict[str, Any]) -> np.ndarray:
    return guest_overlap_bytes(starts, ends, vm)


@dataclass(frozen=True)
class Burst:
    """One task_numa_work() of the VM as seen in the trace."""

    start_ns: int
    end_ns: int
    guest_bytes: int
    pid: int = -1  # the thread of its first notifier or VMA skip (-1: none seen)
    lo_hva: int = -1  # its first and last walked address (-1: none seen)
    hi_hva: int = -1
    scan_offset: int | None = None  # the last mm->numa_scan_offset its VMA skips printed
    first_chunk: tuple[int, int] = (-1, -1)  # its first and last notifier [start, end)
    last_chunk: tuple[int, int] = (-1, -1)


@dataclass
class _Event:
    ts: int
    guest_bytes: int = 0
    pid: int = -1
    hva: int = -1
    scan_offset: int | None = None
    hva_end: int = -1  # a notifier's end (-1: not a notifier)


def _burst(events: list[_Event]) -> Burst:
    walked = [e for e in events if e.hva >= 0]
    offsets = [e.scan_offset for e in events if e.scan_offset is not None]
    chunks = [(e.hva, e.hva_end) for e in events if e.hva_end >= 0]
    return Burst(
        events[0].ts,
        events[-1].ts,
        sum(e.guest_bytes for e in events),
        walked[0].pid if walked else -1,
        walked[0].hva if walked else -1,
        walked[-1].hva if walked else -1,
        offsets[-1] if offsets else None,
        chunks[0] if chunks else (-1, -1),
        chunks[-1] if chunks else (-1, -1),
    )


def _joined(a: Burst, b: Burst) -> Burst:
    return Burst(
        a.start_ns,
        b.end_ns,
        a.guest_bytes + b.guest_bytes,
        a.pid,
        a.lo_hva,
        b.hi_hva,
        b.scan_offset if b.scan_offset is not None else a.scan_offset,
        a.first_chunk if a.first_chunk[0] >= 0 else b.first_chunk,
        b.last_chunk if b.last_chunk[0] >= 0 else a.last_chunk,
    )


def continues(first: Burst, then: Burst, budget_bytes: int = 256 << 20) -> bool:
    """Whether ``then`` is the rest of ``first``'s work item, whose thread was preempted for
    longer than the burst gap (a vCPU with a tenth of a CPU waits 100-200 ms). In
    kernel/sched/fair.c task_numa_work() (v6.5 = v6.18 = v7.1, KERNEL.md §3.4) a work item
    walks up the address space on one thread, so ``then`` must be on the same thread and
    walk on from where ``first`` was. Then either

    * mm->numa_scan_offset, which each sched_skip_vma_numa prints, is the same in both: it
      changes only when an item ends (or at a seq_completed skip, which the next event then
      prints); a new item starts at the offset the last one stopped at, or after a wrap at
      0, below; or
    * ``then``'s first chunk starts where ``first``'s last ended and is as long, shorter than
      the whole budget (``budget_bytes``, scan_size_mb): each chunk ends at ALIGN(start +
      pages left), so equal chunks mean an unchanged budget, a walk that changed no PTE
      (pinned RAM); a new item would start with the whole budget."""
    if first.pid < 0 or then.pid != first.pid or not then.lo_hva >= first.hi_hva >= 0:
        return False
    if first.scan_offset is not None and then.scan_offset == first.scan_offset:
        return True
    a0, a1 = first.last_chunk
    b0, b1 = then.first_chunk
    return a0 >= 0 and b0 == a1 and b1 - b0 == a1 - a0 < budget_bytes


def scan_bursts(inp: CalibrationInput) -> list[Burst]:
    """Cluster the VMM threads' scan events (< 100 ms apart) into task_numa_work() items,
    join an item its thread's preemption split (:func:`continues`), keep the items reaching
    guest RAM."""
    vm = inp.vm
    pids = {int(t) for t in (vm.get("vcpu_tids") or [])}
    unmap = _in_window(inp.ftrace["kvm_unmap_hva_range"], inp)
    skip = _in_window(inp.ftrace["sched_skip_vma_numa"], inp)
    events: list[_Event] = []
    if unmap.height:
        over = _overlap_bytes(
            unmap["hva_start"].to_numpy().astype(np.int64),
            unmap["hva_end"].to_numpy().astype(np.int64),
            vm,
        )
        cols = (unmap[c].to_list() for c in ("ts_ns", "pid", "hva_start", "hva_end"))
        for ts, pid, hva, hva_end, nbytes in zip(*cols, over.tolist(), strict=True):
            if not pids or pid in pids or nbytes > 0:
                events.append(_Event(int(ts), int(nbytes), int(pid), int(hva), None, int(hva_end)))
    if skip.height:
        cols = (skip[c].to_list() for c in ("ts_ns", "pid", "vm_start", "numa_scan_offset"))
        for ts, pid, hva, offset in zip(*cols, strict=True):
            events.append(_Event(int(ts), 0, int(pid), int(hva), int(offset)))
    flush = _in_window(inp.ftrace["tlb_flush"], inp)
    if flush.height:
        # The host flush that ends each change_prot_numa() chunk (flush_tlb_mm_range():
        # local MM shootdown, remote IPI send) marks where the chunk's PTE updates are counted.
        ends = flush.filter(pl.col("reason_code").is_in([3, 4]))
        if pids:
            ends = ends.filter(pl.col("pid").is_in(list(pids)))
        events.extend(_Event(int(ts)) for ts in ends["ts_ns"].to_list())
    events.sort(key=lambda e: e.ts)
    bursts: list[Burst] = []
    cur: list[_Event] = []
    for ev in events:
        if cur and ev.ts - cur[-1].ts > BURST_GAP_NS:
            bursts.append(_burst(cur))
            cur = []
        cur.append(ev)
    if cur:
        bursts.append(_burst(cur))
    budget = int(vm.get("scan_size_mb") or 256) << 20
    items: list[Burst] = []
    for b in bursts:
        if items and continues(items[-1], b, budget):
            items[-1] = _joined(items[-1], b)
        else:
            items.append(b)
    return [b for b in items if b.guest_bytes > 0]


def guest_installs(inp: CalibrationInput) -> pl.DataFrame:
    """Every kvm_mmu_set_spte of guest RAM in the whole trace (the shadow MMU's installs)."""
    return _guest_gfns(inp.ftrace["kvm_mmu_set_spte"], inp.vm)


def population_in_trace(inp: CalibrationInput) -> bool:
    """Whether the trace holds the guest's first touches of its RAM: ``[lab].ram_populated``,
    else inferred (observed_events.population_in_trace()) from the first notifier reaching
    guest RAM."""
    if inp.lab.ram_populated is not None:
        return inp.lab.ram_populated == "in_capture"
    unmap = inp.ftrace["kvm_unmap_hva_range"]
    first = None
    if unmap.height:
        over = _overlap_bytes(
            unmap["hva_start"].to_numpy().astype(np.int64),
            unmap["hva_end"].to_numpy().astype(np.int64),
            inp.vm,
        )
        ts = unmap["ts_ns"].to_numpy()[over > 0]
        first = int(ts.min()) if ts.size else None
    return obs_events.population_in_trace(guest_installs(inp), first)


def _refault_frame(inp: CalibrationInput, populated: bool) -> pl.DataFrame:
    vm = inp.vm
    if vm["mmu"] == "tdp" and inp.ftrace["kvm_page_fault"].height:
        frame = inp.ftrace["kvm_page_fault"].with_columns((pl.col("gpa") // PAGE_4K).alias("gfn"))
        return _guest_gfns(_in_window(frame, inp), vm)
    frame = _guest_gfns(_in_window(inp.ftrace["kvm_mmu_spte_requested"], inp), vm)
    if populated:
        frame = obs_events.drop_first_touch(guest_installs(inp), frame)
    return frame


def _zap_count(inp: CalibrationInput, populated: bool) -> int:
    """SPTE zaps of guest RAM in the window: spte_changed present -> not present on TDP;
    re-installs of an SPTE already mapped (kvm_mmu_set_spte) on the shadow MMU."""
    vm = inp.vm
    changed = inp.ftrace["kvm_tdp_mmu_spte_changed"]
    if vm["mmu"] == "tdp" and changed.height:
        zaps = _guest_gfns(_in_window(changed, inp), vm).filter(
            (pl.col("old_spte") & 0x7 != 0) & (pl.col("new_spte") & 0x7 == 0)
        )
        return zaps.height
    installs = _in_window(guest_installs(inp), inp)
    if populated:
        installs = obs_events.drop_first_touch(guest_installs(inp), installs)
    return installs.height


def _refault_end(refault_ts: np.ndarray, start_ns: int, limit_ns: int) -> int:
    """Last guest refault after a scan starting at ``start_ns`` and before ``limit_ns``.

    The lab guest is warm, so between two scans its refaults are those of the scan's zaps;
    on a loaded host they can trail for a second (vCPU threads descheduled).
    """
    lo = int(np.searchsorted(refault_ts, start_ns, side="left"))
    hi = int(np.searchsorted(refault_ts, limit_ns, side="left"))
    return int(refault_ts[hi - 1]) if hi > lo else start_ns


def attribute_vmstat(
    samples: Sequence[Sequence[int]],
    columns: Sequence[str],
    windows: Sequence[tuple[int, int]],
    span: tuple[int, int],
    counter: str,
) -> tuple[float, float]:
    """Increments of a host-wide ``counter`` inside ``windows`` minus the background, and
    that background (the host's other activity expected in the windows).

    ``samples`` rows are ``[ts_ns, values...]``, kept when a value changed (5 ms sampling), so
    a row's increment happened after the previous sample. A window [start, end] is credited
    with the rows stamped in it and the first row after ``end`` (which holds what happened
    between the last sample and ``end``, e.g. the count at the end of change_prot_numa()). The
    background rate is that of the other rows in ``span``; it is subtracted for the time the
    windows cover. NaN when what is left is smaller than a background of one event or more
    (not measurable on this host at that time).
    """
    if not samples:
        return float("nan"), float("nan")
    col = list(columns).index(counter)
    ts = np.array([row[0] for row in samples], dtype=np.int64)
    values = np.array([row[col] for row in samples], dtype=np.int64)
    inc = np.diff(values, prepend=values[0])
    in_span = (ts >= span[0]) & (ts <= span[1])
    credited = np.zeros(ts.size, dtype=bool)
    covered_ns = 0
    for start, end in windows:
        first = int(np.searchsorted(ts, start, side="left"))
        after = int(np.searchsorted(ts, end, side="right"))  # first row stamped after end
        last = min(after, ts.size - 1)
        if first <= last:
            credited[first : last + 1] = True
            covered_ns += int(ts[last]) - start
    attributed = float(inc[credited].sum())
    outside_ns = max(1, span[1] - span[0] - covered_ns)
    background_rate = float(inc[~credited & in_span].sum()) / outside_ns
    background = background_rate * covered_ns
    signal = attributed - background
    if background >= 1.0 and signal < background:
        # Below the host's own activity in the same windows: not measurable here.
        return float("nan"), background
    return max(0.0, signal), background


def with_baseline(
    samples: Sequence[Sequence[int]],
    columns: Sequence[str],
    before: Mapping[str, int],
    t_on_ns: int,
) -> list[Sequence[int]]:
    """``samples`` with the capture's starting snapshot (vmstat.json ``before``) as a first
    row stamped just before ``t_on_ns``, when the first sample came later: the sampler kept
    its first row only at its first tick, which could follow numa_balancing=1 and a first
    scan (3.9 ms after it in a lab cell), whose increments would then be lost."""
    rows = list(samples)
    if not rows or not before or rows[0][0] < t_on_ns:
        return rows
    if not all(c in before for c in columns[1:]):
        return rows
    return [[t_on_ns - 1, *(int(before[c]) for c in columns[1:])], *rows]


def observed(inp: CalibrationInput) -> tuple[dict[str, float], dict[str, float]]:
    """The counters of :data:`COUNTERS` measured in the capture (module docstring), and the
    host background subtracted from each vmstat counter (0 for counters from the trace)."""
    vm = inp.vm
    unmap = _in_window(inp.ftrace["kvm_unmap_hva_range"], inp)
    over = (
        _overlap_bytes(
            unmap["hva_start"].to_numpy().astype(np.int64),
            unmap["hva_end"].to_numpy().astype(np.int64),
            vm,
        )
        if unmap.height
        else np.zeros(0, np.int64)
    )
    populated = population_in_trace(inp)
    refaults = _refault_frame(inp, populated)
    bursts = scan_bursts(inp)
    flushes = inp.kvm_stats_delta.get("remote_tlb_flush_requests")
    out: dict[str, float] = {
        "remote_tlb_flushes": float("nan") if flushes is None else float(flushes),
        "notifier_calls": float((over > 0).sum()),
        "notifier_bytes": float(over.sum()),
        "spte_zapped": float(_zap_count(inp, populated)),
        "refaults": float(refaults.height),
    }
    out.update(scan_cadence([b.start_ns for b in bursts], inp.t_on_ns))
    refault_ts = np.sort(refaults["ts_ns"].to_numpy()) if refaults.height else np.zeros(0, np.int64)
    scan_windows = [(b.start_ns, b.end_ns) for b in bursts]
    fault_windows = []
    for i, b in enumerate(bursts):
        limit = bursts[i + 1].start_ns if i + 1 < len(bursts) else inp.t_end_ns
        fault_windows.append(
            (b.start_ns, max(b.end_ns, _refault_end(refault_ts, b.start_ns, limit)))
        )
    span = (inp.t_on_ns, inp.t_end_ns)
    background = dict.fromkeys(COUNTERS, 0.0)
    samples = (inp.vmstat or {}).get("samples") or []
    columns = (inp.vmstat or {}).get("samples_columns") or []
    samples = with_baseline(samples, columns, (inp.vmstat or {}).get("before") or {}, span[0])
    for name in VMSTAT_COUNTERS:
        windows = fault_windows if name == "numa_hint_faults" else scan_windows
        out[name], background[name] = attribute_vmstat(samples, columns, windows, span, name)
    for name in inp.unavailable:  # not observable in this capture: n/a, never 0
        out[name] = float("nan")
    return out, background


def scan_cadence(starts_ns: Sequence[int], t0_ns: int) -> dict[str, float]:
    starts = sorted(starts_ns)
    return {
        "scans": float(len(starts)),
        "first_scan_ms": (starts[0] - t0_ns) / 1e6 if starts else float("nan"),
        "scan_interval_ms": float(np.mean(np.diff(starts)) / 1e6)
        if len(starts) > 1
        else float("nan"),
    }
