"""A captured VM's process and host facts (table ``hosting``, ADR 0320 / ADR 0330).

One builder for ``tlbreplay ingest`` (writes ``DATASET/hosting.parquet``) and ``tlbreplay
calibrate`` (replays a lab workload): the facts come from the capture's files beside the
sidecar (same stem), never from the counters they are meant to predict.

* sidecar ``[lab]``: ``vcpu_cpu_share`` (schedstat over the window), ``vcpu_runtime_start_ms``,
  ``host_cpus``, ``thp_mapped_kb``, ``window_s``, ``vcpu_preempt_per_s`` (involuntary context
  switches per vCPU CPU second), ``vcpu_pthread_hva`` (each vCPU thread's TCB) and
  ``kvm_zap_ns_per_spte`` (the KVM zap walk alone, pipeline/lab/zapprobe.py; written by
  ``tlbreplay lab run``), ``thread_tids`` / ``thread_cpu_s`` / ``thread_runtime_start_ms``
  (the VMM's other threads over the window, ADR 0363);
* ``NAME.capture.json``: ``vmas_before`` (the VMM's VMAs with smaps Rss) and ``threads``
  (get_nr_threads() of the VMM process), written by ``tlbreplay capture``;
* the trace: the zap cost per SPTE when the lab did not probe it (kvm_unmap_hva_range to the
  thread's closing tlb_flush, an upper bound) and the CPUs seen.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import InputError
from pipeline.ingest.trace_facts import VCPU_EVENTS, cpus_seen, inferred_hosting, overlap_bytes
from pipeline.model.hosting import (
    VmHosting,
    VmmThread,
    areas_from_smaps,
    has_facts,
    host_runnable,
    hosting_frame,
    preempt_per_s,
    ram_ranges,
    share_and_preempt_rate,
    vmm_threads_from_sched,
)

PAGE_4K = 4096
BURST_GAP_NS = 100_000_000  # a scan's events are < 100 ms apart
LAB_GUEST_PAGE_BYTES = 2 << 20  # the lab guest's page tables map 2 MiB pages
# the ftrace tables calibration reads; the builder's "CPUs seen" looks at these
TRACE_TABLES = (
    "kvm_unmap_hva_range",
    "kvm_mmu_spte_requested",
    "kvm_mmu_set_spte",
    "kvm_tdp_mmu_spte_changed",
    "kvm_page_fault",
    "sched_skip_vma_numa",
    "tlb_flush",
    "tracing_mark_write",
)


@dataclass(frozen=True)
class LabFacts:
    """The hosting facts of a sidecar's ``[lab]`` table (all optional)."""

    vcpu_cpu_share: tuple[float, ...] = ()
    vcpu_runtime_start_ms: tuple[float, ...] = ()
    host_cpus: int | None = None
    thp_mapped_kb: int = 0
    window_s: float | None = None
    vcpu_preempt_per_s: tuple[float, ...] = ()
    vcpu_pthread_hva: tuple[int, ...] = ()
    kvm_zap_ns_per_spte: float | None = None
    thread_tids: tuple[int, ...] = ()
    thread_cpu_s: tuple[float, ...] = ()
    thread_runtime_start_ms: tuple[float, ...] = ()

    @classmethod
    def from_table(cls, table: Mapping[str, Any], path: Path) -> LabFacts:
        try:
            facts = cls(
                tuple(float(x) for x in table.get("vcpu_cpu_share", ())),
                tuple(float(x) for x in table.get("vcpu_runtime_start_ms", ())),
                int(table["host_cpus"]) if table.get("host_cpus") else None,
                int(table.get("thp_mapped_kb", 0)),
                float(table["window_s"]) if "window_s" in table else None,
                tuple(float(x) for x in table.get("vcpu_preempt_per_s", ())),
                tuple(int(x) for x in table.get("vcpu_pthread_hva", ())),
                float(table["kvm_zap_ns_per_spte"]) if "kvm_zap_ns_per_spte" in table else None,
                tuple(int(x) for x in table.get("thread_tids", ())),
                tuple(float(x) for x in table.get("thread_cpu_s", ())),
                tuple(float(x) for x in table.get("thread_runtime_start_ms", ())),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"[lab] table mistypes a hosting fact: {exc}") from exc
        threads = {len(facts.thread_tids), len(facts.thread_cpu_s)}
        if len(threads | {len(facts.thread_runtime_start_ms)}) > 1:
            raise InputError(
                path, "[lab] thread_tids, thread_cpu_s and thread_runtime_start_ms differ in length"
            )
        return facts


def guest_overlap_bytes(starts: np.ndarray, ends: np.ndarray, vm: Mapping[str, Any]) -> np.ndarray:
    """Bytes of each hva range ``[starts, ends)`` inside the VM's guest RAM."""
    return overlap_bytes(starts, ends, ram_ranges(vm))


def trace_window(
    tables: Mapping[str, pl.DataFrame],
    window_s: float,
    epoch_ms: int,
    on_ns: int | None = None,
) -> tuple[int, int]:
    """[numa_balancing on, on + whole epochs of ``window_s``) in trace ns: ``on_ns`` (the
    sidecar's ``[lab].numa_balancing_on_ns``), else the lab's ``numa_balancing=`` marker
    (tracing_mark_write), else the first event."""
    marks = tables.get("tracing_mark_write", pl.DataFrame())
    on = on_ns
    if on is None and marks.height:
        rows = marks.filter(pl.col("buf").str.contains("numa_balancing=")).sort("ts_ns")
        if rows.height:
            on = int(rows["ts_ns"][0])
    if on is None:
        firsts = [int(t["ts_ns"].min()) for t in tables.values() if t.height]  # type: ignore[arg-type]
        on = min(firsts) if firsts else 0
    n_epochs = max(1, math.floor(window_s * 1000 / epoch_ms))
    return on, on + n_epochs * epoch_ms * 1_000_000


def in_window(frame: pl.DataFrame, window: tuple[int, int] | None) -> pl.DataFrame:
    if not frame.height or window is None:
        return frame
    return frame.filter((pl.col("ts_ns") >= window[0]) & (pl.col("ts_ns") < window[1]))


def invalidate_ns_per_spte(
    vm: Mapping[str, Any],
    unmap: pl.DataFrame,
    flush: pl.DataFrame,
    vcpu_cpu_share: Sequence[float],
    thp_mapped_kb: int,
) -> float | None:
    """CPU time per zapped SPTE of the VM's zapping notifiers (KVM's zap plus the PTE changes
    of the same range: the cost of a scan per SPTE, ADR 0350), measured in the trace
    (``unmap``/``flush`` already cut to the window): from each ``kvm_unmap_hva_range`` reaching
    guest RAM to the same thread's next host flush (``tlb_flush`` reason 3/4, the end of
    change_prot_numa(); < 100 ms later), times the vCPUs' CPU share (wall -> CPU), over the
    SPTEs those notifiers zapped (guest bytes / the SPTE size: 2 MiB when THP backs the lab
    guest's 2 MiB pages). An upper bound of KVM's part alone. None if not measurable."""
    if not unmap.height or not flush.height or not vcpu_cpu_share:
        return None
    over = guest_overlap_bytes(
        unmap["hva_start"].to_numpy().astype(np.int64),
        unmap["hva_end"].to_numpy().astype(np.int64),
        vm,
    )
    ends = flush.filter(pl.col("reason_code").is_in([3, 4])).sort("ts_ns")
    spte_bytes = LAB_GUEST_PAGE_BYTES if thp_mapped_kb > 0 else PAGE_4K
    wall_ns = 0
    sptes = 0
    for ts, pid, nbytes in zip(
        unmap["ts_ns"].to_list(), unmap["pid"].to_list(), over.tolist(), strict=True
    ):
        if nbytes <= 0:
            continue
        after = ends.filter((pl.col("pid") == pid) & (pl.col("ts_ns") > ts)).head(1)
        if not after.height or int(after["ts_ns"][0]) - ts > BURST_GAP_NS:
            continue
        wall_ns += int(after["ts_ns"][0]) - int(ts)
        sptes += max(1, int(nbytes) // spte_bytes)
    if not sptes:
        return None
    share = sum(vcpu_cpu_share) / len(vcpu_cpu_share)
    return wall_ns * share / sptes


def host_cpus(known: int | None, tables: Mapping[str, pl.DataFrame]) -> int | None:
    """Online CPUs: ``known`` (``[lab].host_cpus``), else the CPUs that appear in the trace."""
    return int(known) if known else cpus_seen(tables)


def with_capture_sched(
    vm: Mapping[str, Any], lab: LabFacts, capture: Mapping[str, Any]
) -> LabFacts:
    """``lab`` with the vCPUs' CPU share and preemption rate taken from ``capture.json``
    ``thread_sched`` (``tlbreplay capture`` of any VMM) where the sidecar's ``[lab]`` does not
    give them: CPU seconds / capture seconds, and involuntary switches / CPU seconds of each
    of the VM's ``vcpu_tids``. Unchanged when a vCPU is missing from the record."""
    sched = capture.get("thread_sched") or {}
    seconds = float(capture.get("seconds") or 0.0)
    tids = [str(int(t)) for t in vm.get("vcpu_tids") or []]
    if not tids or seconds <= 0 or not all(t in sched for t in tids):
        return lab
    share_rate = [share_and_preempt_rate(sched[t], seconds) for t in tids]
    share = lab.vcpu_cpu_share or tuple(share for share, _ in share_rate)
    preempt = lab.vcpu_preempt_per_s or tuple(rate for _, rate in share_rate)
    return replace(lab, vcpu_cpu_share=share, vcpu_preempt_per_s=preempt)


def build_hosting(
    vm: Mapping[str, Any],
    lab: LabFacts,
    capture: Mapping[str, Any],
    tables: Mapping[str, pl.DataFrame],
    window: tuple[int, int] | None,
) -> VmHosting:
    """A captured VM's :class:`VmHosting` (ADR 0320): the VMM's non-RAM VMAs (``capture``
    vmas_before), its thread count (get_nr_threads(): ``capture`` threads), the vCPUs'
    measured CPU share, runtime at the start and preemption rate (``lab``), the host load
    derived from the share, the zap cost (the lab's probe, else measured in ``tables`` within
    ``window``), the host's CPUs, and the VMM's other threads that ran (``capture``
    thread_sched: their runtime and CPU share, ADR 0363)."""
    lab = with_capture_sched(vm, lab, capture)
    tgid = capture.get("pid") or vm.get("vmm_pid")
    areas = areas_from_smaps(
        capture.get("vmas_before") or [], ram_ranges(vm), vcpu_tls_hva(vm, lab, capture)
    )
    threads = capture.get("threads") or {}
    empty = pl.DataFrame()
    scan_ns = invalidate_ns_per_spte(
        vm,
        in_window(tables.get("kvm_unmap_hva_range", empty), window),
        in_window(tables.get("tlb_flush", empty), window),
        lab.vcpu_cpu_share,
        lab.thp_mapped_kb,
    )
    thp = lab.thp_mapped_kb > 0
    return VmHosting(
        vm=str(vm["vm"]),
        vcpu_cpu_share=lab.vcpu_cpu_share,
        vmm_areas=areas,
        nr_threads=len(threads) or None,
        host_runnable=host_runnable(lab.vcpu_cpu_share),
        # KVM's walk alone (the lab's probe), else its upper bound from the trace
        zap_ns_per_spte=scan_ns if lab.kvm_zap_ns_per_spte is None else lab.kvm_zap_ns_per_spte,
        host_cpus=host_cpus(lab.host_cpus, tables),
        vcpu_runtime_start_ms=lab.vcpu_runtime_start_ms,
        preempt_per_s=preempt_per_s(lab.vcpu_preempt_per_s),
        scan_ns_per_spte_4k=None if thp else scan_ns,
        scan_ns_per_spte_2m=scan_ns if thp else None,
        vmm_threads=vmm_threads(vm, lab, capture, int(tgid) if tgid else None),
    )


def vmm_threads(
    vm: Mapping[str, Any], lab: LabFacts, capture: Mapping[str, Any], tgid: int | None
) -> tuple[VmmThread, ...]:
    """The VMM's other threads and their pace (ADR 0363): `lab run`'s in-window record
    (``[lab].thread_tids`` / ``thread_cpu_s`` / ``thread_runtime_start_ms`` over
    ``window_s``), else ``capture.json`` ``thread_sched`` over the capture, leaving out the
    main thread when the capture is a lab's (it spans the lab's statistics reads around the
    window, ``[lab].window_s`` given)."""
    tids = [int(t) for t in vm.get("vcpu_tids") or []]
    if lab.thread_cpu_s and lab.window_s:
        sched = {
            str(t): {"cpu_s": c, "runtime_start_ms": r}
            for t, c, r in zip(
                lab.thread_tids, lab.thread_cpu_s, lab.thread_runtime_start_ms, strict=True
            )
        }
        return vmm_threads_from_sched(sched, lab.window_s, tids, tgid)
    seconds = float(capture.get("seconds") or 0.0)
    sched = capture.get("thread_sched") or {}
    return vmm_threads_from_sched(sched, seconds, tids, tgid, main_known=lab.window_s is None)


def vcpu_tls_hva(
    vm: Mapping[str, Any], lab: LabFacts, capture: Mapping[str, Any]
) -> list[int | None]:
    """An address inside each vCPU thread's stack mapping (its TLS and rseq area; ADR 0350):
    ``[lab].vcpu_pthread_hva`` (pthread_self(), the lab's exact record), else the thread's
    user stack pointer from ``capture.json`` ``thread_sp`` (by the VM's ``vcpu_tids``);
    None where neither is known."""
    if any(lab.vcpu_pthread_hva):
        return [hva or None for hva in lab.vcpu_pthread_hva]
    sp = capture.get("thread_sp") or {}
    tids = vm.get("vcpu_tids") or []
    return [sp.get(str(int(t))) for t in tids]


def read_capture_doc(path: Path | None) -> dict[str, Any]:
    """``NAME.capture.json`` as a dict ({} when there is none)."""
    if path is None or not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read the capture metadata: {exc}") from exc
    return doc if isinstance(doc, dict) else {}


def stem_of(path: Path) -> Path:
    """``dir/NAME.trace.zst`` or ``dir/NAME.toml`` -> ``dir/NAME``."""
    return path.with_name(path.name.split(".")[0])


def dataset_hosting(
    dataset: Path,
    vms: pl.DataFrame,
    sidecar: Path,
    sources: Sequence[str] = (),
    epoch_ms: int = 100,
    *,
    provenance: dict[str, dict[str, str]] | None = None,
    trace_facts: dict[str, dict[str, object]] | None = None,
) -> list[VmHosting]:
    """The hosting rows of a dataset being ingested (``dataset``: its ftrace/ tables) from
    ``sidecar`` and the capture files beside it (``NAME.capture.json``, else beside the first
    source trace). A capture describes one VMM process: with several VMs, none (the facts
    cannot be told apart). Empty when neither the sidecar's ``[lab]`` nor ``capture.json``
    gives a fact and the trace shows no thread of the VM; with no capture facts, what the
    trace shows and the default VMM profile (:func:`pipeline.ingest.trace_facts.
    inferred_hosting`, ADR 0365). ``provenance`` (when given) gets, per VM, where each fact
    came from (:func:`hosting_provenance`), ``trace_facts`` what the trace showed."""
    if vms.height != 1:
        return []
    try:
        doc = tomllib.loads(sidecar.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(sidecar, f"cannot read the sidecar: {exc}") from exc
    lab = LabFacts.from_table(doc.get("lab") or {}, sidecar)
    meta = Path(f"{stem_of(sidecar)}.capture.json")
    if not meta.is_file() and sources and sources[0] != "-":
        meta = Path(f"{stem_of(Path(sources[0]))}.capture.json")
    capture = read_capture_doc(meta)
    given = (
        lab.vcpu_cpu_share,
        lab.vcpu_runtime_start_ms,
        lab.host_cpus,
        lab.vcpu_preempt_per_s,
        lab.vcpu_pthread_hva,
        capture.get("vmas_before"),
        capture.get("threads"),
    )
    tables = {}
    for name in (*TRACE_TABLES, *VCPU_EVENTS):
        path = dataset / "ftrace" / f"{name}.parquet"
        tables[name] = pl.read_parquet(path) if path.is_file() else pl.DataFrame()
    on_ns = (doc.get("lab") or {}).get("numa_balancing_on_ns")
    if not any(given):
        # no capture facts: what the trace shows, with the default VMM profile (ADR 0365)
        inferred, origin, facts = inferred_hosting(
            vms.row(0, named=True), tables, doc.get("lab") or {}, on_ns
        )
        if not facts.vmm_pids:
            return []  # the trace shows no thread of this VM: the replay's profile stands
        if provenance is not None:
            provenance[inferred.vm] = origin
        if trace_facts is not None:
            trace_facts[inferred.vm] = facts.manifest()
        return [inferred]
    window = (
        trace_window(tables, lab.window_s, epoch_ms, None if on_ns is None else int(on_ns))
        if lab.window_s
        else None
    )
    hosting = build_hosting(vms.row(0, named=True), lab, capture, tables, window)
    if not has_facts(hosting):
        return []
    if provenance is not None:
        provenance[hosting.vm] = hosting_provenance(hosting, lab, capture)
    return [hosting]


def hosting_provenance(
    hosting: VmHosting, lab: LabFacts, capture: Mapping[str, Any]
) -> dict[str, str]:
    """Each :class:`VmHosting` fact's origin (issue 11): ``measured (...)`` when the lab or
    ``tlbreplay capture`` recorded it, ``inferred (...)`` when it is derived from the trace or
    from another fact, ``defaulted`` when the engine's default stands (it equals
    ``VmHosting(vm)``'s)."""
    default = VmHosting(hosting.vm)
    sched = "capture.json thread_sched"
    origin = {
        "vcpu_cpu_share": f"measured ({'[lab] schedstat' if lab.vcpu_cpu_share else sched})",
        "vmm_areas": "measured (capture.json smaps)",
        "nr_threads": "measured (capture.json threads)",
        "host_runnable": "inferred (from the vCPUs' CPU share)",
        "zap_ns_per_spte": "measured ([lab] zap probe)"
        if lab.kvm_zap_ns_per_spte is not None
        else "inferred (trace: notifier to the closing host flush)",
        "host_cpus": "measured ([lab].host_cpus)" if lab.host_cpus else "inferred (CPUs seen)",
        "vcpu_runtime_start_ms": "measured ([lab] schedstat)",
        "preempt_per_s": f"measured ({'[lab]' if lab.vcpu_preempt_per_s else sched})",
        "scan_ns_per_spte_4k": "inferred (trace: notifier to the closing host flush)",
        "scan_ns_per_spte_2m": "inferred (trace: notifier to the closing host flush)",
    }
    out = {}
    for name in VmHosting.__dataclass_fields__:
        if name == "vm":
            continue
        same = getattr(hosting, name) == getattr(default, name)
        out[name] = "defaulted" if same else origin.get(name, "measured")
    return out


def write_hosting(
    dataset: Path,
    vms: pl.DataFrame,
    sidecar: Path | None,
    *,
    sources: Sequence[str] = (),
    epoch_ms: int = 100,
    params: Mapping[str, Any] | None = None,
    provenance: dict[str, dict[str, str]] | None = None,
    trace_facts: dict[str, dict[str, object]] | None = None,
) -> int:
    """Write ``dataset/hosting.parquet`` when the sidecar and capture give any hosting fact;
    returns its rows (0: no file). ``provenance`` gets each fact's origin per VM,
    ``trace_facts`` what a trace without capture facts showed (ADR 0365)."""
    from pipeline.schema import write_parquet

    if sidecar is None:
        return 0
    rows = dataset_hosting(
        dataset, vms, sidecar, sources, epoch_ms, provenance=provenance, trace_facts=trace_facts
    )
    if not rows:
        return 0
    write_parquet(hosting_frame(rows), dataset / "hosting.parquet", "hosting", params=params)
    return len(rows)
