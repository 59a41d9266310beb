"""The ingest job: sources -> DATASET (ftrace tables, quarantine, vms, accesses, manifest).

The dataset is built in a temporary sibling of ``--out`` and renamed over it at the end
(:func:`pipeline.schema.atomic_output_dir`), so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import InputError, OutputError
from pipeline.ingest import reader
from pipeline.ingest.derive import Progress, derive
from pipeline.schema import atomic_output_dir, write_manifest, write_parquet

DEFAULT_EPOCH_MS = 100


def run_ingest(
    sources: list[str],
    out: Path,
    *,
    vm_config: Path | None = None,
    epoch_ms: int = DEFAULT_EPOCH_MS,
    progress: Callable[[int], None] | None = None,
    derive_progress: Progress | None = None,
    workers: int = reader.WORKERS,
) -> dict[str, Any]:
    """Ingest ``sources`` into the dataset directory ``out``; returns the manifest.

    ``progress(nbytes)`` is called as input bytes are consumed by the parse stage, then
    ``derive_progress(rows_done, rows_total)`` as derive streams the event tables.
    """
    if not sources:
        raise InputError("SRC", "no input given; pass one or more trace files or `-` for stdin")
    if epoch_ms <= 0:
        raise InputError("--epoch-ms", f"must be a positive number of milliseconds, not {epoch_ms}")
    if sources.count("-") > 1:
        raise InputError("-", "stdin can be read only once; pass `-` at most once")
    for src in sources:
        reader.check_source(src)
    if vm_config is not None:
        reader.check_source(str(vm_config))
    check_out(Path(out))
    params = {"epoch_ms": epoch_ms, "vm_config": str(vm_config) if vm_config else None}
    with atomic_output_dir(out) as tmp:
        stats, rows = reader.ingest_all(
            sources, tmp, params=params, progress=progress, workers=workers
        )
        firsts = [s.first_ts_ns for s in stats if s.first_ts_ns is not None]
        t0 = min(firsts) if firsts else None
        derived = derive(
            tmp,
            vm_config=vm_config,
            epoch_ms=epoch_ms,
            t0_ns=t0,
            params=params,
            progress=derive_progress,
        )
        write_parquet(derived.vms, tmp / "vms.parquet", "vms", params=params)
        from pipeline.ingest.capture_facts import write_hosting

        # the capture's process and host facts, when the sidecar or capture.json has any
        hosting_rows = write_hosting(
            tmp, derived.vms, vm_config, sources=sources, epoch_ms=epoch_ms, params=params
        )
        manifest: dict[str, Any] = {
            "kind": "dataset",
            "tool": "tlbreplay",
            "version": __version__,
            "command": "ingest",
            "epoch_ms": epoch_ms,
            "t0_ns": t0,
            "parameters": params,
            "sources": [s.manifest() for s in stats],
            "tables": {
                **rows,
                "vms": derived.vms.height,
                "accesses": derived.accesses_rows,
                "hosting": hosting_rows,
            },
            "accesses_from": derived.access_source,
            "accesses_unassigned": derived.unassigned,
            "accesses_outside_ram": derived.outside_ram,
            "vms_inferred": bool(derived.vms["inferred"].any()),
            "lines_total": sum(s.lines_total for s in stats),
            "parsed": sum(s.parsed for s in stats),
            "comments": sum(s.comments for s in stats),
            "quarantined": sum(s.quarantined for s in stats),
        }
        write_manifest(tmp, manifest)
    return manifest


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be created before reading any input."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        msg = f"`{parent}` is a file, so the directory cannot be created; choose another `--out`"
        raise OutputError(out, msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"`{parent}` is not writable; choose another `--out` or fix its permissions"
        raise OutputError(out, msg)
