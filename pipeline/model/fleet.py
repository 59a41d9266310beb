"""The fleet layout: which captures make a fleet, and where each host's tables lie (ADR 0611).

Shared by ingest (writes it), replay (reads a fleet DATASET) and analyze (its views).

A fleet DATASET or RESULTS keeps every host apart in a hive partition ``host=H``:

```
FLEET/manifest.json            kind dataset, layout "fleet", one entry per host
FLEET/host=H/                  a complete single-host DATASET (as `tlbreplay ingest` writes)
RESULTS/manifest.json          kind results, layout "fleet"
RESULTS/epochs/host=H/policy=P/vm=V/part-0.parquet   (vcpu_epochs, scans alike)
```

so DuckDB, polars, Spark or Trino read ``host`` from the directory names beside ``policy`` and
``vm``. A capture is a trace file with its sidecar beside it (``NAME.trace.zst`` and
``NAME.toml``, as ``tlbreplay lab run`` and ``capture`` write them); its host is ``NAME``.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

FLEET = "fleet"
HOST_DIR = "host={}"
#: file names of captures in a directory (the trace; its sidecar is NAME.toml)
TRACE_SUFFIXES = (".trace", ".trace.zst", ".trace.gz", ".dat", ".dat.zst", ".dat.gz")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Capture:
    """One host's capture: the trace and its VM sidecar (absolute paths)."""

    host: str
    trace: Path
    sidecar: Path


def is_fleet(manifest: dict[str, Any]) -> bool:
    """True for the manifest of a fleet DATASET or RESULTS."""
    return manifest.get("layout") == FLEET


def wants_fleet(sources: list[str]) -> bool:
    """Sources name a fleet by themselves: a directory or a (quoted) glob pattern."""
    return any(src != "-" and (Path(src).is_dir() or _GLOB.search(src)) for src in sources)


def host_of(trace: Path) -> str:
    """``dir/NAME.trace.zst`` -> ``NAME`` (the part before the first dot)."""
    return trace.name.split(".")[0]


def find_captures(sources: list[str]) -> list[Capture]:
    """The captures of ``sources`` (directories, glob patterns or trace files), by host name.

    Every trace needs its sidecar ``NAME.toml`` beside it, and every host name must be unique
    and usable as a directory name; a directory's captures are its files ending in one of
    :data:`TRACE_SUFFIXES` (not recursive).
    """
    traces: list[Path] = []
    for src in sources:
        if src == "-":
            raise InputError("-", "a fleet is read from files; stdin cannot be one host of it")
        path = Path(src)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_trace(p))
            if not found:
                msg = f"no capture in this directory (files ending in {', '.join(TRACE_SUFFIXES)})"
                raise InputError(src, msg)
            traces += found
        elif _GLOB.search(src) and not path.exists():
            matched = sorted(Path(p) for p in glob.glob(src) if Path(p).is_file())
            if not matched:
                raise InputError(src, "the pattern matches no file")
            traces += matched
        elif path.is_file():
            traces.append(path)
        else:
            raise InputError(src, "no such file or directory")
    captures: dict[str, Capture] = {}
    for trace in traces:
        if not _is_trace(trace) and trace.name.endswith((".toml", ".json")):
            continue  # a glob such as DIR/* also matches the sidecars and capture.json
        host = host_of(trace)
        sidecar = trace.with_name(f"{host}.toml")
        if not _HOST_NAME.match(host):
            msg = f"host name `{host}` (the file name before its first dot) is not usable"
            raise InputError(trace, f"{msg}; rename the capture to letters, digits, _ . + -")
        if not sidecar.is_file():
            msg = (
                f"no sidecar `{sidecar.name}` beside this capture; every host of a fleet needs "
                "its VM description (docs/ingest.md)"
            )
            raise InputError(trace, msg)
        if host in captures:
            other = captures[host].trace
            raise InputError(trace, f"host `{host}` is also the capture `{other}`; rename one")
        captures[host] = Capture(host, trace.resolve(), sidecar.resolve())
    return [captures[h] for h in sorted(captures)]


def _is_trace(path: Path) -> bool:
    return path.name.endswith(TRACE_SUFFIXES)


def host_dirs(root: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """``host -> root/host=H`` of a fleet manifest, in the manifest's order."""
    return {str(h["host"]): root / HOST_DIR.format(h["host"]) for h in manifest.get("hosts", [])}


def remove_stale(root: Path) -> None:
    """Temporary files and superseded versions a task left when its worker died (the retry
    wrote the real ones): every hidden entry under ``root``."""
    import shutil

    for path in sorted(root.rglob(".*"), reverse=True):
        if path.is_symlink():
            path.unlink(missing_ok=True)
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
