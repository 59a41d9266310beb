"""The DuckDB lock-down of every connection over the views (``query``, ``report``; ADR 0007).

Extensions are neither installed nor loaded (the views need only the statically linked
parquet and json), file access is limited to the pinned RESULTS and DATASET versions, every
other external access (other files, http(s), extension downloads) is off and the
configuration is locked, so no statement can undo it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import duckdb

LOCKED_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
}
"""Options given when a connection is opened (they cannot be set later)."""


def lock_down(con: duckdb.DuckDBPyConnection, directories: Sequence[Path]) -> None:
    """Allow reads under ``directories`` only, turn external access off, lock the config."""
    rows = con.execute(
        "SELECT current_setting('lock_configuration'), current_setting('enable_external_access')"
    ).fetchall()
    locked, external = rows[0]
    if locked or not external:  # the same catalog file opened again: one database, locked
        return
    allowed = [str(d).rstrip(os.sep) + os.sep for d in directories]
    try:
        con.execute("SET allowed_directories = ?", [allowed])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except duckdb.InvalidInputException:
        # another thread locked the same database first; fine if it is locked down
        if con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]:
            raise
