"""Hand-made RESULTS and DATASET directories for the analysis tests (rows written inline)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import table_schema, write_manifest, write_parquet, write_partitioned

GIB = 1 << 30


def full_rows(name: str, rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows of table ``name``, every column not given set to 0 (numbers) or its default."""
    schema = table_schema(name)
    filled = []
    for row in rows:
        out: dict[str, Any] = {}
        for col in schema.columns:
            if col.name in row:
                out[col.name] = row[col.name]
            elif pa.types.is_floating(col.type):
                out[col.name] = 0.0
            elif pa.types.is_integer(col.type):
                out[col.name] = 0
            else:
                out[col.name] = None
        unknown = set(row) - set(schema.names)
        assert not unknown, f"unknown columns {unknown} for {name}"
        filled.append(out)
    return pl.from_arrow(pa.Table.from_pylist(filled, schema=schema.arrow()))  # type: ignore[return-value]


def ep(
    policy: str, vm: str, epoch: int = 0, *, page_size: str = "4K", **counters: Any
) -> dict[str, Any]:
    """One row of table epochs; counters not given are 0."""
    return {"policy": policy, "vm": vm, "page_size": page_size, "epoch": epoch, **counters}


def vm_row(
    vm: str,
    *,
    mem_gib: int = 1,
    vcpus: int = 2,
    pinned: str = "none",
    vcpu_tids: list[int] | None = None,
    thp: bool = False,
) -> dict[str, Any]:
    """One row of table vms: a single anon region; ``pinned`` is "none" or "all"."""
    mem = mem_gib * GIB
    pins = [{"gfn_start": 0, "nr_pages": mem // 4096}] if pinned == "all" else []
    region = {
        "name": "ram",
        "gpa_start": 0,
        "hva_start": 0x7F0000000000,
        "size_bytes": mem,
        "backing": "anon",
        "thp": thp,
        "mof_policy": False,
        "placement": "first-touch",
        "pinned": pins,
    }
    return {
        "vm": vm,
        "mem_bytes": mem,
        "vcpus": vcpus,
        "vcpu_nodes": [i % 2 for i in range(vcpus)],
        "vcpu_tids": vcpu_tids if vcpu_tids is not None else list(range(1000, 1000 + vcpus)),
        "host_nodes": 2,
        "host_node_mem_bytes": [64 * GIB, 64 * GIB],
        "regions": [region],
        "numa_balancing": 1,
        "scan_delay_ms": 1000,
        "scan_period_min_ms": 1000,
        "scan_period_max_ms": 60000,
        "scan_size_mb": 256,
        "preempt": "voluntary",
        "mmu": "tdp",
        "kernel": None,
        "inferred": False,
    }


#: Arrow types of ftrace columns as ingest writes them (common.md); others are inferred.
FTRACE_TYPES: dict[str, pa.DataType] = {
    "ts_ns": pa.int64(),
    "cpu": pa.int32(),
    "pid": pa.int32(),
    "comm": pa.string(),
    "flags": pa.string(),
    **dict.fromkeys(
        (
            "hva_start",
            "hva_end",
            "rip",
            "gpa",
            "error_code",
            "gfn",
            "pfn",
            "old_spte",
            "new_spte",
            "spte",
        ),
        pa.uint64(),
    ),
    **dict.fromkeys(("vcpu", "as_id", "level", "reason_code"), pa.int32()),
}


def _ftrace_table(rows: list[dict[str, Any]]) -> pa.Table:
    names = list(rows[0])
    schema = pa.schema([(n, FTRACE_TYPES.get(n, pa.int64())) for n in names])
    for n in names:
        if isinstance(rows[0][n], str):
            schema = schema.set(schema.get_field_index(n), pa.field(n, pa.string()))
    return pa.Table.from_pylist(rows, schema=schema)


def make_dataset(
    root: Path,
    vms: list[dict[str, Any]],
    *,
    ftrace: Mapping[str, list[dict[str, Any]]] | None = None,
    accesses: Iterable[Mapping[str, Any]] = (),
) -> Path:
    """A DATASET directory: manifest, vms.parquet, accesses and optional ftrace tables."""
    root.mkdir(parents=True, exist_ok=True)
    write_parquet(full_rows("vms", vms), root / "vms.parquet", "vms")
    access_rows = full_rows("accesses", accesses)
    if access_rows.height:
        write_parquet(access_rows, root / "accesses" / "part-00000.parquet", "accesses")
    for event, rows in (ftrace or {}).items():
        (root / "ftrace").mkdir(exist_ok=True)
        pq.write_table(_ftrace_table(rows), root / "ftrace" / f"{event}.parquet")
    write_manifest(
        root,
        {"kind": "dataset", "epoch_ms": 100, "sources": ["test"], "tool": "test"},
    )
    return root


def make_results(
    root: Path,
    dataset: Path,
    *,
    policies: list[str],
    epochs: Iterable[Mapping[str, Any]] = (),
    vcpu_epochs: Iterable[Mapping[str, Any]] = (),
    scans: Iterable[Mapping[str, Any]] = (),
    epoch_ms: int = 100,
) -> Path:
    """A RESULTS directory written as replay writes it (hive partitions via write_partitioned)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("epochs", epochs), ("vcpu_epochs", vcpu_epochs), ("scans", scans)):
        frame = full_rows(name, rows)
        if "t_ms" in frame.columns:
            frame = frame.with_columns(
                pl.when(pl.col("t_ms") == 0)
                .then(pl.col("epoch") * epoch_ms)
                .otherwise(pl.col("t_ms"))
                .alias("t_ms")
            )
        write_partitioned(frame, root / name, name)
    write_manifest(
        root,
        {
            "kind": "results",
            "dataset": str(dataset.resolve()),
            "policies": policies,
            "params": {"epoch_ms": epoch_ms},
            "epoch_ms": epoch_ms,
        },
    )
    return root
