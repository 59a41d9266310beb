"""schemas/*.toml -> Arrow; conform(); atomic writes."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SchemaMismatchError
from pipeline.schema import (
    ParquetStream,
    conform,
    enums,
    parse_type,
    table_names,
    table_schema,
    write_parquet,
)


def test_every_schema_loads_with_docs() -> None:
    for name in table_names():
        schema = table_schema(name)
        assert schema.columns, name
        for col in schema.columns:
            assert col.doc, f"{name}.{col.name} has no doc"
        arrow = schema.arrow()
        assert arrow.names == schema.names


def test_parse_type_nested() -> None:
    t = parse_type("list<struct<a: int64, b: list<struct<c: string>>>>")
    assert t == pa.list_(
        pa.struct([("a", pa.int64()), ("b", pa.list_(pa.struct([("c", pa.string())])))])
    )


def test_enums_have_kernel_values() -> None:
    e = enums()
    assert "PROTECTION_VMA" in e["mmu_notifier_event"]["values"]
    assert e["tlb_flush_reason"]["codes"]["1"] == "remote shootdown"
    assert e["page_size"]["bytes"]["2M"] == 2 << 20


def _accesses(n: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "vm": ["a"] * n,
            "epoch": list(range(n)),
            "vcpu": [0] * n,
            "gfn_start": [10 * i for i in range(n)],
            "nr_pages": [1] * n,
            "nr_accesses": [1] * n,
            "write": [False] * n,
        }
    )


def test_conform_casts_and_orders() -> None:
    df = _accesses().select(pl.all().reverse())  # column order reversed
    out = conform(df.select(sorted(df.columns)), "accesses")
    assert out.column_names == table_schema("accesses").names
    assert out.schema.field("vcpu").type == pa.int32()
    assert out.schema.field("gfn_start").metadata[b"unit"] == b"gfn"


def test_conform_rejects_missing_and_extra() -> None:
    with pytest.raises(SchemaMismatchError) as err:
        conform(_accesses().drop("write").with_columns(pl.lit(1).alias("bogus")), "accesses")
    assert err.value.missing == ["write"]
    assert err.value.extra == ["bogus"]


def test_conform_rejects_nulls_and_bad_casts() -> None:
    df = _accesses().with_columns(pl.lit(None, dtype=pl.Int64).alias("epoch"))
    with pytest.raises(SchemaMismatchError, match="nulls"):
        conform(df, "accesses")
    df = _accesses().with_columns(pl.lit("x").alias("epoch"))
    with pytest.raises(SchemaMismatchError, match="epoch"):
        conform(df, "accesses")


def test_write_parquet_atomic_with_metadata(tmp_path: Path) -> None:
    path = write_parquet(_accesses(), tmp_path / "a.parquet", "accesses", params={"seed": 7})
    meta = pq.read_schema(path).metadata
    assert meta[b"tlbreplay.table"] == b"accesses"
    assert b'"seed": 7' in meta[b"tlbreplay.params"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]


def test_parquet_stream_aborts_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    with pytest.raises(RuntimeError), ParquetStream(path, "accesses") as stream:
        stream.write(_accesses())
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with ParquetStream(path, "accesses") as stream:
        stream.write(_accesses(2))
        stream.write(_accesses(3))
    assert pq.read_table(path).num_rows == 5


def test_partitioned_roundtrip(tmp_path: Path) -> None:
    from pipeline.schema import read_partitioned, write_partitioned

    rows = {c.name: [] for c in table_schema("vcpu_epochs").columns}
    for policy in ("linux-6.5", "oracle"):
        for vm in ("a", "b"):
            for name, col in rows.items():
                col.append({"policy": policy, "vm": vm}.get(name, 1))
    files = write_partitioned(pl.DataFrame(rows), tmp_path / "vcpu_epochs", "vcpu_epochs")
    assert next(f.relative_to(tmp_path).as_posix() for f in files) == (
        "vcpu_epochs/policy=linux-6.5/vm=a/part-0.parquet"
    )
    assert "policy" not in pq.read_schema(files[0]).names
    back = read_partitioned(tmp_path / "vcpu_epochs", "vcpu_epochs")
    assert back.height == 4
    assert sorted(set(back["policy"])) == ["linux-6.5", "oracle"]
