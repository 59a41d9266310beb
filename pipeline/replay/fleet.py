"""``tlbreplay replay`` of a fleet, or of one DATASET on Dask: one task per (host, policy).

Each task (:func:`replay_host_policy`) opens its host's DATASET (a path the workers share),
replays one policy on that host's own simulated host state -- the same
:func:`~pipeline.replay.runner.replay_frames` as ``tlbreplay replay DATASET --policy P`` --
and writes its partitions (``epochs/host=H/policy=P/...``) into the RESULTS' temporary
directory. Nothing but row counts comes back; the client writes ``manifest.json`` at the end
and renames the directory over ``--out`` (ADR 0611). The policies of a host are independent
replays (each has its own host state), so splitting them over tasks changes no byte.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.cluster import Outcome, Task, execute
from pipeline.model.fleet import FLEET, HOST_DIR, host_dirs, is_fleet, remove_stale
from pipeline.replay.runner import ReplayParams

RESULT_TABLES = ("epochs", "vcpu_epochs", "scans")


@dataclass(frozen=True)
class HostPolicy:
    """One task: replay ``policy`` on the DATASET of ``host`` (None: a single-host DATASET)."""

    host: str | None
    dataset: Path
    root: Path  # the RESULTS' temporary directory
    policy: str
    policies: tuple[str, ...]  # every policy of the run (recorded in the files' metadata)
    params: ReplayParams
    seed: int | None  # None: the DATASET's own (``dataset_seed``), as ``replay`` takes it


def replay_host_policy(task: HostPolicy) -> dict[str, int]:
    """Replay one (host, policy) and write its partitions; returns rows per table."""
    from pipeline.replay.runner import (
        dataset_epochs,
        dataset_seed,
        open_dataset,
        replay_frames,
        resolve_params,
    )
    from pipeline.schema import write_partitioned

    ds = open_dataset(task.dataset, task.params)
    params, _ = resolve_params(ds, task.params)
    one = replace(params, workers=1)
    seed = dataset_seed(ds.manifest) if task.seed is None else task.seed
    span = dataset_epochs(ds)  # the span run_replay gives (ADR 0380)
    result = replay_frames(ds.vms, ds.accesses, [task.policy], one, seed, span_epochs=span)
    meta = {"policies": ",".join(task.policies), "epoch_ms": params.epoch_ms, "seed": seed}
    rows = {}
    for name in RESULT_TABLES:
        frame = getattr(result, name)
        root = task.root / name
        if task.host is not None:
            root = root / HOST_DIR.format(task.host)
        write_partitioned(frame, root, name, params=meta)
        rows[name] = frame.height
    return rows


def run_fleet_replay(
    dataset: Path,
    out: Path,
    policies: Sequence[str] | None,
    params: ReplayParams | None = None,
    *,
    seed: int | None = None,
    scheduler: str | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay a fleet DATASET (every host) or a single-host DATASET, one task per (host,
    policy), in this process (``workers`` <= 1, no ``scheduler``) or on Dask; write RESULTS
    atomically. Returns its manifest (a single host's is the one ``run_replay`` writes)."""
    from pipeline.errors import OutputError, TlbReplayError
    from pipeline.outdir import atomic_output_dir
    from pipeline.replay.policies import POLICIES, get_policy
    from pipeline.replay.runner import open_dataset, resolve_params, results_manifest
    from pipeline.schema import read_manifest, write_manifest

    params = params or ReplayParams()
    names = list(POLICIES) if not policies else list(dict.fromkeys(policies))
    for n in names:
        get_policy(n)
    ds_abs, out_abs = Path(dataset).resolve(), Path(out).resolve()
    if ds_abs == out_abs or out_abs in ds_abs.parents:
        raise OutputError(out, "would replace the DATASET it reads; choose another `--out`")
    top = read_manifest(ds_abs)
    fleet = is_fleet(top)
    hosts: dict[str | None, Path] = {None: ds_abs}
    if fleet:
        hosts = {h: p for h, p in host_dirs(ds_abs, top).items()}  # noqa: C416
    used: dict[str | None, dict[str, Any]] = {}
    first: tuple[ReplayParams, dict[str, Any]] | None = None
    for host, path in hosts.items():  # every host checked before any task runs
        opened = open_dataset(path, params)
        resolved, used[host] = resolve_params(opened, params)
        first = first or (resolved, opened.manifest)
    rows = dict.fromkeys(RESULT_TABLES, 0)
    failed: dict[tuple[str | None, str], str] = {}
    with atomic_output_dir(Path(out), kind="results") as tmp:

        def done(outcome: Outcome) -> None:
            key = outcome.key
            assert isinstance(key, tuple)
            if outcome.error is not None:
                failed[key] = outcome.error
            else:
                for name in RESULT_TABLES:
                    rows[name] += int(outcome.result[name])
            if progress is not None:
                progress(1)

        tasks = [
            Task(
                (host, policy),
                replay_host_policy,
                (HostPolicy(host, path, tmp, policy, tuple(names), params, seed),),
                f"replay-{host or 'dataset'}-{policy}",
            )
            for host, path in hosts.items()
            for policy in names
        ]
        execute(tasks, scheduler=scheduler, workers=workers, on_done=done)
        if failed:
            (host, policy), error = sorted(failed.items(), key=lambda kv: str(kv[0]))[0]
            where = f"host `{host}`, policy `{policy}`" if host else f"policy `{policy}`"
            more = f" (and {len(failed) - 1} other tasks)" if len(failed) > 1 else ""
            msg = f"{where}{more} failed after one retry: {error}; nothing written"
            raise TlbReplayError(msg)
        remove_stale(tmp)
        if not fleet:
            assert first is not None
            resolved, ds_manifest = first
            from pipeline.replay.runner import dataset_seed

            one_seed = dataset_seed(ds_manifest) if seed is None else seed
            manifest = results_manifest(
                ds_abs, ds_manifest, names, resolved, one_seed, used[None], rows
            )
        else:
            manifest = _fleet_manifest(ds_abs, top, names, params, seed, used, rows)
            manifest["scheduler"] = scheduler or ("local" if workers > 1 else None)
        write_manifest(tmp, manifest)
    return manifest


def _fleet_manifest(  # noqa: PLR0917 - the manifest's parts, in order
    dataset: Path,
    top: dict[str, Any],
    names: list[str],
    params: ReplayParams,
    seed: int | None,
    used: dict[str | None, dict[str, Any]],
    rows: dict[str, int],
) -> dict[str, Any]:
    from pipeline import __version__
    from pipeline.replay.runner import _jsonable

    return {
        "kind": "results",
        "layout": FLEET,
        "tool_version": __version__,
        "dataset": str(dataset),
        "dataset_epoch_ms": top.get("epoch_ms"),
        "policies": names,
        # hosting is per host (below); workers is how it ran, not what: the results
        # do not depend on it
        "params": _jsonable(replace(params, hosting=(), workers=1).as_dict()),
        "epoch_ms": params.epoch_ms,
        "seed": seed,
        "hosts": [{"host": h, "dir": HOST_DIR.format(h), **u} for h, u in used.items()],
        "partition": "host",
        "rows": rows,
    }
