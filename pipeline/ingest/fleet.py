"""``tlbreplay ingest`` of a fleet: one task per capture, each host a DATASET of its own.

Each task (:func:`ingest_host`, run in this process or on a Dask worker) ingests one capture
with its sidecar exactly as ``tlbreplay ingest TRACE --vm-config SIDECAR`` would, into
``host=H/`` of the fleet's temporary directory (a shared path the workers write to; no event
row goes through the client) and returns that host's manifest. The client writes only the
fleet's ``manifest.json``, then renames the whole directory over ``--out`` (ADR 0611).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cluster import Outcome, Task, execute
from pipeline.model.fleet import FLEET, HOST_DIR, Capture, find_captures, remove_stale

#: the manifest counters summed over the hosts
TOTALS = ("lines_total", "parsed", "comments", "quarantined")


def ingest_host(capture: Capture, root: Path, epoch_ms: int) -> dict[str, Any]:
    """Ingest one capture into ``root/host=H`` (one parse process: the task is the unit of
    parallelism); returns its manifest."""
    from pipeline.ingest.runner import run_ingest

    out = Path(root) / HOST_DIR.format(capture.host)
    if out.is_dir() and not out.is_symlink():  # a retry after a worker died: start afresh
        import shutil

        shutil.rmtree(out)
    manifest = run_ingest(
        [str(capture.trace)], out, vm_config=capture.sidecar, epoch_ms=epoch_ms, workers=1
    )
    if out.is_symlink():
        # run_ingest installs a versioned output (a link to `.host=H.v<n>`, ADR 0003); inside
        # the fleet's private temporary directory a plain partition directory is enough
        target = out.resolve()
        out.unlink()
        target.rename(out)
    return manifest


def run_fleet_ingest(
    sources: list[str],
    out: Path,
    *,
    epoch_ms: int = 100,
    scheduler: str | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    captures: list[Capture] | None = None,
) -> dict[str, Any]:
    """Ingest every capture of ``sources`` (:func:`find_captures`) into the fleet DATASET
    ``out``; ``workers`` > 1 or a ``scheduler``: on Dask. Returns the fleet manifest."""
    from pipeline import __version__
    from pipeline.errors import InputError, TlbReplayError
    from pipeline.ingest import reader
    from pipeline.ingest.runner import check_out
    from pipeline.outdir import atomic_output_dir
    from pipeline.schema import write_manifest

    if epoch_ms <= 0:
        raise InputError("--epoch-ms", f"must be a positive number of milliseconds, not {epoch_ms}")
    if captures is None:
        captures = find_captures(sources)
    for cap in captures:
        reader.check_source(str(cap.trace))
    check_out(Path(out))
    hosts: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    with atomic_output_dir(Path(out), kind="dataset") as tmp:

        def done(outcome: Outcome) -> None:
            host = str(outcome.key)
            if outcome.error is not None:
                failed[host] = outcome.error
            else:
                hosts[host] = outcome.result
            if progress is not None:
                progress(1)

        tasks = [
            Task(c.host, ingest_host, (c, tmp, epoch_ms), f"ingest-{c.host}") for c in captures
        ]
        execute(tasks, scheduler=scheduler, workers=workers, on_done=done)
        if failed:
            host = sorted(failed)[0]
            more = f" (and {len(failed) - 1} other hosts)" if len(failed) > 1 else ""
            msg = f"host `{host}`{more} failed after one retry: {failed[host]}; nothing written"
            raise TlbReplayError(msg)
        remove_stale(tmp)
        manifest: dict[str, Any] = {
            "kind": "dataset",
            "tool": "tlbreplay",
            "version": __version__,
            "command": "ingest",
            "layout": FLEET,
            "epoch_ms": epoch_ms,
            "hosts": [
                {
                    "host": c.host,
                    "dir": HOST_DIR.format(c.host),
                    "source": str(c.trace),
                    "vm_config": str(c.sidecar),
                    "vms": hosts[c.host]["tables"]["vms"],
                    **{k: hosts[c.host][k] for k in TOTALS},
                }
                for c in captures
            ],
            **{k: sum(int(h[k]) for h in hosts.values()) for k in TOTALS},
            "tables": _summed_tables(list(hosts.values())),
            "scheduler": scheduler or ("local" if workers > 1 else None),
        }
        write_manifest(tmp, manifest)
    return manifest


def _summed_tables(manifests: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in manifests:
        for name, rows in m.get("tables", {}).items():
            out[name] = out.get(name, 0) + int(rows or 0)
    return dict(sorted(out.items()))
