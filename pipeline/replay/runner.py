"""Run the engine over a DATASET or over frames, for several policies, and write RESULTS.

The public API of stage 2: :class:`ReplayParams`, :func:`replay_frames`,
:func:`replay_dataset`, :func:`run_replay` (docs/engine.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import DatasetError, OutputError
from pipeline.model.hosting import hosting_for
from pipeline.replay.accesses import (
    Accesses,
    DatasetAccesses,
    FrameAccesses,
    check_accesses,
    sorted_accesses,
)
from pipeline.replay.bounds import VmSize, check_memory
from pipeline.replay.dataset import dataset_epochs, dataset_seed, open_dataset, resolve_params
from pipeline.replay.decoded import DecodedAccesses, decode_accesses
from pipeline.replay.engine import Engine, EngineOptions, VmAccesses, VmRun
from pipeline.replay.frames import concat_frames, epochs_frame, scans_frame, vcpu_frame
from pipeline.replay.params import KNOBS, ReplayOutput, ReplayParams, check_params
from pipeline.replay.policies import POLICIES, get_policy
from pipeline.replay.workload import (
    KnownWorkload,
    WorkloadSource,
    choose_workload,
    workload_record,
)
from pipeline.schema import conform


def _vm_rows(vms: pl.DataFrame, params: ReplayParams) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = conform(vms, "vms").to_pylist()
    for row in rows:
        for name in KNOBS:
            if getattr(params, name) is not None:
                row[name] = getattr(params, name)
        if params.mmu is not None:
            row["mmu"] = params.mmu
        if params.preempt is not None:
            row["preempt"] = params.preempt
    return rows


Traces = dict[tuple[str, str], list[tuple[str, int, int]]]

#: epochs per progress report: in a worker each report is a message to the parent, and one
#: per epoch (42,000 for the 1 TiB sample's 7 policies) cost more CPU than a bar needs (ADR 0373)
PROGRESS_EPOCHS = 32


@dataclass(frozen=True)
class _Job:
    """Everything one policy's replay needs; picklable, so policies can run in processes."""

    policy: str
    rows: list[dict[str, Any]]
    acc: Accesses | DecodedAccesses
    params: ReplayParams
    n_epochs: int
    trace: bool
    seed: int = 0


def _run_job(
    job: _Job, progress: Callable[[int], None] | None = None
) -> tuple[list[pl.DataFrame], list[pl.DataFrame], list[pl.DataFrame], Traces]:
    """Replay every VM under one policy (one Engine, one loop over epochs)."""
    from pipeline.replay.state import HostState, vm_config

    params = job.params
    policy = get_policy(job.policy)
    cfgs = [vm_config(r) for r in job.rows]
    opts = EngineOptions(
        epoch_ms=params.epoch_ms,
        yields=params.yields,
        vmm_thread=params.vmm_thread,
        shadow_guest_2m=params.shadow_guest_2m,
        busy_vcpus=bool(params.busy_vcpus),
        vmm_threads=params.vmm_threads,
        vmm_thread_share=params.vmm_thread_share,
        resched=params.resched,
        work_cost=params.work_cost,
        seed=job.seed,
        spte_4k=params.spte_4k,
        thp_fault_fallback=params.thp_fault_fallback,
    )
    host = HostState(cfgs[0].node_mem_pages.copy() if cfgs else np.zeros(1, np.int64))
    traces: Traces = {}
    runs = []
    names = [c.name for c in cfgs]
    empty = np.zeros(0, np.int64)
    for cfg, row in zip(cfgs, job.rows, strict=True):
        run = VmRun(
            cfg,
            VmAccesses(empty, empty, empty, empty),
            policy,
            host,
            opts=opts,
            n_epochs=job.n_epochs,
            knobs={k: int(row[k]) for k in KNOBS},
            hosting=hosting_for(params.hosting, cfg.name),
        )
        if job.trace:
            run.trace = traces.setdefault((policy.name, cfg.name), [])
        runs.append(run)
    engine = Engine(runs, params.epoch_ms, job.n_epochs)
    for e0 in range(0, job.n_epochs, params.batch_epochs):
        e1 = min(job.n_epochs, e0 + params.batch_epochs)
        batch = job.acc.window(e0, e1, names)
        for run in runs:
            run.acc = batch[run.cfg.name]  # epochs are absolute: bounds[e] for e in [e0, e1)
            run.bounds = run.acc.bounds(e1)
        for c0 in range(e0, e1, PROGRESS_EPOCHS):
            c1 = min(e1, c0 + PROGRESS_EPOCHS)
            engine.run(until=c1)
            if progress is not None:
                progress(c1 - c0)
        del batch
    weights = params.cost.weights()
    return (
        [epochs_frame(policy.name, r, params.epoch_ms, weights) for r in runs],
        [vcpu_frame(policy.name, r, params.epoch_ms) for r in runs],
        [scans_frame(policy.name, r) for r in runs],
        traces,
    )


def replay_frames(
    vms: pl.DataFrame,
    accesses: pl.DataFrame | pl.LazyFrame | Accesses,
    policies: Sequence[str] | None = None,
    params: ReplayParams = ReplayParams(),
    seed: int = 0,
    *,
    progress: Callable[[int], None] | None = None,
    trace: bool = False,
    span_epochs: int = 0,
) -> ReplayOutput:
    """Replay ``accesses`` (table accesses, epochs of ``params.epoch_ms``) on ``vms``.

    ``accesses`` may also be a :class:`DatasetAccesses` (read in batches of
    ``params.batch_epochs``). ``params.busy_vcpus`` None means off here (:func:`resolve_params`
    decides it for a DATASET). ``seed`` seeds the contention process (ADR 0370): one generator
    per (seed, policy, VM), so the same inputs and seed give identical frames.
    ``progress`` is called with each increment of epochs done (over all policies); ``trace``
    keeps the notifier start/end events in ``ReplayOutput.traces`` (for tests).
    ``span_epochs``: replay at least this many epochs (the DATASET's recorded time span,
    :func:`dataset_epochs`), also when the accesses stop earlier (ADR 0380). With
    ``params.workers > 1`` and several policies, policies run in worker processes; the
    output is identical.
    """
    check_params(params)
    names = list(POLICIES) if policies is None else list(dict.fromkeys(policies))
    for n in names:
        get_policy(n)
    rows = _vm_rows(vms, params)
    from pipeline.replay.state import vm_config

    cfgs = [vm_config(r) for r in rows]
    dup = sorted({c.name for c in cfgs if [d.name for d in cfgs].count(c.name) > 1})
    if dup:
        raise DatasetError("vms", f"duplicate vm names: {', '.join(dup)}")
    if isinstance(accesses, DatasetAccesses | FrameAccesses):
        acc: Accesses = accesses
    else:
        lf = accesses.lazy() if isinstance(accesses, pl.DataFrame) else accesses
        acc = FrameAccesses(sorted_accesses(lf))
    summary = check_accesses(acc, cfgs)
    n_epochs, rows_total = max(summary.n_epochs, span_epochs), summary.rows
    workers = min(_workers(params, rows_total), len(names))
    sizes = [VmSize(c.name, c.nr_pages, c.vcpus) for c in cfgs]
    check_memory(sizes, n_epochs, params.epoch_ms, workers, params.max_memory_bytes)
    with tempfile.TemporaryDirectory(prefix="tlbreplay-accesses-") as scratch:
        source: Accesses | DecodedAccesses = acc
        if len(names) > 1:  # every policy reads the same rows: decode them once (ADR 0372)
            vm_names = [c.name for c in cfgs]
            source = decode_accesses(acc, vm_names, n_epochs, params.batch_epochs, Path(scratch))
        jobs = [_Job(n, rows, source, params, n_epochs, trace, seed) for n in names]
        if workers > 1 and not trace:
            from pipeline.workers import run_in_workers

            results = run_in_workers(_run_job, jobs, workers, progress)
        else:
            results = [_run_job(job, progress) for job in jobs]
    traces: Traces = {}
    for res in results:
        traces.update(res[3])
    return ReplayOutput(
        epochs=concat_frames([f for r in results for f in r[0]], "epochs"),
        vcpu_epochs=concat_frames([f for r in results for f in r[1]], "vcpu_epochs"),
        scans=concat_frames([f for r in results for f in r[2]], "scans"),
        traces=traces if trace else None,
    )


AUTO_PARALLEL_MIN_ROWS = 200_000  # below this, starting worker processes costs more than it saves


def _workers(params: ReplayParams, rows: int) -> int:
    if params.workers > 0:
        return params.workers
    if rows < AUTO_PARALLEL_MIN_ROWS:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def replay_dataset(
    dataset: Path,
    policies: Sequence[str] | None = None,
    params: ReplayParams = ReplayParams(),
    seed: int | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> ReplayOutput:
    """Replay a DATASET directory under ``policies`` (default: all), reading its accesses in
    batches of ``params.batch_epochs`` and using its hosting.parquet (:func:`resolve_params`).
    ``seed`` None: the DATASET's own seed (:func:`dataset_seed`)."""
    ds = open_dataset(dataset, params)
    params, _ = resolve_params(ds, params)
    seed = dataset_seed(ds.manifest) if seed is None else seed
    return replay_frames(
        ds.vms,
        ds.accesses,
        policies,
        params,
        seed,
        progress=progress,
        span_epochs=dataset_epochs(ds),
    )


def run_replay(
    dataset: Path,
    out: Path,
    policies: Sequence[str] | None,
    params: ReplayParams = ReplayParams(),
    *,
    quiet: bool = True,
    seed: int | None = None,
    force: bool = False,
    workload: WorkloadSource | None = None,
    workload_choice: str = "auto",
) -> Path:
    """Replay and write RESULTS atomically: manifest.json + epochs/, vcpu_epochs/, scans/.

    ``workload`` builds the DATASET's stated workload (the CLI passes calibrate's, ADR 0381):
    with ``workload_choice`` ``auto`` it is replayed instead of the trace's refaults when the
    DATASET states one (a lab sidecar's ``[lab]`` table); ``trace`` keeps the refaults,
    ``lab`` requires the stated workload. The manifest's ``workload`` says which ran."""
    from pipeline.clikit import reporter
    from pipeline.outdir import atomic_output_dir, check_replaceable, pin
    from pipeline.schema import write_manifest, write_partitioned
    from pipeline.snapshot import check_dataset, file_sizes, manifest_sha256

    names = list(POLICIES) if not policies else list(dict.fromkeys(policies))
    for n in names:
        get_policy(n)
    ds_abs, out_abs = Path(dataset).resolve(), Path(out).resolve()
    if ds_abs == out_abs or out_abs in ds_abs.parents:
        raise OutputError(out, "would replace the DATASET it reads; choose another `--out`")
    check_replaceable(Path(out), "results", force=force)
    pinned = pin(dataset)  # one version of the DATASET, read from start to end (ADR 0005)
    dataset_sha256 = manifest_sha256(pinned)
    ds = open_dataset(pinned, params)
    chosen = choose_workload(pinned, params, workload, workload_choice)  # params as given
    params, used = resolve_params(ds, params)
    manifest = ds.manifest
    seed_from = "--seed" if seed is not None else "dataset"
    seed = dataset_seed(manifest) if seed is None else seed
    accesses: pl.DataFrame | DatasetAccesses = ds.accesses
    span = dataset_epochs(ds)
    if isinstance(chosen, KnownWorkload):
        params, accesses, span = chosen.params, chosen.accesses, chosen.n_epochs
        used = {
            **used,
            "hosting": {**used["hosting"], "from": f"{chosen.name} (the capture, as calibrate)"},
            "busy_vcpus": {"value": params.busy_vcpus, "from": chosen.name},
        }
        epoch_max = chosen.accesses.select(pl.col("epoch").max())
    else:
        epoch_max = ds.accesses.lazy().select(pl.col("epoch").max()).collect(engine="streaming")
    n_epochs = max(int(epoch_max.item() or 0) + 1, span)
    try:
        with reporter(quiet) as rep:
            task = rep.task(
                f"replay: {len(names)} policies", total=n_epochs * len(names), unit="epochs"
            )
            result = replay_frames(
                ds.vms,
                accesses,
                names,
                params,
                seed,
                progress=lambda done: rep.advance(task, done),
                span_epochs=span,
            )
    except (OSError, pl.exceptions.PolarsError):
        check_dataset(pinned, dataset_sha256, during="during the replay")
        raise
    check_dataset(pinned, dataset_sha256, during="during the replay")
    meta = {"policies": ",".join(names), "epoch_ms": params.epoch_ms, "seed": seed}
    with atomic_output_dir(Path(out), kind="results", force=force) as tmp:
        write_partitioned(result.epochs, tmp / "epochs", "epochs", params=meta)
        write_partitioned(result.vcpu_epochs, tmp / "vcpu_epochs", "vcpu_epochs", params=meta)
        write_partitioned(result.scans, tmp / "scans", "scans", params=meta)
        rows = {
            "epochs": result.epochs.height,
            "vcpu_epochs": result.vcpu_epochs.height,
            "scans": result.scans.height,
        }
        files = file_sizes(tmp)
        write_manifest(
            tmp,
            {
                **results_manifest(
                    dataset, manifest, names, params, seed, {**used, "seed_from": seed_from}, rows
                ),
                "dataset_manifest_sha256": dataset_sha256,
                "workload": workload_record(chosen),
                "n_epochs": n_epochs,
                "files": files,
            },
        )
    return Path(out)


def results_manifest(  # noqa: PLR0917 - the manifest's parts, in order
    dataset: Path,
    dataset_manifest: dict[str, Any],
    names: Sequence[str],
    params: ReplayParams,
    seed: int,
    used: dict[str, Any],
    rows: dict[str, int],
) -> dict[str, Any]:
    """The ``manifest.json`` of a replay's RESULTS (``used``: :func:`resolve_params`)."""
    from pipeline import __version__

    return {
        "kind": "results",
        "tool_version": __version__,
        "dataset": os.path.abspath(dataset),  # the output, not the version read (ADR 0003)
        "dataset_epoch_ms": dataset_manifest.get("epoch_ms"),
        "policies": list(names),
        "params": _jsonable(replace(params).as_dict()),
        "epoch_ms": params.epoch_ms,
        "seed": seed,
        **used,
        "rows": rows,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
