"""The result tables of one replay (epochs, vcpu_epochs, scans) built from the engine's
per-VM runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from pipeline.replay.counters import EPOCH_COUNTERS, PAGE_SIZES, VCPU_COUNTERS
from pipeline.replay.engine import VmRun
from pipeline.schema import conform, table_schema


def concat_frames(frames: list[pl.DataFrame], name: str) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.from_arrow(table_schema(name).empty())  # type: ignore[return-value]
    return pl.from_arrow(conform(pl.concat(frames, how="vertical_relaxed"), name))  # type: ignore[return-value]


def epochs_frame(policy: str, run: VmRun, epoch_ms: int, weights: np.ndarray) -> pl.DataFrame:
    arr = run.counters.epochs  # [epoch, page_size, counter]
    cost = arr.astype(np.float64) @ weights
    e_idx, p_idx = np.nonzero(arr.any(axis=2) | (cost > 0))
    data: dict[str, Any] = {
        "policy": [policy] * e_idx.size,
        "vm": [run.cfg.name] * e_idx.size,
        "page_size": [PAGE_SIZES[i] for i in p_idx.tolist()],
        "epoch": e_idx.astype(np.int64),
        "t_ms": e_idx.astype(np.int64) * epoch_ms,
    }
    for k, name in enumerate(EPOCH_COUNTERS):
        data[name] = arr[e_idx, p_idx, k]
    data["cost_us"] = cost[e_idx, p_idx]
    return pl.DataFrame(data)


def vcpu_frame(policy: str, run: VmRun, epoch_ms: int) -> pl.DataFrame:
    arr = run.counters.threads  # [epoch, thread, counter]
    e_idx, t_idx = np.nonzero(arr.any(axis=2))
    vcpus = run.cfg.vcpus
    data: dict[str, Any] = {
        "policy": [policy] * e_idx.size,
        "vm": [run.cfg.name] * e_idx.size,
        "vcpu": np.where(t_idx < vcpus, t_idx, -1).astype(np.int32),
        "epoch": e_idx.astype(np.int64),
        "t_ms": e_idx.astype(np.int64) * epoch_ms,
    }
    for k, name in enumerate(VCPU_COUNTERS):
        data[name] = arr[e_idx, t_idx, k]
    data["scan_period_ms"] = run.counters.scan_period_ms[e_idx, t_idx]
    return pl.DataFrame(data)


def scans_frame(policy: str, run: VmRun) -> pl.DataFrame:
    recs = run.scanner.records
    vcpus = run.cfg.vcpus
    return pl.DataFrame(
        {
            "policy": [policy] * len(recs),
            "vm": [run.cfg.name] * len(recs),
            "epoch": [r.epoch for r in recs],
            "t_ms": [r.t_ms for r in recs],
            "vcpu": [r.thread if r.thread < vcpus else -1 for r in recs],
            "numa_scan_seq": [r.numa_scan_seq for r in recs],
            "scan_period_ms": [r.scan_period_ms for r in recs],
            "gfn_start": [r.gfn_start for r in recs],
            "gfn_end": [r.gfn_end for r in recs],
            "chunks": [r.chunks for r in recs],
            "notifiers": [r.notifiers for r in recs],
            "nr_pte_updates": [r.nr_pte_updates for r in recs],
            "virt_pages": [r.virt_pages for r in recs],
        },
        schema_overrides={"epoch": pl.Int64, "t_ms": pl.Int64, "vcpu": pl.Int32},
    )
