"""``tlbreplay calibrate``: hold the engine against a real capture whose workload is known.

A lab capture (``tlbreplay lab run``) records its guest's workload in the sidecar's ``[lab]``
table: which guest-physical range each vCPU sweeps, one write per 4 KiB page, and how many
sweeps per second it made. Calibration rebuilds that workload as an ``accesses`` frame, replays
it on the sidecar's VM with the policy of the capture's kernel (``linux-6.18`` for 6.18) and the
capture's MMU kind, and sets each simulated counter beside the one observed in the trace.

Observed counters, all restricted to the guest's RAM and to the numa_balancing=1 window (the
two ``tracing_mark_write`` markers of the lab, cut to whole epochs):

* remote TLB flushes: KVM's own VM stat ``remote_tlb_flush_requests`` (kvm_flush_remote_tlbs()
  calls, read with KVM_GET_STATS_FD by the lab over its window, in ``NAME.capture.json``).
* notifier calls / bytes: ``kvm:kvm_unmap_hva_range`` overlapping guest RAM (bytes clipped),
  one per ``mmu_notifier_invalidate_range_start()`` (virt/kvm/kvm_main.c).
* SPTE zaps: on a TDP MMU ``kvmmmu:kvm_tdp_mmu_spte_changed`` present -> not present; on a
  shadow MMU no tracepoint marks a leaf zap (``kvm_zap_rmap()``), so zaps are counted by their
  re-installs, ``kvmmmu:kvm_mmu_set_spte`` (the lab guest touches every page again within
  milliseconds, and ``direct_pte_prefetch()`` only fills non-present SPTEs).
* guest refaults: ``kvm:kvm_page_fault`` (TDP) or ``kvmmmu:kvm_mmu_spte_requested`` (shadow).
* numa_pte_updates, numa_huge_pte_updates, numa_hint_faults: /proc/vmstat is host-wide, so the
  capture samples it every 5 ms; increments are attributed to the VM's own windows (its scan
  bursts for PTE updates, scan burst to end of the refault burst for hinting faults) minus the
  host's background rate outside those windows.
* scans and cadence: task_numa_work() bursts (``sched_skip_vma_numa`` / notifiers from the
  VMM's threads, < 100 ms apart) that reach guest RAM; their count, the first one's delay
  after numa_balancing=1 and the mean interval.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.analyze import observed_events as obs_events
from pipeline.errors import DatasetError, InputError
from pipeline.ingest import capture_facts as hosting_facts
from pipeline.ingest.capture_facts import (
    BURST_GAP_NS,
    LAB_GUEST_PAGE_BYTES,
    TRACE_TABLES,
    LabFacts,
    guest_overlap_bytes,
    read_capture_doc,
    stem_of,
    trace_window,
)
from pipeline.model import hosting as model_hosting
from pipeline.model.hosting import VmHosting

KERNEL_POLICIES = (("7.1", "linux-7.1"), ("6.18", "linux-6.18"), ("6.5", "linux-6.5"))
PAGE_4K = 4096
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
RAM_POPULATED = ("before_capture", "in_capture")


def with_per_scan(values: dict[str, float]) -> dict[str, float]:
    """Add ``<counter>_per_scan``: what one task_numa_work() reaching guest RAM does, which
    does not depend on the scan cadence."""
    scans = values["scans"]
    out = dict(values)
    for name in PER_SCAN:
        out[f"{name}_per_scan"] = values[name] / scans if scans else float("nan")
    return out


def policy_for_kernel(release: str | None) -> str:
    """The policy modelling a kernel release (``6.18.44-...`` -> ``linux-6.18``)."""
    if release:
        parts = release.split(".")
        try:
            version = (int(parts[0]), int(parts[1].split("-")[0]))
        except (ValueError, IndexError):
            version = (0, 0)
        for name, policy in KERNEL_POLICIES:
            major, minor = (int(x) for x in name.split("."))
            if version >= (major, minor):
                return policy
    return "linux-6.18"


@dataclass(frozen=True)
class LabWorkload:
    """The ``[lab]`` table of a lab sidecar: what the guest did, and the hosting facts
    (:class:`pipeline.ingest.capture_facts.LabFacts`) the lab measured."""

    pattern: str
    touch_start_gpa: tuple[int, ...]
    touch_end_gpa: tuple[int, ...]
    passes_per_s: tuple[float, ...]
    window_s: float
    stride_bytes: int = PAGE_4K
    guest_page_bytes: int = LAB_GUEST_PAGE_BYTES
    facts: LabFacts = field(default_factory=LabFacts)
    # the capture's enabled events ("system:event"), for a hand-written sidecar (ADR 0510)
    events: tuple[str, ...] = ()
    # when numa_balancing took effect, in trace-clock ns (instead of the lab's trace marker)
    numa_balancing_on_ns: int | None = None
    # "before_capture" | "in_capture": whether the trace holds the guest populating its RAM
    # (None: inferred, observed_events.population_in_trace())
    ram_populated: str | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], path: Path) -> LabWorkload:
        try:
            starts = tuple(int(x) for x in table["touch_start_gpa"])
            ends = tuple(int(x) for x in table["touch_end_gpa"])
            rates = tuple(float(x) for x in table["passes_per_s"])
            window_s = float(table["window_s"])
            pattern = str(table["pattern"])
            on_ns = table.get("numa_balancing_on_ns")
            on_ns = None if on_ns is None else int(on_ns)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"[lab] table lacks or mistypes {exc}") from exc
        if not (len(starts) == len(ends) == len(rates)) or not starts:
            raise InputError(path, "[lab] touch_start_gpa, touch_end_gpa, passes_per_s differ")
        populated = table.get("ram_populated")
        if populated is not None and populated not in RAM_POPULATED:
            raise InputError(
                path, f"[lab] ram_populated = {populated!r}; use one of {', '.join(RAM_POPULATED)}"
            )
        return cls(
            pattern,
            starts,
            ends,
            rates,
            window_s,
            int(table.get("stride_bytes", PAGE_4K)),
            int(table.get("guest_page_bytes", LAB_GUEST_PAGE_BYTES)),
            LabFacts.from_table(table, path),
            tuple(str(e) for e in table.get("events", ())),
            on_ns,
            None if populated is None else str(populated),
        )


@dataclass
class CalibrationInput:
    dataset: Path
    vms: pl.DataFrame
    lab: LabWorkload
    vmstat: dict[str, Any] | None
    t_on_ns: int
    t_end_ns: int
    ftrace: dict[str, pl.DataFrame] = field(default_factory=dict)
    kvm_stats_delta: dict[str, int] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)
    # counter -> why the capture cannot observe it (observed_events.unavailable())
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def vm(self) -> dict[str, Any]:
        row: dict[str, Any] = self.vms.row(0, named=True)
        return row


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


def scan_bursts(inp: CalibrationInput) -> list[Burst]:
    """Cluster the VMM threads' scan events (< 100 ms apart); keep bursts reaching guest RAM."""
    vm = inp.vm
    pids = {int(t) for t in (vm.get("vcpu_tids") or [])}
    unmap = _in_window(inp.ftrace["kvm_unmap_hva_range"], inp)
    skip = _in_window(inp.ftrace["sched_skip_vma_numa"], inp)
    events: list[tuple[int, int]] = []
    if unmap.height:
        over = _overlap_bytes(
            unmap["hva_start"].to_numpy().astype(np.int64),
            unmap["hva_end"].to_numpy().astype(np.int64),
            vm,
        )
        pid_col = unmap["pid"].to_list()
        for ts, pid, nbytes in zip(unmap["ts_ns"].to_list(), pid_col, over.tolist(), strict=True):
            if not pids or pid in pids or nbytes > 0:
                events.append((int(ts), int(nbytes)))
    if skip.height:
        events.extend((int(ts), 0) for ts in skip["ts_ns"].to_list())
    flush = _in_window(inp.ftrace["tlb_flush"], inp)
    if flush.height:
        # The host flush that ends each change_prot_numa() chunk (flush_tlb_mm_range():
        # local MM shootdown, remote IPI send) marks where the chunk's PTE updates are counted.
        ends = flush.filter(pl.col("reason_code").is_in([3, 4]))
        if pids:
            ends = ends.filter(pl.col("pid").is_in(list(pids)))
        events.extend((int(ts), 0) for ts in ends["ts_ns"].to_list())
    events.sort()
    bursts: list[Burst] = []
    cur: list[tuple[int, int]] = []
    for ev in events:
        if cur and ev[0] - cur[-1][0] > BURST_GAP_NS:
            bursts.append(Burst(cur[0][0], cur[-1][0], sum(b for _, b in cur)))
            cur = []
        cur.append(ev)
    if cur:
        bursts.append(Burst(cur[0][0], cur[-1][0], sum(b for _, b in cur)))
    return [b for b in bursts if b.guest_bytes > 0]


def _guest_installs(inp: CalibrationInput) -> pl.DataFrame:
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
    return obs_events.population_in_trace(_guest_installs(inp), first)


def _refault_frame(inp: CalibrationInput, populated: bool) -> pl.DataFrame:
    vm = inp.vm
    if vm["mmu"] == "tdp" and inp.ftrace["kvm_page_fault"].height:
        frame = inp.ftrace["kvm_page_fault"].with_columns((pl.col("gpa") // PAGE_4K).alias("gfn"))
        return _guest_gfns(_in_window(frame, inp), vm)
    frame = _guest_gfns(_in_window(inp.ftrace["kvm_mmu_spte_requested"], inp), vm)
    if populated:
        frame = obs_events.drop_first_touch(_guest_installs(inp), frame)
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
    installs = _in_window(_guest_installs(inp), inp)
    if populated:
        installs = obs_events.drop_first_touch(_guest_installs(inp), installs)
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
    out.update(_cadence([b.start_ns for b in bursts], inp.t_on_ns))
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


def _cadence(starts_ns: Sequence[int], t0_ns: int) -> dict[str, float]:
    starts = sorted(starts_ns)
    return {
        "scans": float(len(starts)),
        "first_scan_ms": (starts[0] - t0_ns) / 1e6 if starts else float("nan"),
        "scan_interval_ms": float(np.mean(np.diff(starts)) / 1e6)
        if len(starts) > 1
        else float("nan"),
    }


def workload_accesses(
    vm: dict[str, Any],
    lab: LabWorkload,
    n_epochs: int,
    epoch_ms: int,
    prefix: Sequence[Sequence[int]] | None = None,
) -> pl.DataFrame:
    """The lab guest's sweeps as table ``accesses``: each vCPU writes every 4 KiB page of its
    range once per sweep; ``nr_accesses`` = sweeps per epoch (at least 1). ``prefix``
    (vCPU -> epoch -> pages, observed_events.populated_prefix()) limits each epoch to the part
    of the range the guest had touched by then, while it populates its RAM."""
    rows: dict[str, list[Any]] = {
        k: [] for k in ("vm", "epoch", "vcpu", "gfn_start", "nr_pages", "nr_accesses", "write")
    }
    for epoch in range(n_epochs):
        for vcpu, (start, end, rate) in enumerate(
            zip(lab.touch_start_gpa, lab.touch_end_gpa, lab.passes_per_s, strict=True)
        ):
            nr_pages = (end - start) // PAGE_4K
            if prefix is not None:
                nr_pages = min(nr_pages, int(prefix[vcpu][epoch]))
                if nr_pages <= 0:
                    continue
            rows["vm"].append(vm["vm"])
            rows["epoch"].append(epoch)
            rows["vcpu"].append(vcpu)
            rows["gfn_start"].append(start // PAGE_4K)
            rows["nr_pages"].append(nr_pages)
            rows["nr_accesses"].append(max(1, round(rate * epoch_ms / 1000)))
            rows["write"].append(True)
    from pipeline.schema import conform

    frame = pl.from_arrow(conform(pl.DataFrame(rows), "accesses"))
    assert isinstance(frame, pl.DataFrame)
    return frame


def host_runnable(lab: LabWorkload) -> float:
    """Other runnable tasks on a vCPU thread's CPU (model.hosting.host_runnable())."""
    return model_hosting.host_runnable(lab.facts.vcpu_cpu_share)


def lab_hosting(inp: CalibrationInput, *, modelled: bool = True) -> VmHosting:
    """The lab VM's process and host facts for the engine (ADR 0320), built by the same
    :func:`pipeline.ingest.capture_facts.build_hosting` as ``tlbreplay ingest``'s hosting.parquet
    (ADR 0330). ``modelled=False`` gives the defaults (the engine before ADR 0320), for the
    before/after comparison."""
    vm = inp.vm
    if not modelled:
        return VmHosting(str(vm["vm"]))
    return hosting_facts.build_hosting(
        vm, inp.lab.facts, inp.capture, inp.ftrace, (inp.t_on_ns, inp.t_end_ns)
    )


def simulated(
    inp: CalibrationInput, policy: str, epoch_ms: int = 100, *, hosting: bool = True
) -> tuple[dict[str, float], pl.DataFrame]:
    """Replay the lab workload under ``policy``; the counters of :data:`COUNTERS` and scans.

    ``hosting`` (default) gives the engine the capture's process and host facts
    (:func:`lab_hosting`, ADR 0320); False replays guest RAM alone on an idle host with
    vCPUs owning their CPUs (the engine's defaults), for before/after comparisons.
    """
    from pipeline.replay.runner import ReplayParams, replay_frames

    vm = inp.vm
    n_epochs = round((inp.t_end_ns - inp.t_on_ns) / (epoch_ms * 1_000_000))
    prefix = None
    if population_in_trace(inp):
        # the guest's first touches, as the trace shows them (ADR 0510)
        prefix = obs_events.populated_prefix(
            _guest_installs(inp),
            [(s // PAGE_4K, e // PAGE_4K) for s, e in zip(
                inp.lab.touch_start_gpa, inp.lab.touch_end_gpa, strict=True)],
            inp.t_on_ns,
            epoch_ms * 1_000_000,
            n_epochs,
        )  # fmt: skip
    accesses = workload_accesses(vm, inp.lab, n_epochs, epoch_ms, prefix)
    params = ReplayParams(
        epoch_ms=epoch_ms,
        mmu=str(vm["mmu"]),
        shadow_guest_2m=inp.lab.guest_page_bytes >= (2 << 20),
        hosting=(lab_hosting(inp, modelled=hosting),),
    )
    result = replay_frames(inp.vms, accesses, [policy], params, seed=0)
    epochs = result.epochs
    total = {
        name: float(epochs[name].sum()) if epochs.height else 0.0
        for name in (
            "numa_pte_updates",
            "numa_huge_pte_updates",
            "numa_hint_faults",
            "mmu_notifier_invalidations",
            "notifier_bytes",
            "spte_zapped",
            "ept_violations",
            "remote_tlb_flushes",
        )
    }
    scans = result.scans.filter(pl.col("notifiers") > 0) if result.scans.height else result.scans
    out = {
        "remote_tlb_flushes": total["remote_tlb_flushes"],
        "notifier_calls": total["mmu_notifier_invalidations"],
        "notifier_bytes": total["notifier_bytes"],
        "spte_zapped": total["spte_zapped"],
        "refaults": total["ept_violations"],
        "numa_pte_updates": total["numa_pte_updates"],
        "numa_huge_pte_updates": total["numa_huge_pte_updates"],
        "numa_hint_faults": total["numa_hint_faults"],
    }
    starts = [int(t) * 1_000_000 for t in scans["t_ms"].to_list()] if scans.height else []
    out.update(_cadence(starts, 0))
    return out, result.scans


def relative_error(sim: float, obs: float) -> float:
    if math.isnan(sim) or math.isnan(obs):
        return float("nan")
    if obs == 0:
        return 0.0 if sim == 0 else float("inf")
    return (sim - obs) / obs


def pooled(tables: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The totals of several :func:`calibrate` tables added up, for the counters that add up
    over captures (:data:`PER_SCAN` and ``scans``): a count the engine predicts in expectation,
    such as the need_resched() yields in KVM flushes, is judged over all captures rather than
    draw by draw. NaN (``n/a``) when any capture has no value."""
    names = [*PER_SCAN, "scans"]
    obs = dict.fromkeys(names, 0.0)
    sim = dict.fromkeys(names, 0.0)
    for table in tables:
        for row in table.iter_rows(named=True):
            if row["counter"] in obs:
                obs[row["counter"]] += float(row["observed"])
                sim[row["counter"]] += float(row["simulated"])
    return pl.DataFrame(
        {
            "counter": names,
            "observed": [obs[c] for c in names],
            "simulated": [sim[c] for c in names],
            "rel_error": [relative_error(sim[c], obs[c]) for c in names],
        }
    )


def calibrate(
    dataset: Path,
    *,
    sidecar: Path | None = None,
    vmstat: Path | None = None,
    policy: str | None = None,
    epoch_ms: int = 100,
    hosting: bool = True,
) -> pl.DataFrame:
    """One row per counter: observed, simulated, relative error (sim - obs) / obs."""
    inp = load_input(dataset, sidecar, vmstat, epoch_ms)
    policy = policy or policy_for_kernel(inp.vm.get("kernel"))
    obs, background = observed(inp)
    sim, _ = simulated(inp, policy, epoch_ms, hosting=hosting)
    bg = with_per_scan({**background, "scans": obs["scans"]})
    obs, sim = with_per_scan(obs), with_per_scan(sim)
    names = [*COUNTERS, *(f"{n}_per_scan" for n in PER_SCAN)]
    reasons = [na_reason(c, inp.unavailable) for c in names]
    return pl.DataFrame(
        {
            "counter": names,
            "observed": [obs[c] for c in names],
            "simulated": [sim[c] for c in names],
            "rel_error": [relative_error(sim[c], obs[c]) for c in names],
            "host_background": [0.0 if c == "scans" else bg.get(c, 0.0) for c in names],
            "policy": [policy] * len(names),
            "na_reason": pl.Series(reasons, dtype=pl.Utf8),
        }
    )


def na_reason(counter: str, unavailable: Mapping[str, str]) -> str | None:
    """Why ``counter`` (or ``<counter>_per_scan``) cannot be observed; None if it can. A per
    scan value needs its counter and the scans."""
    base = counter.removesuffix("_per_scan")
    if base in unavailable:
        return unavailable[base]
    if counter != base and "scans" in unavailable:
        return unavailable["scans"]
    return None
