"""The documentation of every view, read from the comments of ``sql/*.sql`` (and schemas/).

A public view is written as::

    -- What the view holds (one or more comment lines right above the statement).
    CREATE VIEW name (
        column_a,   -- what column_a is [unit]
        column_b    -- what column_b is
    ) AS
    SELECT ...

so its doc is the comment block above ``CREATE VIEW`` and each column's doc is the comment on
its line of the column list. Private views (``_`` prefix) are not listed. Source views take
their docs from schemas/<table>.toml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipeline.analyze.views import (
    POINT_KEYS,
    SQL_DIR,
    SWEEP_SQL_DIR,
    Run,
    Source,
    sql_files,
)

_CREATE = re.compile(r"^CREATE VIEW (\w+)\s*(\(?)\s*(?:AS)?\s*$", re.IGNORECASE)
_COLUMN = re.compile(r"^\s*(\w+)\s*,?\s*--\s*(.*)$")
_END_COLUMNS = re.compile(r"^\)\s*AS\b", re.IGNORECASE)


@dataclass(frozen=True)
class ViewDoc:
    """A view: name, doc, columns as (name, doc), and the file it comes from."""

    name: str
    doc: str
    columns: tuple[tuple[str, str], ...]
    origin: str

    @property
    def is_public(self) -> bool:
        return not self.name.startswith("_")


def parse_sql_docs(text: str, origin: str) -> list[ViewDoc]:
    """Every ``CREATE VIEW`` of one SQL file with its comment docs, in file order."""
    docs: list[ViewDoc] = []
    comment: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        match = _CREATE.match(line)
        if line.startswith("--"):
            comment.append(line[2:].strip())
        elif match:
            name, has_columns = match.group(1), match.group(2) == "("
            columns: list[tuple[str, str]] = []
            if has_columns:
                i += 1
                while i < len(lines) and not _END_COLUMNS.match(lines[i].strip()):
                    col = _COLUMN.match(lines[i])
                    if col:
                        columns.append((col.group(1), col.group(2).strip()))
                    i += 1
            docs.append(ViewDoc(name, " ".join(comment).strip(), tuple(columns), origin))
            comment = []
        elif not line:
            comment = []
        i += 1
    return docs


def sql_view_docs(directory: Path = SQL_DIR) -> list[ViewDoc]:
    """Docs of every view defined in ``directory``/*.sql, in load order."""
    out: list[ViewDoc] = []
    for path in sql_files(directory):
        out.extend(parse_sql_docs(path.read_text(), path.name))
    return out


def run_view_docs(run: Run) -> list[ViewDoc]:
    """Docs of the analysis views of ``run`` as its ``main`` views show them: for a sweep
    with the ``sweep_*`` views, for a plain replay without the point keys (ADR 0410)."""
    docs = sql_view_docs()
    if run.sweep:
        return [*docs, *sql_view_docs(SWEEP_SQL_DIR)]
    return [
        ViewDoc(d.name, d.doc, tuple(c for c in d.columns if c[0] not in POINT_KEYS), d.origin)
        for d in docs
    ]


def source_view_docs(sources: list[Source]) -> list[ViewDoc]:
    """Docs of the source views (schemas/ for tables, a generic line for ftrace events)."""
    return [
        ViewDoc(s.name, s.doc, tuple(s.column_docs.items()), "source")
        for s in sources
        if s.files is not None or not s.name.startswith("ftrace_")
    ]


MANIFEST_DOC = ViewDoc(
    "results_manifest",
    "the RESULTS manifest.json as one JSON value (policies, params, epoch_ms, dataset)",
    (("manifest", "the manifest; e.g. manifest ->> 'epoch_ms'"),),
    "source",
)


@dataclass(frozen=True)
class ColumnInfo:
    """A column as DuckDB types it, with its doc (empty when undocumented)."""

    name: str
    type: str
    doc: str


def describe(con: duckdb.DuckDBPyConnection, view: ViewDoc) -> list[ColumnInfo]:
    """The view's columns as bound on ``con``, with the documented text for each."""
    docs = dict(view.columns)
    rel = con.sql(f"SELECT * FROM {view.name} LIMIT 0")
    return [
        ColumnInfo(name, str(dtype), docs.get(name, ""))
        for name, dtype in zip(rel.columns, rel.types, strict=True)
    ]
