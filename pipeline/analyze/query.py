"""Read-only SQL over the views of one RESULTS directory: queries, the view list, audits.

The connection holds only views (a saved catalog opened read-only, ADR 0420); a statement is
run only if DuckDB parses it as a ``SELECT`` (``WITH``, ``FROM``-first, ``VALUES``,
``DESCRIBE``, ``SUMMARIZE`` included), so nothing can create, change, copy out or attach
anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from pipeline.analyze.catalog import (
    MANIFEST_DOC,
    ViewDoc,
    run_view_docs,
    source_view_docs,
)
from pipeline.analyze.output import Rows
from pipeline.analyze.views import AUDIT_DIR, POINT_SCHEMA, Run, connect, sql_files
from pipeline.errors import QueryError, TlbReplayError
from pipeline.outdir import pin
from pipeline.snapshot import check_files

if TYPE_CHECKING:
    import pyarrow as pa

T = TypeVar("T")

FORMATS = ("table", "csv", "json", "ndjson", "parquet")


def public_views(run: Run) -> list[ViewDoc]:
    """Every view a user may query: source views, the manifest, then the public analysis
    views (``sql/*.sql``, and ``sql/sweep/*.sql`` for a sweep)."""
    return [
        *source_view_docs(run.sources()),
        MANIFEST_DOC,
        *(v for v in run_view_docs(run) if v.is_public),
    ]


def _refuse_non_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        msg = f"bad SQL: {_first_line(exc)}"
        raise QueryError(msg) from None
    if not statements:
        msg = "empty query; give one SELECT statement"
        raise QueryError(msg)
    if len(statements) > 1:
        msg = f"{len(statements)} statements given; give exactly one SELECT statement"
        raise QueryError(msg)
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = str(kind).rsplit(".", 1)[-1]
        msg = f"the views are read-only: `{name}` statements are refused; only SELECT runs"
        raise QueryError(msg)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: The views a failed query's message lists: the list, or a function making it (``query``
#: makes it only when a query fails).
ViewList = Sequence[ViewDoc] | Callable[[], Sequence[ViewDoc]]


def _query_failed(exc: duckdb.Error, views: ViewList) -> QueryError:
    listed = views() if callable(views) else views
    names = ", ".join(v.name for v in listed)
    return QueryError(f"query failed: {_first_line(exc)}; views: {names} (see `--views`)")


def run_query(con: duckdb.DuckDBPyConnection, sql: str, views: ViewList) -> pa.Table:
    """Run one SELECT on ``con`` and return its rows.

    Raises QueryError for a write statement, several statements, or SQL DuckDB rejects; the
    message ends with the list of views.
    """
    _refuse_non_select(con, sql)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise _query_failed(exc, views) from None


#: DuckDB types (``DuckDBPyType.id``) whose Python values from ``fetchall`` are exactly
#: those of the Arrow conversion's ``to_pylist`` (JSON's id is varchar: text either way);
#: LIST and STRUCT of them too.
_PLAIN_TYPES = frozenset(
    {
        "boolean",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "float",
        "double",
        "decimal",
        "varchar",
        "null",
    }
)
#: Number types: a table right-aligns them (as ``output`` does for Arrow numbers).
_NUMERIC_TYPES = _PLAIN_TYPES - {"boolean", "varchar", "null"} | {"hugeint"}
#: Rows per Arrow batch when only the count of the rest is needed.
_COUNT_BATCH_ROWS = 1 << 16


def _is_plain(dtype: Any, *, top: bool) -> bool:
    """True when ``dtype``'s values come out of ``fetchall`` as the Arrow path gives them.
    HUGEINT (a sum of BIGINTs) is Arrow's decimal128(38, 0): converted, top level only."""
    if dtype.id in _PLAIN_TYPES or (top and dtype.id == "hugeint"):
        return True
    if dtype.id in ("list", "struct"):
        return all(_is_plain(child, top=False) for _, child in dtype.children)
    return False


def fetch_rows(
    con: duckdb.DuckDBPyConnection, sql: str, views: ViewList, *, limit: int | None = None
) -> Rows:
    """:func:`run_query` for text output, as :class:`Rows` (values identical to those of the
    Arrow table's ``to_pylist``), the values of the first ``limit`` rows (all when None).

    When every column has a type of :data:`_PLAIN_TYPES` the rows come from DuckDB's own
    Python conversion and pyarrow is never imported: `tlbreplay query` starts in well under
    half a second (issue 13). Any other type (dates, timestamps, maps, ...) goes through
    Arrow as before; so does counting the rows past ``limit``.
    """
    _refuse_non_select(con, sql)
    try:
        cursor = con.execute(sql)
        description = cursor.description or []
        names = tuple(d[0] for d in description)
        types = [d[1] for d in description]
        if not all(_is_plain(t, top=True) for t in types):
            cursor.abort()  # the pending result: the statement runs again through Arrow
            return Rows.from_arrow(con.sql(sql).to_arrow_table(), limit)
        fetched = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
        total = len(fetched)
        if limit is not None and total == limit:
            total += _count_rest(cursor)
    except duckdb.Error as exc:
        raise _query_failed(exc, views) from None
    huge = [i for i, t in enumerate(types) if t.id == "hugeint"]
    if huge:  # Arrow's decimal128(38, 0)
        fetched = [
            tuple(Decimal(v) if i in huge and v is not None else v for i, v in enumerate(row))
            for row in fetched
        ]
    numeric = tuple(t.id in _NUMERIC_TYPES for t in types)
    return Rows(names, numeric, fetched, total)


def _count_rest(cursor: duckdb.DuckDBPyConnection) -> int:
    """The rows left in ``cursor``'s result (the caption of a table cut at ``limit``), counted
    in Arrow batches: no Python value is made for them."""
    with warnings.catch_warnings():
        # DuckDB notes that Arrow output of a DB-API result copies the rows: they are only
        # counted here, batch by batch
        warnings.simplefilter("ignore", UserWarning)
        reader = cursor.to_arrow_reader(_COUNT_BATCH_ROWS)
    return sum(batch.num_rows for batch in reader or ())


#: times `query` reads RESULTS again when the version it read was removed meanwhile
VERSION_ATTEMPTS = 3


def query_results(results: Path, sql: str) -> pa.Table:
    """Run one SELECT over the views of ``results`` (:func:`run_query`) through
    :func:`read_results`: the answer of one whole version."""
    return read_results(results, lambda con, run: run_query(con, sql, public_views(run)))


def read_results(results: Path, read: Callable[[duckdb.DuckDBPyConnection, Run], T]) -> T:
    """``read(con, run)`` over the views of ``results``, reading the version ``results``
    names at the start (ADR 0003). A swap keeps the previous version, so a read fails only
    when two newer versions were installed while it ran and removed the one it read (DuckDB
    or the file system then fail in any way); it reads the newest instead, up to
    :data:`VERSION_ATTEMPTS` times. An error on a version still current is raised."""
    for attempt in range(1, VERSION_ATTEMPTS + 1):
        read_version = pin(results)
        try:
            con, run = connect(results)
            try:
                answer = read(con, run)
            finally:
                con.close()
        except (TlbReplayError, OSError, duckdb.Error):
            if pin(results) == read_version or attempt == VERSION_ATTEMPTS:
                raise
            continue
        # a version being removed can lose files between the checks and the scan (a view
        # then reads fewer or no files): the answer stands only if the files are all there
        if pin(results) == run.results or _intact(run.results, run.manifest.get("files")):
            return answer
    msg = (
        f"{results} was replaced {VERSION_ATTEMPTS} times while it was read (each version "
        "removed before the query ended); run the query again"
    )
    raise QueryError(msg)


def _intact(version: Path, files: Mapping[str, int] | None) -> bool:
    try:
        check_files(version, files)
    except (TlbReplayError, OSError):
        return False
    return True


@dataclass(frozen=True)
class Audit:
    """One audit: its file stem, the invariant it checks, and the rows that break it."""

    name: str
    doc: str
    rows: pa.Table


def audit_files(directory: Path = AUDIT_DIR) -> list[Path]:
    """The audit queries, in name order."""
    return sql_files(directory)


def _audit_doc(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        body = line[2:].strip()
        if body.lower().startswith("returns:"):
            break
        lines.append(body.removeprefix("Audit:").strip())
    return " ".join(lines)


def run_audits(con: duckdb.DuckDBPyConnection, directory: Path = AUDIT_DIR) -> list[Audit]:
    """Run every audit query; an audit passes when it returns no rows.

    Audits run over the point-keyed views (:data:`POINT_SCHEMA`), so a sweep is checked point
    by point; for a plain replay the point columns are dropped from the rows they return.
    """
    sweep = _has_points_view(con)
    out: list[Audit] = []
    con.execute(f"USE {POINT_SCHEMA}")
    try:
        for path in audit_files(directory):
            text = path.read_text()
            try:
                rows = con.sql(text).to_arrow_table()
            except duckdb.Error as exc:
                msg = f"audit {path.name}: {_first_line(exc)}"
                raise QueryError(msg) from None
            if not sweep:
                rows = rows.drop_columns([c for c in rows.column_names if c in AUDIT_POINT_COLUMNS])
            out.append(Audit(path.stem, _audit_doc(text), rows))
    finally:
        con.execute("USE main")
    return out


#: Point columns of audit rows, shown for a sweep only.
AUDIT_POINT_COLUMNS = ("point", "setting", "other_point")


def _has_points_view(con: duckdb.DuckDBPyConnection) -> bool:
    found = con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE schema_name = 'main' AND view_name = 'points'"
    ).fetchall()
    return found == [(1,)]
