"""Read-only SQL over the views of one RESULTS directory: queries, the view list, audits.

The connection holds only views (a saved catalog opened read-only, ADR 0420); a statement is
run only if DuckDB parses it as a ``SELECT`` (``WITH``, ``FROM``-first, ``VALUES``,
``DESCRIBE``, ``SUMMARIZE`` included), so nothing can create, change, copy out or attach
anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.analyze.catalog import (
    MANIFEST_DOC,
    ViewDoc,
    run_view_docs,
    source_view_docs,
)
from pipeline.analyze.views import AUDIT_DIR, POINT_SCHEMA, Run, connect, sql_files
from pipeline.errors import QueryError, TlbReplayError
from pipeline.outdir import pin
from pipeline.snapshot import check_files

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


def run_query(con: duckdb.DuckDBPyConnection, sql: str, views: list[ViewDoc]) -> pa.Table:
    """Run one SELECT on ``con`` and return its rows.

    Raises QueryError for a write statement, several statements, or SQL DuckDB rejects; the
    message ends with the list of views.
    """
    _refuse_non_select(con, sql)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        names = ", ".join(v.name for v in views)
        msg = f"query failed: {_first_line(exc)}; views: {names} (see `--views`)"
        raise QueryError(msg) from None


#: times `query` reads RESULTS again when the version it read was removed meanwhile
VERSION_ATTEMPTS = 3


def query_results(results: Path, sql: str) -> pa.Table:
    """Run one SELECT over the views of ``results`` (:func:`run_query`), reading the version
    ``results`` names at the start (ADR 0003). A swap keeps the previous version, so a query
    fails only when two newer versions were installed while it ran and removed the one it
    read (DuckDB or the file system then fail in any way); it reads the newest instead, up to
    :data:`VERSION_ATTEMPTS` times. An error on a version still current is raised."""
    for attempt in range(1, VERSION_ATTEMPTS + 1):
        read = pin(results)
        try:
            con, run = connect(results)
            try:
                rows = run_query(con, sql, public_views(run))
            finally:
                con.close()
        except (TlbReplayError, OSError, duckdb.Error):
            if pin(results) == read or attempt == VERSION_ATTEMPTS:
                raise
            continue
        # a version being removed can lose files between the checks and the scan (a view
        # then reads fewer or no files): the answer stands only if the files are all there
        if pin(results) == run.results or _intact(run.results, run.manifest.get("files")):
            return rows
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
