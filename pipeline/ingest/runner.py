"""The ingest job: sources -> DATASET (ftrace tables, quarantine, vms, accesses, manifest).

The dataset is built in a temporary sibling of ``--out`` and renamed over it at the end
(:func:`pipeline.outdir.atomic_output_dir`), so a failure leaves nothing half-written.
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
from pipeline.ingest.span import time_span
from pipeline.outdir import atomic_output_dir, check_replaceable
from pipeline.schema import write_manifest, write_parquet

DEFAULT_EPOCH_MS = 100
MIN_PARSED_SHARE = 0.5
"""An input whose parsed events are fewer than this share of its non-comment lines is refused
(ADR 0004): it is not a trace, or not one this tool reads; ``--allow-empty`` accepts it."""


def run_ingest(
    sources: list[str],
    out: Path,
    *,
    vm_config: Path | None = None,
    epoch_ms: int = DEFAULT_EPOCH_MS,
    progress: Callable[[int], None] | None = None,
    derive_progress: Progress | None = None,
    workers: int = reader.WORKERS,
    force: bool = False,
    allow_empty: bool = False,
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
    check_replaceable(Path(out), "dataset", force=force)
    params = {"epoch_ms": epoch_ms, "vm_config": str(vm_config) if vm_config else None}
    with atomic_output_dir(out, kind="dataset", force=force) as tmp, reader.small_pages():
        stats, rows = reader.ingest_all(
            sources, tmp, params=params, progress=progress, workers=workers
        )
        if not allow_empty:
            _check_parsed(stats, tmp)
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
        provenance: dict[str, dict[str, str]] = {}
        shown: dict[str, dict[str, object]] = {}
        hosting_rows = write_hosting(
            tmp,
            derived.vms,
            vm_config,
            sources=sources,
            epoch_ms=epoch_ms,
            params=params,
            provenance=provenance,
            trace_facts=shown,
        )
        manifest: dict[str, Any] = {
            "kind": "dataset",
            "tool": "tlbreplay",
            "version": __version__,
            "command": "ingest",
            "epoch_ms": epoch_ms,
            "t0_ns": t0,
            **time_span(tmp, t0, epoch_ms, vm_config),
            "parameters": params,
            "sources": [s.manifest() for s in stats],
            "tables": {
                **rows,
                "vms": derived.vms.height,
                "accesses": derived.accesses_rows,
                "hosting": hosting_rows,
            },
            # per VM, where each hosting fact came from (measured / inferred / defaulted)
            "hosting_provenance": provenance,
            # per VM, what a trace without capture.json showed of its VMM (ADR 0365)
            "trace_facts": shown,
            "accesses_from": derived.access_source,
            "accesses_unassigned": derived.unassigned,
            "accesses_outside_ram": derived.outside_ram,
            "vms_inferred": bool(derived.vms["inferred"].any()),
            "lines_total": sum(s.lines_total for s in stats),
            "parsed": sum(s.parsed for s in stats),
            "comments": sum(s.comments for s in stats),
            "quarantined": sum(s.quarantined for s in stats),
            "timestamp_outliers": sum(s.timestamp_outliers for s in stats),
        }
        write_manifest(tmp, manifest)
    return manifest


def _check_parsed(stats: list[reader.SourceStats], tmp: Path) -> None:
    """Refuse a source that yielded no event, or events for under MIN_PARSED_SHARE of its
    non-comment lines, naming it and the first quarantine reasons (ADR 0004)."""
    for s in stats:
        lines = s.parsed + s.quarantined
        if s.parsed and s.parsed >= MIN_PARSED_SHARE * lines:
            continue
        import polars as pl

        q = tmp / "quarantine.parquet"
        rows = (
            pl.read_parquet(q).filter(pl.col("source") == s.path).head(3)
            if q.is_file()
            else pl.DataFrame()
        )
        first = "; ".join(f"line {r['lineno']}: {r['reason']}" for r in rows.iter_rows(named=True))
        what = "no ftrace event" if not s.parsed else f"only {s.parsed} events"
        msg = (
            f"{what} in {s.lines_total} lines ({s.quarantined} quarantined"
            + (f", first: {first}" if first else "")
            + "); is it an ftrace text trace or trace.dat? pass `--allow-empty` to keep it anyway"
        )
        raise InputError(s.path, msg)


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
