"""A DuckDB connection over one RESULTS directory, with the views of ``sql/*.sql`` loaded.

Two layers, Perfetto style:

1. *Source views*, made here because they name files: one per table of the run, read as it
   lies on disk (``epochs``, ``vcpu_epochs``, ``scans`` from the RESULTS' hive partitions;
   ``vms``, ``accesses``, ``quarantine`` and ``ftrace_<event>`` from the DATASET the
   manifest names; ``results_manifest``). A
   table with no file yet is an empty view with the schema's columns, so every view binds on
   every run (a synthetic dataset has no ftrace tables: ``observed`` is then empty).
2. *Analysis views*, ``sql/*.sql`` loaded in file-name order: ``CREATE VIEW`` only, documented
   in comments (see :mod:`pipeline.analyze.catalog`).

Every analysis view is keyed by the grid ``point`` (ADR 0410). The SQL files are loaded into
the schema :data:`POINT_SCHEMA`, where ``epochs``, ``vcpu_epochs`` and ``scans`` always have a
``point`` column (the hive partition of a ``tlbreplay sweep`` RESULTS; 0 for a plain replay)
and ``_points`` lists the points (``points.parquet``, or the single point 0). The views users
query live in ``main``: for a sweep they are the keyed views as they are (``point`` first);
for a plain replay they are the same views without ``point`` (and the private ``setting``),
so its rows are exactly those of a per-run definition. Private views (``_`` prefix) stay in
:data:`POINT_SCHEMA` only. A sweep also gets the ``points`` view and the ``sweep_*`` views of
``sql/sweep/``.

Nothing here runs an analysis query; callers do (``query.py``, ``report.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from pipeline.analyze.lockdown import LOCKED_CONFIG, lock_down
from pipeline.errors import DatasetError, QueryError
from pipeline.outdir import pin
from pipeline.schema import MANIFEST, SCHEMA_DIR, read_manifest, table_schema
from pipeline.snapshot import check_dataset, check_files

if TYPE_CHECKING:
    import pyarrow as pa

SQL_DIR = Path(__file__).resolve().parent / "sql"
AUDIT_DIR = SQL_DIR / "audits"
SWEEP_SQL_DIR = SQL_DIR / "sweep"
#: The grid points of a sweep RESULTS (schemas/points.toml), beside the results tables.
POINTS = "points.parquet"
#: DuckDB schema holding the point-keyed analysis views (ADR 0410); audits query it.
POINT_SCHEMA = "per_point"
POINT_DOC = "sweep grid point: the `point=N` partition, joins points.point"
#: Key columns of the keyed views that a plain replay's views do not show.
POINT_KEYS = ("point", "setting")

#: Results tables written by replay (hive-partitioned by policy and vm).
RESULTS_TABLES = ("epochs", "vcpu_epochs", "scans")
#: Dataset tables with a schema in schemas/, and where they lie in the DATASET.
DATASET_TABLES = {
    "vms": "vms.parquet",
    "accesses": "accesses/*.parquet",
    "quarantine": "quarantine.parquet",
}
#: Hive partition columns: only in directory names, always read as text.
PARTITION_COLUMNS = ("policy", "vm")
#: A fleet's host partition (ADR 0611): first in its RESULTS and DATASET tables.
HOST = "host"
HOST_DOC = "host of the fleet (the `host=H` partition: the capture's name)"
FLEET_HOSTS = "host=*/"

#: Directory of the ftrace tables' schemas (schemas/ftrace/<event>.toml, table
#: ``ftrace/<event>``); every one gets a view ``ftrace_<event>``, empty when the dataset has no
#: such file, so the views over them bind on synthetic datasets too.
FTRACE_SCHEMA_DIR = SCHEMA_DIR / "ftrace"


def ftrace_events() -> list[str]:
    """Events with a schema in schemas/ftrace/ (``_other`` included)."""
    return sorted(p.stem for p in FTRACE_SCHEMA_DIR.glob("*.toml"))


def ftrace_view(event: str) -> str:
    """The view name of an ftrace event table (``_other`` -> ``ftrace_other``)."""
    return "ftrace_other" if event == "_other" else f"ftrace_{event}"


@dataclass(frozen=True)
class Source:
    """One source view: its name, where it reads from (None: empty) and a one-line doc."""

    name: str
    table: str
    files: str | None
    doc: str
    column_docs: dict[str, str] = field(default_factory=dict)


def sql_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


_DUCK_PRIMITIVES = {
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
}


def _duck_type(arrow: pa.DataType) -> str:
    """The DuckDB type of an Arrow type of the schema grammar, for empty placeholder views."""
    import pyarrow as pa

    if pa.types.is_list(arrow):
        return f"{_duck_type(arrow.value_type)}[]"
    if pa.types.is_struct(arrow):
        fields = ", ".join(f"{f.name} {_duck_type(f.type)}" for f in arrow)
        return f"STRUCT({fields})"
    return _DUCK_PRIMITIVES[str(arrow)]


def _empty_select(columns: dict[str, str]) -> str:
    cols = ", ".join(f"CAST(NULL AS {t}) AS {n}" for n, t in columns.items())
    return f"SELECT {cols} WHERE false"


def _schema_columns(name: str) -> dict[str, str]:
    return {c.name: _duck_type(c.type) for c in table_schema(name).columns}


def _has_parquet(root: Path) -> bool:
    return any(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def is_sweep(results: Path) -> bool:
    """True when ``results`` was written by ``tlbreplay sweep`` (it has ``points.parquet``)."""
    return (Path(results) / POINTS).is_file()


@dataclass
class Run:
    """A RESULTS directory and the DATASET its manifest names. ``results`` and ``dataset``
    are the versions read (pinned when opened, ADR 0003); ``path`` is RESULTS as given."""

    results: Path
    manifest: dict[str, Any]
    dataset: Path | None
    dataset_manifest: dict[str, Any] | None
    path: Path = Path()

    @property
    def sweep(self) -> bool:
        """True for a ``tlbreplay sweep`` output: its tables carry a ``point`` partition."""
        return is_sweep(self.results)

    @property
    def fleet(self) -> bool:
        """True for a fleet RESULTS: its tables (and its DATASET's) carry a ``host``
        partition (ADR 0611)."""
        return self.manifest.get("layout") == "fleet"

    @classmethod
    def open(cls, results: Path) -> Run:
        """Check ``results`` is a replay output, whole, and find its dataset (which may be
        gone) unchanged since the replay (ADR 0005)."""
        given = Path(os.path.abspath(results))
        results = pin(given)
        if not results.is_dir():
            raise DatasetError(results, "no such RESULTS directory; run `tlbreplay replay` first")
        manifest = read_manifest(results)
        if manifest.get("kind") != "results":
            kind = manifest.get("kind", "unknown")
            msg = (
                f"`{MANIFEST}` says kind `{kind}`, not `results`; pass a `tlbreplay replay` output"
            )
            raise DatasetError(results, msg)
        dataset: Path | None = None
        dataset_manifest: dict[str, Any] | None = None
        named = manifest.get("dataset")
        if named:
            candidate = Path(str(named))
            if not candidate.is_absolute():
                candidate = (results / candidate).resolve()
            if (candidate / MANIFEST).is_file():
                dataset = pin(candidate)
                check_dataset(
                    dataset, manifest.get("dataset_manifest_sha256"), during="since the replay"
                )
                dataset_manifest = read_manifest(dataset)
        check_files(results, manifest.get("files"))
        return cls(results, manifest, dataset, dataset_manifest, given)

    def sources(self) -> list[Source]:
        """Every source view of this run, with its files (None when there are none)."""
        out: list[Source] = []
        if self.sweep:
            out.append(_schema_source("points", str(self.results / POINTS), hive=False))
        for name in RESULTS_TABLES:
            root = self.results / name
            files = str(root / "**" / "*.parquet") if root.is_dir() and _has_parquet(root) else None
            source = _schema_source(name, files, hive=True)
            if self.sweep:
                docs = {"point": POINT_DOC, **source.column_docs}
                source = Source(source.name, source.table, files, source.doc, docs)
            out.append(source)
        hosts = FLEET_HOSTS if self.fleet else ""
        for name, where in DATASET_TABLES.items():
            found = sorted(self.dataset.glob(hosts + where)) if self.dataset else []
            files = str(self.dataset / (hosts + where)) if self.dataset and found else None
            out.append(_schema_source(name, files, hive=False))
        for event in ftrace_events():
            where = f"{hosts}ftrace/{event}.parquet"
            found = sorted(self.dataset.glob(where)) if self.dataset else []
            files = str(self.dataset / where) if self.dataset and found else None
            out.append(_schema_source(f"ftrace/{event}", files, hive=False))
        if self.fleet:
            out = [_with_host(s) for s in out]
        return out


def _with_host(source: Source) -> Source:
    docs = {"host": HOST_DOC, **source.column_docs}
    return Source(source.name, source.table, source.files, source.doc, docs)


def _schema_source(table: str, files: str | None, *, hive: bool) -> Source:
    schema = table_schema(table)
    docs = {c.name: c.doc + (f" [{c.unit}]" if c.unit else "") for c in schema.columns}
    where = "RESULTS" if hive or table == "points" else "DATASET"
    name = ftrace_view(table.removeprefix("ftrace/")) if table.startswith("ftrace/") else table
    return Source(name, table, files, f"{schema.doc} ({where}: {schema.grain})", docs)


def _source_sql(source: Source, *, hive: bool, sweep: bool = False, fleet: bool = False) -> str:
    """The ``CREATE VIEW`` of a source (see :func:`_source_select`)."""
    select = _source_select(source, hive=hive, sweep=sweep, fleet=fleet)
    return f"CREATE VIEW {source.name} AS {select}"


def _source_select(source: Source, *, hive: bool, sweep: bool = False, fleet: bool = False) -> str:
    """The ``SELECT`` a source view stands for. A sweep's results tables have the ``point``
    hive partition first (an integer, as in ``points.point``), also when empty; a fleet's
    tables, results and dataset alike, have ``host`` first (text)."""
    points = ("point",) if hive and sweep else ()
    hosts = (HOST,) if fleet else ()
    if source.files is None:
        columns = _schema_columns(source.table)
        columns = {**dict.fromkeys(hosts, "VARCHAR"), **columns}
        if points:
            columns = {"point": "BIGINT", **columns}
        return _empty_select(columns)
    files = sql_literal(source.files)
    if hive or fleet:
        text = (*hosts, *PARTITION_COLUMNS) if hive else hosts
        keys = ", ".join(
            [f"CAST({c} AS BIGINT) AS {c}" for c in points]
            + [f"CAST({c} AS VARCHAR) AS {c}" for c in text]
        )
        types = ", ".join(
            [f"{sql_literal(c)}: 'BIGINT'" for c in points]
            + [f"{sql_literal(c)}: 'VARCHAR'" for c in text]
        )
        plain = ", ".join((*points, *text))
        return (
            f"SELECT {keys}, * EXCLUDE ({plain}) FROM read_parquet("
            f"{files}, hive_partitioning = true, hive_types = {{{types}}})"
        )
    return f"SELECT * FROM read_parquet({files})"


def _point_sources(run: Run) -> list[str]:
    """The keyed sources of :data:`POINT_SCHEMA`: results tables with ``point`` and the
    points replayed (``_points``: point, setting, policy or NULL for every policy, status,
    epoch_ms or NULL for the manifest's)."""
    qualified = [f"CREATE SCHEMA {POINT_SCHEMA}"]
    # a fleet's VMs are told apart by host: the keyed views see vm = 'host/vm' (ADR 0611)
    star = f"* REPLACE ({HOST} || '/' || vm AS vm)" if run.fleet else "*"
    for name in RESULTS_TABLES:
        body = (
            f"SELECT {star} FROM main.{name}"
            if run.sweep
            else f"SELECT CAST(0 AS BIGINT) AS point, {star} FROM main.{name}"
        )
        qualified.append(f"CREATE VIEW {POINT_SCHEMA}.{name} AS {body}")
    if run.fleet:
        for name in ("vms", "accesses"):
            qualified.append(f"CREATE VIEW {POINT_SCHEMA}.{name} AS SELECT {star} FROM main.{name}")
        # the observed side is per capture (calibrate one host's DATASET): empty over a fleet
        for event in ftrace_events():
            view = ftrace_view(event)
            qualified.append(
                f"CREATE VIEW {POINT_SCHEMA}.{view} AS SELECT * FROM main.{view} WHERE false"
            )
    points = (
        "SELECT CAST(point AS BIGINT) AS point, CAST(setting AS BIGINT) AS setting, policy, "
        "status, CAST(epoch_ms AS BIGINT) AS epoch_ms FROM main.points"
        if run.sweep
        else "SELECT CAST(0 AS BIGINT) AS point, CAST(0 AS BIGINT) AS setting, "
        "CAST(NULL AS VARCHAR) AS policy, 'ok' AS status, CAST(NULL AS BIGINT) AS epoch_ms"
    )
    qualified.append(f"CREATE VIEW {POINT_SCHEMA}._points AS {points}")
    return qualified


def sql_files(directory: Path = SQL_DIR) -> list[Path]:
    """The ``.sql`` files of ``directory`` in load order (file name)."""
    return sorted(directory.glob("*.sql"))


def connect(results: Path) -> tuple[duckdb.DuckDBPyConnection, Run]:
    """A DuckDB connection with the source views and every ``sql/*.sql`` view
    (and, for a sweep, ``sql/sweep/*.sql``), point-keyed in :data:`POINT_SCHEMA` and as
    users see them in ``main`` (see the module doc). The views are built once per state of
    the RESULTS and opened read-only from a saved catalog after that (ADR 0420).

    Raises DatasetError if ``results`` is not a RESULTS directory.
    """
    from pipeline.analyze.persisted import open_catalog

    run = Run.open(results)
    con = open_catalog(run.results, run.dataset, lambda con: build_views(con, run))
    try:
        lock_down(con, [run.results, *([run.dataset] if run.dataset else [])])
    except BaseException:
        con.close()
        raise
    return con, run


#: Sources :func:`connect_in_memory` reads into memory once (ADR 0427): the RESULTS' own tables,
#: the grid points and the VMs, small whatever the trace (a row per epoch, vCPU, scan, point or
#: VM and policy). The DATASET's accesses and ftrace tables, as large as the trace, stay views.
MATERIALISED = (*RESULTS_TABLES, "points", "vms")
#: Where :func:`connect_in_memory` keeps those tables; the source views select from them.
MATERIALISED_SCHEMA = "_source"


def connect_in_memory(results: Path, *, threads: int = 1) -> tuple[duckdb.DuckDBPyConnection, Run]:
    """The views of :func:`connect` in a new in-memory database whose :data:`MATERIALISED`
    sources are tables, read once from their Parquet files (ADR 0427).

    For callers that run many queries over one RESULTS once (``report``, the README tables):
    each of their ~20 queries over the nested views otherwise plans and runs dozens of Parquet
    scans (~0.2 CPU-s each on a few thousand rows); over tables in memory the whole section
    costs a fraction of that, and of building the saved catalog (ADR 0420), which is not
    written. ``threads``: DuckDB's threads (a report builds several sections in parallel
    processes, each one thread). The same rows as :func:`connect`'s views; lock-down alike.
    """
    run = Run.open(results)
    con = duckdb.connect(":memory:", config={**LOCKED_CONFIG, "threads": threads})
    try:
        build_views(con, run, materialise=True)
        lock_down(con, [run.results, *([run.dataset] if run.dataset else [])])
    except BaseException:
        con.close()
        raise
    return con, run


def build_views(con: duckdb.DuckDBPyConnection, run: Run, *, materialise: bool = False) -> None:
    """Create every view of ``run`` on ``con`` (an empty database); with ``materialise``
    the :data:`MATERIALISED` sources are tables in :data:`MATERIALISED_SCHEMA` first, and
    every analysis view is computed into a table there as soon as it is made
    (:func:`_materialise_views`)."""
    if materialise:
        con.execute(f"CREATE SCHEMA {MATERIALISED_SCHEMA}")
    for source in run.sources():
        try:
            hive = source.name in RESULTS_TABLES
            if materialise and source.name in MATERIALISED:
                table = f"{MATERIALISED_SCHEMA}.{source.name}"
                select = _source_select(source, hive=hive, sweep=run.sweep, fleet=run.fleet)
                con.execute(f"CREATE TABLE {table} AS {select}")
                con.execute(f"CREATE VIEW {source.name} AS SELECT * FROM {table}")
                continue
            con.execute(_source_sql(source, hive=hive, sweep=run.sweep, fleet=run.fleet))
        except duckdb.Error as exc:
            msg = f"cannot read table `{source.table}`: {_first_line(exc)}"
            raise DatasetError(source.files or run.results, msg) from None
    con.execute(
        "CREATE VIEW results_manifest AS SELECT "
        f"CAST({sql_literal(json.dumps(run.manifest, sort_keys=True))} AS JSON) AS manifest"
    )
    for statement in _point_sources(run):
        con.execute(statement)
    # a fleet's keyed `accesses` (ADR 0611) is a row-level copy of the DATASET's: a view it stays
    done = {s.name for s in run.sources() if s.name not in MATERIALISED}
    if materialise:
        _materialise_views(con, done, run)
    con.execute(f"USE {POINT_SCHEMA}")
    for path in analysis_sql_files(run):
        try:
            if not materialise:
                con.execute(path.read_text())
                continue
            for parsed in con.extract_statements(path.read_text()):
                con.execute(parsed)
                _materialise_views(con, done, run)
        except duckdb.Error as exc:
            msg = f"{path.name}: {_first_line(exc)}"
            raise QueryError(msg) from None
    con.execute("USE main")
    _expose(con, sweep=run.sweep, fleet=run.fleet)


def _materialise_views(con: duckdb.DuckDBPyConnection, done: set[str], run: Run) -> None:
    """Every view of :data:`POINT_SCHEMA` not in ``done`` computed now into a table of
    :data:`MATERIALISED_SCHEMA`, which the view then selects from; ``done`` gets their names.

    Called after each statement of the SQL files, so a view is bound over tables, not over a
    chain of views, and computed once. Each is an aggregate (per epoch, vCPU, VM, policy or
    counter), so all of them together are as small as the RESULTS (ADR 0427). An error
    reading the data (a corrupt row group) names the RESULTS, as a query's would.
    """
    names = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE schema_name = ? AND NOT internal "
        "ORDER BY view_oid",
        [POINT_SCHEMA],
    ).fetchall()
    for (name,) in names:
        if name in done:
            continue
        table = f"{MATERIALISED_SCHEMA}.{POINT_SCHEMA}_{name}"
        try:
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM {POINT_SCHEMA}.{name}")
        except duckdb.Error as exc:
            raise QueryError(f"{run.results}: {_first_line(exc)}") from None
        con.execute(f"CREATE OR REPLACE VIEW {POINT_SCHEMA}.{name} AS SELECT * FROM {table}")
        done.add(name)


def analysis_sql_files(run: Run) -> list[Path]:
    """The analysis SQL files loaded for ``run``: sql/*.sql, then sql/sweep/*.sql for a sweep."""
    return [*sql_files(), *(sql_files(SWEEP_SQL_DIR) if run.sweep else [])]


def _expose(con: duckdb.DuckDBPyConnection, *, sweep: bool, fleet: bool = False) -> None:
    """One ``main`` view per public keyed analysis view: as it is for a sweep, without the
    point keys for a plain replay (whose one point is 0); a fleet's ``vm`` ('host/vm') split
    back into ``host`` and ``vm``."""
    # duckdb_columns() has the column names each view was bound with at CREATE time: no
    # re-binding of the view chains here
    rows = con.execute(
        "SELECT v.view_name, list(c.column_name) FILTER (c.column_name IN ?) "
        "FROM duckdb_views() AS v "
        "LEFT JOIN duckdb_columns() AS c ON c.schema_name = v.schema_name "
        "AND c.table_name = v.view_name "
        "WHERE v.schema_name = ? AND NOT v.internal AND NOT starts_with(v.view_name, '_') "
        "AND v.view_name NOT IN (SELECT view_name FROM duckdb_views() WHERE schema_name = 'main')"
        " GROUP BY v.view_name, v.view_oid ORDER BY v.view_oid",
        [[*POINT_KEYS, HOST, "vm"], POINT_SCHEMA],
    ).fetchall()
    for name, found in rows:
        keys = [k for k in found or [] if k in POINT_KEYS]
        hidden = [] if sweep else sorted(keys, key=POINT_KEYS.index)
        if fleet and HOST in (found or []):
            hidden.append(HOST)  # the 'host/vm' of a keyed view is split again below
        body = f"* EXCLUDE ({', '.join(hidden)})" if hidden else "*"
        if fleet and "vm" in (found or []):
            host = "split_part(vm, '/', 1)"
            body = f"{host} AS {HOST}, {body} REPLACE (substr(vm, length({host}) + 2) AS vm)"
        con.execute(f"CREATE VIEW main.{name} AS SELECT {body} FROM {POINT_SCHEMA}.{name}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
