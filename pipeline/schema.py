"""schemas/*.toml -> Arrow and polars schemas; conform(); atomic Parquet and manifest writes.

Every table's columns, types, units and docs live once in ``schemas/<table>.toml``. Every
Parquet file the project writes goes through :func:`conform` (cast to the declared types,
reject missing or extra columns) and is written atomically (temporary file, fsync, rename).

Type grammar of a column's ``type``: an Arrow primitive name (``int8`` .. ``uint64``,
``float32``, ``float64``, ``bool``, ``string``), ``list<T>``, or ``struct<name: T, ...>``.

pyarrow and polars are imported where a function needs them, not with the module: the
declarations (names, docs, units) serve ``tlbreplay query``, which must start in well under
half a second without either (issue 13; tests/test_cli_imports.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.errors import SchemaMismatchError, TlbReplayError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

#: schemas/ of a checkout, or the copy inside the package of an installed wheel
_PACKAGE_SCHEMAS = Path(__file__).resolve().parent / "schemas"
SCHEMA_DIR = (
    _PACKAGE_SCHEMAS
    if _PACKAGE_SCHEMAS.is_dir()
    else Path(__file__).resolve().parent.parent / "schemas"
)


@cache
def _primitives() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "uint8": pa.uint8(),
        "uint16": pa.uint16(),
        "uint32": pa.uint32(),
        "uint64": pa.uint64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "string": pa.string(),
    }


@cache
def parse_type(text: str) -> pa.DataType:
    """Parse the schema type grammar (see module doc) into an Arrow type."""
    import pyarrow as pa

    text = text.strip()
    if text in _primitives():
        return _primitives()[text]
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(parse_type(text[5:-1]))
    if text.startswith("struct<") and text.endswith(">"):
        fields = []
        for part in _split_top_level(text[7:-1]):
            name, _, sub = part.partition(":")
            fields.append(pa.field(name.strip(), parse_type(sub)))
        return pa.struct(fields)
    msg = f"unknown column type `{text}` in schemas/"
    raise TlbReplayError(msg)


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


@dataclass(frozen=True)
class Column:
    """One column: name, type (as written in schemas/, and as an Arrow type), unit (empty when
    dimensionless) and a one-line doc."""

    name: str
    type_text: str
    unit: str
    doc: str
    nullable: bool

    @property
    def type(self) -> pa.DataType:
        """The Arrow type (parsed on first use: declarations alone need no pyarrow)."""
        return parse_type(self.type_text)


@dataclass(frozen=True)
class TableSchema:
    """A table as declared in schemas/<name>.toml."""

    name: str
    version: int
    grain: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow(self) -> pa.Schema:
        """The Arrow schema, with unit and doc in each field's metadata."""
        import pyarrow as pa

        fields = [
            pa.field(
                c.name,
                c.type,
                nullable=c.nullable,
                metadata={"unit": c.unit, "doc": c.doc},
            )
            for c in self.columns
        ]
        return pa.schema(
            fields,
            metadata={"table": self.name, "schema_version": str(self.version)},
        )

    def polars(self) -> pl.Schema:
        """The polars schema with the same dtypes."""
        import polars as pl

        frame = pl.from_arrow(self.arrow().empty_table())
        assert isinstance(frame, pl.DataFrame)
        return frame.schema

    def empty(self) -> pa.Table:
        return self.arrow().empty_table()


@cache
def table_schema(name: str) -> TableSchema:
    """Load schemas/<name>.toml (cached)."""
    path = SCHEMA_DIR / f"{name}.toml"
    if not path.is_file():
        msg = f"no schema `{name}` in {SCHEMA_DIR}"
        raise TlbReplayError(msg)
    import tomllib

    raw = tomllib.loads(path.read_text())
    head = raw["table"]
    columns = tuple(
        Column(
            name=c["name"],
            type_text=c["type"],
            unit=c.get("unit", ""),
            doc=c["doc"],
            nullable=bool(c.get("nullable", False)),
        )
        for c in raw["columns"]
    )
    return TableSchema(
        name=head["name"],
        version=int(head["version"]),
        grain=head["grain"],
        doc=head["doc"],
        columns=columns,
    )


def table_names() -> list[str]:
    """Every declared table (schemas/*.toml except enums.toml, and schemas/ftrace/*.toml)."""
    names = [p.stem for p in SCHEMA_DIR.glob("*.toml") if p.stem != "enums"]
    names += [f"ftrace/{p.stem}" for p in (SCHEMA_DIR / "ftrace").glob("*.toml")]
    return sorted(names)


@cache
def enums() -> dict[str, Any]:
    """schemas/enums.toml: the kernel enums the project names once."""
    import tomllib

    return tomllib.loads((SCHEMA_DIR / "enums.toml").read_text())


def conform(data: pa.Table | pl.DataFrame, name: str) -> pa.Table:
    """Cast ``data`` to table ``name``'s schema, in its column order.

    Raises SchemaMismatchError on missing or extra columns, on a cast that fails, and on a
    null in a non-nullable column.
    """
    import polars as pl
    import pyarrow as pa

    schema = table_schema(name)
    table = data.to_arrow() if isinstance(data, pl.DataFrame) else data
    have = list(table.column_names)
    missing = [n for n in schema.names if n not in have]
    extra = [n for n in have if n not in schema.names]
    if missing or extra:
        raise SchemaMismatchError(name, missing, extra)
    arrays = []
    for col in schema.columns:
        arr = table.column(col.name)
        try:
            arr = arr.cast(col.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaMismatchError(name, detail=f"column `{col.name}`: {exc}") from None
        if not col.nullable and arr.null_count:
            raise SchemaMismatchError(
                name, detail=f"column `{col.name}` has {arr.null_count} nulls"
            )
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema.arrow())


def _kv_metadata(name: str, params: Mapping[str, Any] | None) -> dict[bytes, bytes]:
    schema = table_schema(name)
    meta = {
        "tlbreplay.table": name,
        "tlbreplay.schema_version": str(schema.version),
        "tlbreplay.version": __version__,
        "tlbreplay.params": json.dumps(params or {}, sort_keys=True, default=str),
    }
    return {k.encode(): v.encode() for k, v in meta.items()}


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_parquet(
    data: pa.Table | pl.DataFrame,
    path: Path,
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    row_group_size: int = 1 << 20,
) -> Path:
    """Conform ``data`` to table ``name`` and write it to ``path`` atomically (zstd)."""
    import pyarrow.parquet as pq

    table = conform(data, name)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), **_kv_metadata(name, params)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        _fsync_and_rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth Parquet dictionary encoding: the top-level strings (ADR 0130).

    Event tables hold millions of distinct int64 values (timestamps, gfns, SPTEs) where a
    dictionary is built, overflows and is thrown away per page: 4x the CPU of plain zstd for
    a larger file. Strings (comm, flags, reason) repeat and pay for their dictionary.
    """
    import pyarrow as pa

    return [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def statistics_columns(schema: pa.Schema) -> list[str]:
    """Columns whose Parquet min/max statistics are written: all but the top-level strings.

    A stream writes one row group per parsed block, so statistics are computed for every
    column of every row group; for comm, flags, reason and the like, min/max of text prunes
    nothing a query asks and took ~1/6 of the writer's CPU (issue 13). Numbers (timestamps
    above all) keep theirs.
    """
    text = set(dictionary_columns(schema))
    return [f.name for f in schema if f.name not in text]


def delta_columns(schema: pa.Schema) -> dict[str, str]:
    """Top-level integer columns, written DELTA_BINARY_PACKED (ADR 0132), then zstd.

    Event tables hold timestamps in time order, gfns, pids and SPTE pointers that sit close
    to their neighbours: on the 1 GB real input delta encoding took the two large tables
    from 45.9 to 19.6 MB and the writer's CPU by about a third, and reading them back got
    faster too. Same values, a standard Parquet encoding every reader here decodes.
    """
    import pyarrow as pa

    return {f.name: "DELTA_BINARY_PACKED" for f in schema if pa.types.is_integer(f.type)}


class ParquetStream:
    """Append record batches of table ``name`` to one Parquet file, atomically on close.

    Use as a context manager; on an exception the temporary file is removed and nothing is
    left at ``path``. Rows are conformed batch by batch, so memory stays constant.
    ``delta=True`` writes the integer columns DELTA_BINARY_PACKED (:func:`delta_columns`;
    ingest's event tables).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        delta: bool = False,
    ) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.name = name
        self.rows = 0
        schema = table_schema(name).arrow()
        self._schema = schema.with_metadata(
            {**(schema.metadata or {}), **_kv_metadata(name, params)}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self._tmp,
            self._schema,
            compression="zstd",
            use_dictionary=dictionary_columns(schema),
            write_statistics=statistics_columns(schema),
            column_encoding=(delta_columns(schema) or None) if delta else None,
        )

    def write(self, data: pa.Table | pl.DataFrame) -> None:
        if self._writer is None:
            msg = f"parquet stream for `{self.name}` is closed"
            raise RuntimeError(msg)
        table = conform(data, self.name)
        if table.num_rows:
            self._writer.write_table(table.replace_schema_metadata(self._schema.metadata))
            self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            _fsync_and_rename(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_parquet(path: Path, name: str) -> pl.DataFrame:
    """Read one table file and check it against its schema."""
    import polars as pl
    import pyarrow.parquet as pq

    return pl.from_arrow(conform(pq.read_table(path), name))  # type: ignore[return-value]


MANIFEST = "manifest.json"


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` atomically, keys sorted, so equal runs give equal bytes."""
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    _fsync_and_rename(tmp, path)
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    from pipeline.errors import DatasetError

    path = directory / MANIFEST
    if not Path(directory).exists():
        raise DatasetError(directory, "no such directory; check the path")
    if not path.is_file():
        raise DatasetError(directory, f"no `{MANIFEST}`: not a tlbreplay output directory")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"corrupt manifest ({exc.msg} at line {exc.lineno})") from None
    return data


PARTITION_KEYS = ("policy", "vm")


def write_partitioned(
    data: pa.Table | pl.DataFrame,
    root: Path,
    name: str,
    *,
    partition_by: tuple[str, ...] = PARTITION_KEYS,
    params: Mapping[str, Any] | None = None,
    part: str = "part-0",
) -> list[Path]:
    """Write table ``name`` under ``root/<k>=<v>/.../<part>.parquet`` (hive layout).

    The rows are conformed to the full schema first; the partition columns then live only
    in the directory names (as Spark, Trino and DuckDB's ``hive_partitioning`` expect).
    Every file is written atomically. Returns the files written, in sorted order.
    """
    import polars as pl
    import pyarrow.parquet as pq

    table = conform(data, name)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    written: list[Path] = []
    if frame.height == 0:
        return written
    for keys, group in sorted(frame.group_by(list(partition_by)), key=lambda kv: kv[0]):
        sub = root
        for col, value in zip(partition_by, keys, strict=True):
            sub = sub / f"{col}={value}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{part}.parquet"
        body = conform(group, name).drop_columns(list(partition_by))
        meta = {**(body.schema.metadata or {}), **_kv_metadata(name, params)}
        body = body.replace_schema_metadata(meta)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            pq.write_table(body, tmp, compression="zstd")
            _fsync_and_rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def read_partitioned(root: Path, name: str) -> pl.DataFrame:
    """Read a hive-partitioned table written by :func:`write_partitioned`, conformed."""
    import polars as pl

    files = sorted(root.rglob("*.parquet"))
    if not files:
        return pl.from_arrow(table_schema(name).empty())  # type: ignore[return-value]
    frame = pl.scan_parquet(
        [str(f) for f in files], hive_partitioning=True, hive_schema=None
    ).collect()
    return pl.from_arrow(conform(frame.select(table_schema(name).names), name))  # type: ignore[return-value]
