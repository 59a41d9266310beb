"""A persisted DuckDB catalog of a RESULTS' views, rebuilt only when something it reads changed.

Building the views binds every ``sql/*.sql`` statement against the Parquet files (~2 s per
call); the built catalog holds views only (SQL text, no data), so it is saved once to a DuckDB
file and later calls open it read-only (ADR 0420). The file is named by a key over everything
the views depend on: the RESULTS and DATASET manifests and their Parquet files (path, size,
mtime), the SQL and schema files, the tool version and the RESULTS path. Any change gives a
new key, so a stale catalog is never opened; the old file of the same RESULTS is removed.

Catalogs live under ``$TLBREPLAY_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tlbreplay/catalog``,
else ``~/.cache/tlbreplay/catalog``), never inside RESULTS, so outputs stay as replay wrote
them. When the cache cannot be written the views are built in memory as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import duckdb

from pipeline import __version__
from pipeline.analyze.lockdown import LOCKED_CONFIG
from pipeline.schema import MANIFEST, SCHEMA_DIR

SQL_ROOT = Path(__file__).resolve().parent / "sql"


def cache_dir() -> Path:
    """Where catalogs are kept (see the module doc)."""
    env = os.environ.get("TLBREPLAY_CACHE_DIR")
    if env:
        return Path(env) / "catalog"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "tlbreplay" / "catalog"


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def catalog_key(results: Path, dataset: Path | None) -> str:
    """sha256 over what the views read and how they are defined (see the module doc)."""
    h = hashlib.sha256(f"{__version__}\0{results}\0{dataset}\0".encode())
    for root in (results, dataset):
        if root is None:
            continue
        manifest = root / MANIFEST
        h.update(manifest.read_bytes() if manifest.is_file() else b"-")
        for p in _files(root):
            if p.suffix == ".parquet":
                st = p.stat()
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for p in [*_files(SQL_ROOT), *_files(SCHEMA_DIR)]:
        h.update(str(p).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def open_catalog(
    results: Path, dataset: Path | None, build: Callable[[duckdb.DuckDBPyConnection], None]
) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the saved catalog of ``results``, built by ``build`` into a
    new file first if there is none for the current key; in memory if the cache is not
    writable. ``build`` creates the views on the connection it is given."""
    stem = hashlib.sha256(str(results).encode()).hexdigest()[:16]
    key = catalog_key(results, dataset)[:32]
    where = cache_dir()
    path = where / f"{stem}-{key}.duckdb"
    if path.is_file():
        try:
            return duckdb.connect(str(path), read_only=True, config=LOCKED_CONFIG)
        except duckdb.Error:
            path.unlink(missing_ok=True)  # unreadable (a crash mid-rename cannot do this)
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp = where / f".{stem}-{key}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
    except OSError:
        return _in_memory(build)
    try:
        con = duckdb.connect(str(tmp), config=LOCKED_CONFIG)
        try:
            build(con)
        finally:
            con.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
        raise
    for old in where.glob(f"{stem}-*.duckdb"):
        if old != path:
            old.unlink(missing_ok=True)
    return duckdb.connect(str(path), read_only=True, config=LOCKED_CONFIG)


def _in_memory(build: Callable[[duckdb.DuckDBPyConnection], None]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config=LOCKED_CONFIG)
    try:
        build(con)
    except BaseException:
        con.close()
        raise
    return con
