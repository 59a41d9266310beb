"""The last `make bench` figures, kept machine-readable in ``bench/last.json``.

`python -m bench` records each module it ran (its figures, the load average at its start and
end, the UTC time and the commit) under the module's name; a run of some modules replaces
only theirs, so ``last.json`` always says, per module, which run its figures came from.
``python -m bench.readme_perf`` renders the README's performance table from this file only:
no figure in the README is typed by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

LAST = Path(__file__).resolve().parent / "last.json"


def git(*args: str) -> str:
    """``git ARGS`` in this checkout, its stdout stripped."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit() -> str:
    """The checkout's short commit, ``+dirty`` when tracked files differ from it."""
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def format_value(value: Any) -> str:
    """A figure as the bench table and the README show it: thousands separators for
    integers and values >= 100, one decimal from 10, 3 significant digits below."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def load(path: Path = LAST) -> dict[str, Any]:
    """The recorded runs: ``{"machine": {...}, "modules": {name: run}}`` (empty when absent)."""
    if not path.is_file():
        return {"machine": {}, "modules": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def save(runs: dict[str, dict[str, Any]], machine: dict[str, str], path: Path = LAST) -> None:
    """Merge ``runs`` (module -> run) into ``path``, atomically, modules sorted by name."""
    data = load(path)
    data["machine"] = machine
    merged = {**data.get("modules", {}), **runs}
    data["modules"] = {name: merged[name] for name in sorted(merged)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # figures keep the order their module gave them (the README rows rely on it)
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run_entry(figures: dict[str, Any], load_start: str, load_end: str) -> dict[str, Any]:
    """One module's run as recorded: figures, loads, UTC minute, commit."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {
        "figures": figures,
        "load_start": load_start,
        "load_end": load_end,
        "utc": now,
        "commit": commit(),
    }
