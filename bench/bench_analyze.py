"""Analysis benchmarks: opening the views, each view in full, the audits, the report.

The same tables are then laid out as a sweep (``tlbreplay sweep``: one grid point per policy,
``point=N`` partitions hard-linked, a ``points.parquet``) and opened, queried, audited and
reported again: the cost of the point-keyed views (ADR 0410) on the same rows.

Run: `.venv/bin/python -m bench bench_analyze` (or `make bench`). The input is a generated
RESULTS directory of realistic size: 7 policies x 16 VMs x 8 vCPUs x 6000 epochs (10 minutes
at 100 ms), so ~0.67 M `epochs` rows, ~5.4 M `vcpu_epochs` rows, ~67 k `scans` rows. Figures
are wall and CPU seconds (CPU includes DuckDB's threads).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.analyze.query import run_audits
from pipeline.analyze.report import write_report
from pipeline.analyze.views import connect
from pipeline.model.knobs import NUMA_KNOB_DEFAULTS
from pipeline.schema import (
    read_manifest,
    table_schema,
    write_manifest,
    write_parquet,
    write_partitioned,
)

POLICIES = ["linux-6.5", "skip-pinned", "rfc-v2", "linux-6.18", "linux-7.1", "oracle", "x"]
VMS = [f"vm{i:02d}" for i in range(16)]
VCPUS = 8
EPOCHS = 6000
GIB = 1 << 30
VIEWS = ("shootdowns", "shootdowns_by_vm", "savings", "savings_total", "timeline", "by_vcpu")


def cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), cpu_s()
    out = fn()
    return out, time.perf_counter() - w, cpu_s() - c


def _vms() -> pl.DataFrame:
    region = {
        "name": "ram",
        "gpa_start": 0,
        "hva_start": 0x7F0000000000,
        "size_bytes": 16 * GIB,
        "backing": "anon",
        "thp": True,
        "mof_policy": False,
        "placement": "first-touch",
        "pinned": [],
    }
    return pl.DataFrame(
        [
            {
                "vm": vm,
                "mem_bytes": 16 * GIB,
                "vcpus": VCPUS,
                "vcpu_nodes": [i % 2 for i in range(VCPUS)],
                "vcpu_tids": list(range(1000 * k, 1000 * k + VCPUS)),
                "host_nodes": 2,
                "host_node_mem_bytes": [256 * GIB] * 2,
                "regions": [region],
                "numa_balancing": 1,
                **NUMA_KNOB_DEFAULTS,
                "preempt": "full",
                "mmu": "tdp",
                "kernel": None,
                "inferred": False,
            }
            for k, vm in enumerate(VMS, start=1)
        ]
    )


def _complete(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Add any column of the table's schema the generator does not make, as zeros."""
    missing = [c for c in table_schema(name).names if c not in frame.columns]
    return frame.with_columns(pl.lit(0).alias(c) for c in missing)


def _counts(rng: np.random.Generator, n: int, lam: float) -> np.ndarray:
    return rng.poisson(lam, n).astype(np.int64)


def make_results(root: Path, rng: np.random.Generator) -> Path:
    """A DATASET (vms only) and a RESULTS directory of the size in the module doc."""
    ds = root / "ds"
    ds.mkdir()
    write_parquet(_vms(), ds / "vms.parquet", "vms")
    write_manifest(ds, {"kind": "dataset", "epoch_ms": 100, "sources": [], "tool": "bench"})
    res = root / "res"
    res.mkdir()
    n = len(VMS) * EPOCHS
    vm_col = np.repeat(np.array(VMS), EPOCHS)
    epoch = np.tile(np.arange(EPOCHS, dtype=np.int64), len(VMS))
    for policy in POLICIES:
        flushes = _counts(rng, n, 2.0)
        epochs = pl.DataFrame(
            {
                "policy": policy,
                "vm": vm_col,
                "page_size": "2M",
                "epoch": epoch,
                "t_ms": epoch * 100,
                "numa_pte_updates": _counts(rng, n, 5000),
                "numa_huge_pte_updates": _counts(rng, n, 5),
                "numa_hint_faults": _counts(rng, n, 10),
                "numa_hint_faults_local": _counts(rng, n, 4),
                "numa_pages_migrated": _counts(rng, n, 50),
                "numa_migrate_failed": _counts(rng, n, 1),
                "mmu_notifier_invalidations": flushes,
                "notifier_bytes": flushes * (1 << 30),
                "kvm_unmap_gfn_range_calls": flushes,
                "spte_zapped": _counts(rng, n, 100),
                "remote_tlb_flushes": flushes,
                "shootdown_ipis": flushes * VCPUS,
                "host_tlb_flushes": _counts(rng, n, 1),
                "host_tlb_flush_ipis": _counts(rng, n, 2),
                "ept_violations": _counts(rng, n, 100),
                "cost_us": rng.random(n) * 100,
            }
        )
        write_partitioned(_complete(epochs, "epochs"), res / "epochs", "epochs")
        m = n * VCPUS
        vcpu_epochs = pl.DataFrame(
            {
                "policy": policy,
                "vm": np.repeat(vm_col, VCPUS),
                "vcpu": np.tile(np.arange(VCPUS, dtype=np.int32), n),
                "epoch": np.repeat(epoch, VCPUS),
                "t_ms": np.repeat(epoch, VCPUS) * 100,
                "ept_violations": _counts(rng, m, 12),
                "numa_hint_faults": _counts(rng, m, 1),
                "numa_hint_faults_local": _counts(rng, m, 0.5),
                "numa_pages_migrated": _counts(rng, m, 6),
                "numa_migrate_failed": _counts(rng, m, 0.1),
                "shootdown_ipis": _counts(rng, m, 2),
                "task_numa_work_runs": _counts(rng, m, 0.01),
                "scan_period_ms": np.full(m, 1000, dtype=np.int64),
            }
        )
        write_partitioned(_complete(vcpu_epochs, "vcpu_epochs"), res / "vcpu_epochs", "vcpu_epochs")
        s_epoch = epoch[::10]
        k = len(s_epoch)
        scans = pl.DataFrame(
            {
                "policy": policy,
                "vm": vm_col[::10],
                "epoch": s_epoch,
                "t_ms": (s_epoch + 1) * 100,
                "vcpu": np.zeros(k, dtype=np.int32),
                "numa_scan_seq": s_epoch // 40,
                "scan_period_ms": np.full(k, 1000, dtype=np.int64),
                "gfn_start": np.zeros(k, dtype=np.int64),
                "gfn_end": np.full(k, 65536, dtype=np.int64),
                "chunks": _counts(rng, k, 1),
                "notifiers": _counts(rng, k, 1),
                "nr_pte_updates": _counts(rng, k, 60000),
                "virt_pages": np.full(k, 65536, dtype=np.int64),
            }
        )
        write_partitioned(_complete(scans, "scans"), res / "scans", "scans")
    write_manifest(
        res,
        {"kind": "results", "dataset": str(ds), "policies": POLICIES, "epoch_ms": 100},
    )
    return res


def as_sweep(res: Path, out: Path) -> Path:
    """``res`` laid out as a sweep RESULTS: policy i is grid point i of one setting (the
    Parquet files hard-linked under ``point=i/``), with points.parquet and a sweep manifest."""
    for table in ("epochs", "vcpu_epochs", "scans"):
        for i, policy in enumerate(POLICIES):
            src = res / table / f"policy={policy}"
            for path in sorted(src.rglob("*.parquet")):
                target = out / table / f"point={i}" / path.relative_to(res / table)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
    schema = table_schema("points")
    points = pl.DataFrame(
        [
            {
                **dict.fromkeys(schema.names),
                "point": i,
                "setting": 0,
                "workload": 0,
                "replay_seed": i,
                "status": "ok",
                "policy": policy,
            }
            for i, policy in enumerate(POLICIES)
        ],
        schema=schema.polars(),
    )
    write_parquet(points, out / "points.parquet", "points")
    manifest = {**read_manifest(res), "dataset": None, "sweep": {"points": len(POLICIES)}}
    write_manifest(out, manifest)
    return out


def fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Every row of one query (binding and execution)."""
    return con.sql(sql).to_arrow_table()


def bench_views(res: Path, tmp: Path, label: str) -> dict[str, Any]:
    """Connect, every view of :data:`VIEWS` in full, the audits and the report of ``res``."""
    figures: dict[str, Any] = {}
    (con, _), wall, cpu = timed(lambda: connect(res))
    print(f"{label}connect (source + {len(VIEWS)}+ views): {wall:.2f} s wall, {cpu:.2f} s CPU")
    figures[f"{label}connect (s)"] = round(wall, 2)
    try:
        for view in VIEWS:
            sql = f"SELECT * FROM {view}"
            table, wall, cpu = timed(partial(fetch, con, sql))
            print(f"{label}{sql}: {table.num_rows} rows, {wall:.2f} s wall, {cpu:.2f} s CPU")
            figures[f"{label}{view} (s)"] = round(wall, 2)
        audits, wall, cpu = timed(lambda: run_audits(con))
        print(f"{label}audits ({len(audits)}): {wall:.2f} s wall, {cpu:.2f} s CPU")
        figures[f"{label}audits (s)"] = round(wall, 2)
    finally:
        con.close()
    _, wall, cpu = timed(lambda: write_report([res], tmp / f"report-{res.name}"))
    print(f"{label}report: {wall:.2f} s wall, {cpu:.2f} s CPU")
    figures[f"{label}report (s)"] = round(wall, 2)
    return figures


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        res = make_results(Path(tmp), np.random.default_rng(1))
        print(f"RESULTS: {len(POLICIES)} policies x {len(VMS)} VMs x {EPOCHS} epochs")
        figures = bench_views(res, Path(tmp), "")
        sweep = as_sweep(res, Path(tmp) / "sweep")
        print(f"the same rows as a sweep of {len(POLICIES)} points (one per policy)")
        figures |= bench_views(sweep, Path(tmp), "sweep: ")
    return figures


if __name__ == "__main__":
    main()
