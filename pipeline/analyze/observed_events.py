"""What a capture can observe: the events it enabled, and first-touch SPTE installs.

Two rules keep calibrate's observed side honest on any capture (ADR 0510):

* A counter whose events the capture never enabled is *not available* (``n/a`` with the
  reason), never 0 observed. The enabled events are, in order of trust: ``capture.json``
  ``events`` minus ``missing_events`` (``tlbreplay capture``), the sidecar's ``[lab].events``
  (a hand-written sidecar of a plain tracefs capture), else the events that occur in the trace.
* On the shadow MMU a zap is counted by its re-install (``kvmmmu:kvm_mmu_set_spte``), and a
  refault by ``kvmmmu:kvm_mmu_spte_requested``. When the trace also holds the guest populating
  its RAM, the first install of each SPTE is a first touch, not a zap, and the fault that led
  to it is not a refault: only a re-install of an SPTE already mapped is a zap
  (arch/x86/kvm/mmu/mmu.c mmu_set_spte(): a new SPTE over a non-present one;
  direct_pte_prefetch() fills only non-present SPTEs, so a prefetched SPTE is installed once
  per zap as well).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import polars as pl

# the events each observed counter needs, by MMU kind (calibrate_observed.COUNTERS)
NOTIFIER = "kvm:kvm_unmap_hva_range"
SHADOW_ZAP = "kvmmmu:kvm_mmu_set_spte"
SHADOW_REFAULT = "kvmmmu:kvm_mmu_spte_requested"
TDP_ZAP = "kvmmmu:kvm_tdp_mmu_spte_changed"
TDP_REFAULT = "kvm:kvm_page_fault"
TRACE_EVENTS = {
    "kvm_unmap_hva_range": NOTIFIER,
    "kvm_mmu_set_spte": SHADOW_ZAP,
    "kvm_mmu_spte_requested": SHADOW_REFAULT,
    "kvm_tdp_mmu_spte_changed": TDP_ZAP,
    "kvm_page_fault": TDP_REFAULT,
    "sched_skip_vma_numa": "sched:sched_skip_vma_numa",
    "tlb_flush": "tlb:tlb_flush",
}


def enabled_events(
    capture: Mapping[str, Any], lab: Mapping[str, Any], tables: Mapping[str, pl.DataFrame]
) -> tuple[frozenset[str], str]:
    """The ``system:event`` names the capture enabled, and where that list comes from."""
    if capture.get("events"):
        missing = set(capture.get("missing_events") or ())
        return frozenset(str(e) for e in capture["events"] if e not in missing), "capture.json"
    if lab.get("events"):
        return frozenset(str(e) for e in lab["events"]), "[lab].events"
    seen = {
        event for name, event in TRACE_EVENTS.items() if tables.get(name, pl.DataFrame()).height
    }
    return frozenset(seen), "the trace"


def unavailable(
    *,
    mmu: str,
    events: Collection[str],
    source: str,
    has_kvm_stats: bool,
    has_vmstat: bool,
) -> dict[str, str]:
    """Counter -> why it cannot be observed in this capture (absent: observable)."""

    def why(event: str) -> str:
        if source == "the trace":
            return f"`{event}` is not in the trace (no capture.json or [lab].events lists it)"
        return f"`{event}` was not enabled in the capture ({source})"

    out: dict[str, str] = {}
    if not has_kvm_stats:
        out["remote_tlb_flushes"] = (
            "KVM's VM stat remote_tlb_flush_requests was not read (capture.json "
            "lab.kvm_stats_delta); no tracepoint counts kvm_flush_remote_tlbs()"
        )
    if NOTIFIER not in events:
        for name in ("notifier_calls", "notifier_bytes", "scans", "first_scan_ms"):
            out[name] = why(NOTIFIER)
        out["scan_interval_ms"] = why(NOTIFIER)
    zap, refault = (TDP_ZAP, TDP_REFAULT) if mmu == "tdp" else (SHADOW_ZAP, SHADOW_REFAULT)
    if zap not in events:
        out["spte_zapped"] = why(zap)
    if refault not in events:
        out["refaults"] = why(refault)
    if not has_vmstat:
        for name in ("numa_pte_updates", "numa_huge_pte_updates", "numa_hint_faults"):
            out[name] = "no /proc/vmstat samples (NAME.vmstat.json) beside the trace"
    return out


def _keyed(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``key``: the SPTE's first gfn at its level (9 gfn bits per level)."""
    level = pl.col("level").cast(pl.Int64).clip(1, 5)
    pages = pl.lit(1, pl.Int64)
    for lvl in range(2, 6):
        pages = pl.when(level == lvl).then(pl.lit(512 ** (lvl - 1), pl.Int64)).otherwise(pages)
    return frame.with_columns(((pl.col("gfn").cast(pl.Int64) // pages) * 8 + level).alias("key"))


def population_in_trace(installs: pl.DataFrame, first_notifier_ns: int | None) -> bool:
    """Whether the trace holds the guest populating its RAM: some guest SPTE was installed
    before the first notifier that reached guest RAM (a warm guest installs an SPTE only after
    something zapped it, and every zap starts with an invalidate_range_start())."""
    if not installs.height:
        return False
    if first_notifier_ns is None:
        return True
    return bool(installs["ts_ns"].min() < first_notifier_ns)  # type: ignore[operator]


def drop_first_touch(installs: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` (set_spte or spte_requested of guest RAM, any window) without first touches:
    a row counts only when the same SPTE (gfn at its level) was installed strictly before it
    (``installs``: every guest kvm_mmu_set_spte of the whole trace)."""
    if not rows.height:
        return rows
    first = _keyed(installs).group_by("key").agg(pl.col("ts_ns").min().alias("_first_ns"))
    keyed = _keyed(rows).join(first, on="key", how="left")
    kept = keyed.filter(pl.col("_first_ns").is_not_null() & (pl.col("ts_ns") > pl.col("_first_ns")))
    return kept.drop("key", "_first_ns")


def populated_prefix(
    installs: pl.DataFrame,
    ranges_gfn: list[tuple[int, int]],
    t_on_ns: int,
    epoch_ns: int,
    n_epochs: int,
) -> list[list[int]]:
    """Per vCPU range ``[start, end)`` (gfns) and epoch: how many pages from its start the
    guest had touched by the end of the epoch, from each page's first SPTE install in the
    trace (``installs``: guest kvm_mmu_set_spte rows; a level-2 SPTE covers its 512 gfns).

    The lab guest sweeps its range in ascending order, so while it populates its RAM the
    touched pages are a prefix of the range; the count of pages first installed by the
    epoch's end is that prefix's length. This is the guest's workload (the input calibrate
    rebuilds), measured in the trace, not a counter it predicts (ADR 0510).
    """
    if not installs.height:
        return [[0] * n_epochs for _ in ranges_gfn]
    level = installs["level"].cast(pl.Int64).clip(1, 2).to_numpy()
    gfn = installs["gfn"].cast(pl.Int64).to_numpy()
    ts = installs["ts_ns"].cast(pl.Int64).to_numpy()
    big = level == 2
    pages = np.concatenate(
        [gfn[~big], ((gfn[big] - gfn[big] % 512)[:, None] + np.arange(512)).ravel()]
    )
    times = np.concatenate([ts[~big], np.repeat(ts[big], 512)])
    first = pl.DataFrame({"gfn": pages, "ts_ns": times}).group_by("gfn").agg(pl.col("ts_ns").min())
    ends = t_on_ns + epoch_ns * np.arange(1, n_epochs + 1, dtype=np.int64)
    out = []
    for start, end in ranges_gfn:
        done = np.sort(
            first.filter((pl.col("gfn") >= start) & (pl.col("gfn") < end))["ts_ns"].to_numpy()
        )
        out.append([int(n) for n in np.searchsorted(done, ends, side="right")])
    return out
