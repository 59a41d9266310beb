"""The vectorized polars path: cut the headers of all lines of a block at once with polars
string kernels, extract payload fields with one polars regex per event, and send any line it
is not sure of to the exact grammar (:func:`pipeline.ingest.lines.parse_line`). Also the
block-level types every parser returns (:class:`ChunkResult`, :class:`Part`, :class:`Collected`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.ingest.events import (
    COMMON_COLUMNS,
    OTHER_TABLE,
    SPECS,
    EventSpec,
    Grammar,
    symbol_tables,
)
from pipeline.ingest.lines import MAX_TS_SEC, PAYLOAD_BLANKS, Bad, Comment, cut_reason, parse_line
from pipeline.ingest.outliers import TimeCluster, time_clusters
from pipeline.schema import conform, table_schema


@dataclass
class ChunkResult:
    """What one chunk of lines produced; counts satisfy lines == parsed + comments + quarantined."""

    tables: dict[str, pa.Table]
    quarantine: pa.Table
    lines: int = 0
    parsed: int = 0
    comments: int = 0
    quarantined: int = 0
    lost: dict[int, int] = field(default_factory=dict)
    first_ts_ns: int | None = None
    # the block's event lines by time (pipeline.ingest.outliers, ADR 0011)
    clusters: list[TimeCluster] = field(default_factory=list)


def _lines_series(buf: bytes, starts: np.ndarray) -> pl.Series:
    """Each line of ``buf`` (with its newline, if any) as one string, zero-copy into Arrow."""
    offsets = np.empty(len(starts) + 1, np.int64)
    offsets[:-1] = starts
    offsets[-1] = len(buf)
    arr = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(buf))
    series = pl.from_arrow(arr)
    assert isinstance(series, pl.Series)
    return series.alias("line")


# A metadata line (see _META_RE) never has an event line's structure, except through these
# prefixes; a comm starting with one is left to the exact grammar.
_META_PREFIX = r"^(?:#|version = [0-9]|CPU[0-9]+ data recorded at offset=|[0-9]+ bytes in size)"
_MID_RE = r"^ +(?:[^ ]+ +)?[0-9]{1,12}\.[0-9]{1,9}$"  # between "]" and ": ": flags, timestamp


def _header_fast(lines: pl.Series, *, ascii_only: bool) -> tuple[np.ndarray, pl.DataFrame]:
    """Split the headers of all lines at once with polars string kernels.

    Each piece is cut at the first ``[``, ``]``, ``": "`` and the pid's dash, then checked
    against its part of the grammar; a line whose pieces do not all check out is left to
    :func:`parse_line` (tgid column, odd comms, non-ASCII, metadata). Returns the mask of
    lines handled here and a frame (row, common columns, event, payload) for them.
    """
    line = pl.col("line")
    frame = pl.DataFrame({"line": lines}).with_row_index("row")
    pos = frame.select(
        "row",
        "line",
        line.str.find(": ", literal=True).alias("k1"),
        line.str.find("[", literal=True).alias("lb"),
        (pl.lit(True) if ascii_only else line.str.len_bytes() == line.str.len_chars()).alias(
            "ascii"
        ),
    )
    pos = pos.with_columns(
        (line.str.slice(pl.col("lb")).str.find("]", literal=True) + pl.col("lb")).alias("rb"),
        (line.str.slice(pl.col("k1") + 2).str.find(": ", literal=True) + pl.col("k1") + 2).alias(
            "k2"
        ),
        line.str.slice(0, pl.col("lb")).str.find(r"-[0-9]{1,10} +$").alias("d"),
    )
    pos = pos.filter(
        pl.col("ascii")
        & (pl.col("d") < pl.col("lb"))
        & (pl.col("rb") < pl.col("k1"))
        & (pl.col("k1") + 2 < pl.col("k2"))
    )
    head = line.str.slice(0, pl.col("lb"))
    mid = line.str.slice(pl.col("rb") + 1, pl.col("k1") - pl.col("rb") - 1)
    pieces = pos.select(
        "row",
        head.str.slice(0, pl.col("d")).str.strip_chars_start(" ").alias("comm"),
        head.str.slice(pl.col("d") + 1).str.strip_chars_end(" ").alias("pid"),
        line.str.slice(pl.col("lb") + 1, pl.col("rb") - pl.col("lb") - 1).alias("cpu"),
        mid.alias("mid"),
        line.str.slice(pl.col("k1") + 2, pl.col("k2") - pl.col("k1") - 2).alias("event"),
        line.str.slice(pl.col("k2") + 2).str.strip_chars(PAYLOAD_BLANKS).alias("payload"),
    )
    sure = (
        pl.col("cpu").str.contains(r"^[0-9]{1,6}$")
        & pl.col("mid").str.contains(_MID_RE)
        & pl.col("event").str.contains(r"^[^ :]+$")
        & (pl.col("comm") != "")
        & ~pl.col("comm").str.contains(_META_PREFIX)
    )
    pieces = pieces.filter(sure)
    mid = pl.col("mid")
    pieces = pieces.with_columns(mid.str.find(r" [0-9]+\.[0-9]+$").alias("ts_at"))
    pieces = pieces.with_columns(
        mid.str.slice(0, pl.col("ts_at")).str.strip_chars(" ").alias("flags"),
        mid.str.slice(pl.col("ts_at") + 1).alias("ts"),
    ).with_columns(pl.col("ts").str.find(".", literal=True).alias("dot"))
    ts = pl.col("ts")
    pieces = pieces.with_columns(
        pl.col("pid").str.to_integer(dtype=pl.Int64, strict=False).alias("pid"),
        ts.str.slice(0, pl.col("dot")).str.to_integer(dtype=pl.Int64, strict=False).alias("sec"),
        ts.str.slice(pl.col("dot") + 1)
        .str.pad_end(9, "0")
        .str.to_integer(dtype=pl.Int64, strict=False)
        .alias("frac_ns"),
    ).filter((pl.col("pid") <= (1 << 31) - 1) & (pl.col("sec") <= MAX_TS_SEC))
    out = pieces.select(
        pl.col("row").cast(pl.Int64),
        (pl.col("sec") * 1_000_000_000 + pl.col("frac_ns")).alias("ts_ns"),
        pl.col("cpu").str.to_integer(dtype=pl.Int32, strict=False).alias("cpu"),
        pl.col("pid").cast(pl.Int32),
        pl.when(pl.col("comm") != "<...>").then(pl.col("comm")).alias("comm"),
        pl.when(pl.col("flags") != "").then(pl.col("flags")).alias("flags"),
        "event",
        "payload",
    )
    fast = np.zeros(lines.len(), bool)
    fast[out["row"].to_numpy()] = True
    return fast, out


def _convert_expr(group: str, kind: str, dtype: pl.DataType) -> pl.Expr:
    """The polars twin of :func:`_convert` for a whole column of captured groups."""
    g = pl.col(group)
    if kind == "flag":
        return g.is_not_null()
    if kind == "noflag":
        return g.is_null()
    if kind == "str":
        return g
    if kind == "dec":
        wide = pl.UInt64 if dtype == pl.UInt64 else pl.Int64
        return g.str.to_integer(base=10, dtype=wide, strict=False).cast(dtype, strict=False)
    if kind == "hex":
        return g.str.to_integer(base=16, dtype=pl.UInt64, strict=False).cast(dtype, strict=False)
    unsigned = (
        pl.when(g.str.starts_with("0x"))
        .then(g.str.slice(2).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        .when(g.str.starts_with("-"))
        .then(None)
        .otherwise(g.str.to_integer(base=10, dtype=pl.UInt64, strict=False))
    )
    if kind == "num":
        if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64):
            negative = g.str.to_integer(base=10, dtype=pl.Int64, strict=False)
            return (
                pl.when(g.str.starts_with("-"))
                .then(negative)
                .otherwise(unsigned.cast(pl.Int64, strict=False))
                .cast(dtype, strict=False)
            )
        return unsigned.cast(dtype, strict=False)
    if kind == "wrap":
        return unsigned.reinterpret(signed=True).cast(dtype, strict=False)
    if kind.startswith("enum:"):
        mapping = symbol_tables()[kind[5:]]
        return unsigned.replace_strict(
            list(mapping), list(mapping.values()), default=None, return_dtype=pl.String
        )
    msg = f"unknown field kind {kind}"  # pragma: no cover - a grammar bug
    raise ValueError(msg)


_MATCH = "m_all"


@cache
def _wrapped(pattern: str) -> str:
    """The pattern with one outer group, non-null exactly when the whole pattern matched."""
    assert pattern.startswith("^") and pattern.endswith("$")
    return f"^(?P<{_MATCH}>{pattern[1:-1]})$"


def _apply_grammar(spec: EventSpec, grammar: Grammar, rows: pl.DataFrame) -> pl.DataFrame:
    """Match ``rows.payload`` against one grammar: typed columns and ``_ok`` per row."""
    payload = pl.col("payload")
    if grammar.split is None or grammar.tail is None:
        m = rows.select(
            "row",
            *COMMON_COLUMNS,
            payload.str.extract_groups(_wrapped(grammar.pattern)).alias("_m"),
        ).unnest("_m")
        matched = pl.col(_MATCH).is_not_null()
    else:
        at = payload.str.find(grammar.split, literal=True)
        m = (
            rows.with_columns(at.alias("_at"))
            .select(
                "row",
                *COMMON_COLUMNS,
                payload.str.slice(0, pl.col("_at"))
                .str.extract_groups(_wrapped(grammar.pattern))
                .alias("_h"),
                payload.str.slice(pl.col("_at") + len(grammar.split))
                .str.extract_groups(_wrapped(grammar.tail).replace(_MATCH, "m_tail"))
                .alias("_t"),
            )
            .unnest("_h", "_t")
        )
        matched = pl.col(_MATCH).is_not_null() & pl.col("m_tail").is_not_null()
    dtypes = table_schema(spec.table).polars()
    exprs: list[pl.Expr] = []
    checks: list[pl.Expr] = [matched]
    for col in spec.columns:
        full = grammar.kinds.get(col)
        if full is None:
            exprs.append(pl.lit(None, dtype=dtypes[col]).alias(col))
            continue
        kind, _, group = full.partition("@")
        expr = _convert_expr(group or col, kind, dtypes[col])
        exprs.append(expr.alias(col))
        if kind not in ("flag", "noflag", "str"):
            checks.append(pl.col(group or col).is_null() | expr.is_not_null())
    return m.select("row", *COMMON_COLUMNS, *exprs, pl.all_horizontal(checks).alias("_ok"))


def _parse_events(frame: pl.DataFrame) -> tuple[dict[str, list[pl.DataFrame]], pl.DataFrame]:
    """Per event, run its grammars once over all its rows. Returns typed frames and bad rows."""
    out: dict[str, list[pl.DataFrame]] = {}
    bad: list[pl.DataFrame] = []
    for (event,), rows in frame.group_by("event"):
        name = str(event)
        spec = SPECS.get(name)
        if spec is None:
            out.setdefault(OTHER_TABLE, []).append(
                rows.select("row", *COMMON_COLUMNS, "event", "payload")
            )
            continue
        pending = rows
        for grammar in spec.grammars:
            done = _apply_grammar(spec, grammar, pending)
            good = done["_ok"]
            n_good = good.sum()
            if n_good == done.height:
                out.setdefault(spec.table, []).append(done.drop("_ok"))
                pending = pending.clear()
                break
            if n_good:
                out.setdefault(spec.table, []).append(done.filter(good).drop("_ok"))
            pending = pending.filter(~good)
        if pending.height:
            reason = f"payload does not match the `{name}` format"
            bad.append(pending.select("row", pl.lit(reason).alias("reason")))
    empty = pl.DataFrame(schema={"row": pl.Int64, "reason": pl.String})
    return out, pl.concat(bad) if bad else empty


@dataclass
class Part:
    """Rows of one table from one path: their line indexes and the conformed rows."""

    rows: np.ndarray
    table: pa.Table


def frame_part(frame: pl.DataFrame, table: str) -> Part:
    """A polars frame with a ``row`` column as a conformed :class:`Part`."""
    rows = frame["row"].to_numpy().astype(np.int64)
    return Part(rows, conform(frame.select(table_schema(table).names), table))


@dataclass
class Lines:
    """The lines of a block: ``buf[starts[r]:ends[r]]`` (without the newline)."""

    buf: bytes | memoryview
    starts: np.ndarray
    ends: np.ndarray
    cut_last: bool

    def text(self, r: int) -> str:
        return bytes(self.buf[self.starts[r] : self.ends[r]]).decode("utf-8", "replace")

    def last(self, r: int) -> bool:
        return self.cut_last and r == len(self.starts) - 1


@dataclass
class Collected:
    """What the paths of one block produced, before it becomes a :class:`ChunkResult`."""

    parts: dict[str, list[Part]] = field(default_factory=dict)
    quarantine: list[tuple[int, str]] = field(default_factory=list)
    comments: int = 0
    lost: dict[int, int] = field(default_factory=dict)

    def add(self, table: str, part: Part) -> None:
        self.parts.setdefault(table, []).append(part)

    def exact(self, lines: Lines, rows: list[int]) -> None:
        """Parse ``rows`` with the exact per-line grammar."""
        slow_events: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            res = parse_line(lines.text(r), last=lines.last(r))
            if isinstance(res, Comment):
                self.comments += 1
                if res.lost is not None:
                    self.lost[res.lost[0]] = self.lost.get(res.lost[0], 0) + res.lost[1]
            elif isinstance(res, Bad):
                self.quarantine.append((r, res.reason))
            else:
                row: dict[str, Any] = {"row": r, "ts_ns": res.ts_ns, "cpu": res.cpu}
                row |= {"pid": res.pid, "comm": res.comm, "flags": res.flags, **res.values}
                slow_events.setdefault(res.table, []).append(row)
        for table, found in slow_events.items():
            schema = pl.Schema({"row": pl.Int64(), **table_schema(table).polars()})
            self.add(table, frame_part(pl.DataFrame(found, schema=schema), table))

    def events(self, lines: Lines, frame: pl.DataFrame) -> None:
        """Parse the payloads of ``frame`` (header already cut) with the polars grammars."""
        typed, bad = _parse_events(frame)
        for table, frames in typed.items():
            for f in frames:
                self.add(table, frame_part(f, table))
        for r, reason in bad.iter_rows():
            self.quarantine.append((r, cut_reason(lines.last(r), reason)))

    def result(self, lines: Lines, *, source: str, first_lineno: int) -> ChunkResult:
        tables: dict[str, pa.Table] = {}
        parsed = 0
        first_ts: int | None = None
        all_rows: list[np.ndarray] = []
        all_ts: list[np.ndarray] = []
        for table, parts in sorted(self.parts.items()):
            if len(parts) == 1:
                merged = parts[0].table
            else:
                merged = pa.concat_tables([p.table for p in parts])
                order = np.argsort(np.concatenate([p.rows for p in parts]), kind="stable")
                merged = merged.take(pa.array(order))
            parsed += merged.num_rows
            ts = merged.column("ts_ns")
            if merged.num_rows:
                t = int(np.min(ts.to_numpy()))
                first_ts = t if first_ts is None else min(first_ts, t)
                all_rows.extend(p.rows for p in parts)
                all_ts.extend(p.table.column("ts_ns").to_numpy() for p in parts)
            tables[table] = merged
        rows = sorted(self.quarantine)
        quarantine = pa.table(
            {
                "source": pa.array([source] * len(rows), pa.string()),
                "lineno": pa.array([first_lineno + r for r, _ in rows], pa.int64()),
                "line": pa.array([lines.text(r) for r, _ in rows], pa.string()),
                "reason": pa.array([reason for _, reason in rows], pa.string()),
            }
        )
        return ChunkResult(
            tables=tables,
            quarantine=conform(quarantine, "quarantine"),
            lines=len(lines.starts),
            parsed=parsed,
            comments=self.comments,
            quarantined=len(rows),
            lost=self.lost,
            first_ts_ns=first_ts,
            clusters=time_clusters(
                np.concatenate(all_rows) if all_rows else np.zeros(0, np.int64),
                np.concatenate(all_ts) if all_ts else np.zeros(0, np.int64),
                lines.text,
            ),
        )


def parse_chunk_polars(
    buf: bytes, *, source: str, first_lineno: int = 1, final: bool = False
) -> ChunkResult:
    """:func:`parse_chunk` with polars string kernels (the path without the compiled scanner)."""
    ascii_only = buf.isascii()
    if not ascii_only:
        buf = buf.decode("utf-8", "replace").encode("utf-8")
    a = np.frombuffer(buf, np.uint8)
    nl = np.flatnonzero(a == 10)
    open_end = len(buf) > 0 and buf[-1:] != b"\n"
    starts = np.concatenate(([0], nl + 1)).astype(np.int64)[: len(nl) + int(open_end)]
    ends = np.concatenate((nl, [len(buf)])).astype(np.int64)[: len(starts)]
    lines = Lines(buf, starts, ends, final and open_end)
    got = Collected()
    if len(starts):
        fast, frame = _header_fast(_lines_series(buf, starts), ascii_only=ascii_only)
    else:
        fast, frame = np.zeros(0, bool), pl.DataFrame()
    got.exact(lines, np.flatnonzero(~fast).tolist())
    if frame.height:
        got.events(lines, frame)
    return got.result(lines, source=source, first_lineno=first_lineno)
