"""``tlbreplay sweep``: one replay task per grid point on Dask, results as partitioned Parquet.

The plan (:func:`plan_sweep`) is made in the client and checked whole before any task runs:
the spec is read once, every distinct workload variant (the grid's workload keys, see
:mod:`pipeline.replay.grid`) is applied to the spec document and validated, and each point
gets its :class:`~pipeline.replay.runner.ReplayParams` and a seed derived from the base seed
and its id. A task (:func:`run_point`) synthesizes its variant's dataset in memory (cached per
worker process, so the engine-only points of a variant synthesize it once per worker), runs
:func:`~pipeline.replay.runner.replay_frames` for the point's policy and returns the three
result tables as Arrow. The client writes each point as it arrives, so memory holds one
point's results at a time, and a point's files depend only on the point (identical Parquet
for the same spec, grid and seed, whatever the completion order).

RESULTS layout: ``epochs/point=N/policy=P/vm=V/part-0.parquet`` (same for ``vcpu_epochs``,
``scans``), ``points.parquet`` (table points: one row per point, every grid key a column,
status and error), ``manifest.json`` (kind results, ``sweep`` block, failures).

Tasks run with ``retries=1``; a point that fails twice is recorded (manifest ``failed``,
points ``status = 'failed'``) and :func:`run_sweep` returns it, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.errors import SpecError, SweepError
from pipeline.ingest.spec import SynthSpec, load_spec, parse_spec
from pipeline.ingest.vmmodel import Source, read_source
from pipeline.replay.grid import (
    KEYS,
    WORKLOAD_KEYS,
    Grid,
    Point,
    Value,
    apply_workload,
    check_point_against,
    describe_workload,
    load_grid,
    replay_params,
)
from pipeline.replay.runner import ReplayParams

#: the LocalCluster of one machine (the default): a process per core, one thread each
LOCAL_WORKERS = 2
#: synthesized datasets a worker process keeps (the tasks come sorted by variant)
CACHED_VARIANTS = 2
RESULT_TABLES = ("epochs", "vcpu_epochs", "scans")
POINT_DIR = "point={}"


class PointFailedError(RuntimeError):
    """A grid point's task failed: the original exception's type and message, picklable.

    (The project's own errors carry structured ``__init__`` arguments that do not survive
    pickling across Dask workers; this carries their one-line text.)
    """


# -- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One workload variant: the spec document with the grid's workload keys applied."""

    variant: int
    workload: tuple[tuple[str, Value], ...]
    doc: dict[str, Any]
    spec_sha256: str
    spec_path: str
    epoch_ms: int


@dataclass(frozen=True)
class PointTask:
    """What a worker needs for one point (picklable, no paths it must read)."""

    point: int
    policy: str
    params: ReplayParams
    seed: int
    variant: Variant


@dataclass
class PointOutcome:
    """A finished point: its result tables (Arrow) or its error."""

    point: int
    tables: dict[str, pa.Table] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class SweepPlan:
    """The validated sweep: grid, points, their tasks, the base seed."""

    spec_path: Path
    grid: Grid
    points: list[Point]
    tasks: list[PointTask]
    seed: int
    variants: list[Variant]
    spec_epoch_ms: int


def point_seed(base_seed: int, point: int) -> int:
    """The seed of grid point ``point``: a 63-bit draw of SeedSequence([base, point])."""
    state = np.random.SeedSequence([base_seed, point]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _replay_seed(point: Point, base_seed: int) -> int:
    """The contention seed of a point (ADR 0370): its ``synth_seed`` when the grid sets one,
    as ``tlbreplay replay`` uses a synthetic DATASET's own seed, else :func:`point_seed`."""
    if "synth_seed" in point.values:
        return int(point.values["synth_seed"])
    return point_seed(base_seed, point.point)


def plan_sweep(
    spec_path: Path, grid_path: Path, *, seed: int | None = None, base: ReplayParams | None = None
) -> SweepPlan:
    """Read and validate spec and grid; every point's spec variant is validated here."""
    grid = load_grid(grid_path)
    spec = load_spec(spec_path)
    doc, source = read_source(spec_path)
    base_seed = seed if seed is not None else grid.seed if grid.seed is not None else spec.seed
    base_params = base if base is not None else ReplayParams(epoch_ms=spec.epoch_ms)
    points = grid.points()
    variants: dict[tuple[tuple[str, Value], ...], Variant] = {}
    tasks = []
    for point in points:
        check_point_against(point, grid.path, spec_epoch_ms=spec.epoch_ms)
        workload = point.workload()
        if workload not in variants:
            variant_doc = apply_workload(doc, workload)
            if "synth_seed" not in dict(workload):
                variant_doc["seed"] = base_seed
            _validate_variant(variant_doc, source, workload, grid.path)
            variants[workload] = Variant(
                variant=len(variants),
                workload=workload,
                doc=variant_doc,
                spec_sha256=spec.sha256,
                spec_path=str(Path(spec_path).resolve()),
                epoch_ms=spec.epoch_ms,
            )
        tasks.append(
            PointTask(
                point=point.point,
                policy=str(point.values["policy"]),
                params=replay_params(point, base_params),
                seed=_replay_seed(point, base_seed),
                variant=variants[workload],
            )
        )
    return SweepPlan(
        spec_path=Path(spec_path),
        grid=grid,
        points=points,
        tasks=tasks,
        seed=base_seed,
        variants=list(variants.values()),
        spec_epoch_ms=spec.epoch_ms,
    )


def _validate_variant(
    doc: dict[str, Any], source: Source, workload: tuple[tuple[str, Value], ...], grid_path: Path
) -> None:
    try:
        parse_spec(doc, source)
    except SpecError as exc:
        msg = f"the spec with {describe_workload(workload)} is not valid: {exc}"
        raise SpecError(grid_path, "grid", msg) from None


# -- the task (runs on a worker) --------------------------------------------------------------
_DATASETS: OrderedDict[str, tuple[pl.DataFrame, pl.DataFrame]] = OrderedDict()


def synth_frames(spec: SynthSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Tables vms and accesses of ``spec``, in memory (the rows ``tlbreplay synth`` writes)."""
    from pipeline.ingest.synth import vm_batches
    from pipeline.ingest.synth_runner import to_table
    from pipeline.ingest.vmmodel import vms_frame
    from pipeline.schema import conform, table_schema

    vms = vms_frame(spec.model)
    order = sorted(range(len(spec.model.vms)), key=lambda i: spec.model.vms[i].name)
    parts = [
        to_table(spec.model.vms[i].name, batch)
        for i in order
        for batch in vm_batches(spec, i)
        if len(batch)
    ]
    table = pa.concat_tables(parts) if parts else table_schema("accesses").empty()
    accesses = pl.from_arrow(conform(table, "accesses"))
    assert isinstance(accesses, pl.DataFrame)
    return vms, accesses


def _variant_dataset(variant: Variant) -> tuple[pl.DataFrame, pl.DataFrame]:
    text = json.dumps([variant.doc, variant.spec_sha256], sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()
    if key in _DATASETS:
        _DATASETS.move_to_end(key)
        return _DATASETS[key]
    spec = parse_spec(variant.doc, variant.spec_path, sha256=variant.spec_sha256)
    frames = synth_frames(spec)
    _DATASETS[key] = frames
    while len(_DATASETS) > CACHED_VARIANTS:
        _DATASETS.popitem(last=False)
    return frames


def run_point(task: PointTask) -> dict[str, pa.Table]:
    """Replay one grid point; the result tables as Arrow (raises PointFailedError)."""
    from pipeline.replay.runner import replay_frames

    try:
        vms, accesses = _variant_dataset(task.variant)
        factor = task.params.epoch_ms // task.variant.epoch_ms
        lf = accesses.lazy()
        if factor > 1:
            lf = lf.with_columns(pl.col("epoch") // factor)
        out = replay_frames(vms, lf, [task.policy], task.params, task.seed)
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise PointFailedError(msg) from None
    return {
        "epochs": out.epochs.to_arrow(),
        "vcpu_epochs": out.vcpu_epochs.to_arrow(),
        "scans": out.scans.to_arrow(),
    }


# -- Dask -------------------------------------------------------------------------------------
@contextmanager
def dask_client(
    scheduler: str | None, workers: int = LOCAL_WORKERS, *, connect_timeout_s: float = 10.0
) -> Iterator[Any]:
    """A ``distributed.Client``: on a new LocalCluster, or connected to ``scheduler``.

    The LocalCluster has ``workers`` processes of one thread, listens on loopback only, has
    no dashboard (its HTTP server takes a free loopback port instead of 8787, so two sweeps
    never collide) and logs errors only. Everything is closed on exit.
    """
    from distributed import Client, LocalCluster

    quiet = logging.ERROR
    with warnings.catch_warnings():
        # distributed warns when closing workers that still hold tasks of a cancelled run
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="distributed")
        if scheduler is not None:
            try:
                client = Client(  # type: ignore[no-untyped-call]
                    scheduler, set_as_default=False, timeout=connect_timeout_s
                )
            except (OSError, ValueError, TypeError) as exc:
                msg = (
                    f"cannot use the Dask scheduler `{scheduler}`: {exc}; start one "
                    "(`dask scheduler`, workers with this package installed) or omit --scheduler"
                )
                raise SweepError(msg) from None
            try:
                yield client
            finally:
                client.close()  # type: ignore[no-untyped-call]
            return
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=quiet,
        )
        try:
            client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
            try:
                yield client
            finally:
                client.close()  # type: ignore[no-untyped-call]
        finally:
            cluster.close()


def execute(
    tasks: Sequence[PointTask],
    client: Any,
    *,
    on_done: Callable[[PointOutcome], None],
) -> str:
    """Submit every task (``retries=1``); call ``on_done`` as each finishes or fails.

    Task keys are ``tlbreplay-point-<point>-<run>``, ``run`` a random token of this call, so
    two sweeps on one shared cluster never share a key. Returns the key prefix of this run.
    """
    from distributed import as_completed

    run = uuid.uuid4().hex[:12]
    ordered = sorted(tasks, key=lambda t: (t.variant.variant, t.point))
    futures = {
        client.submit(run_point, t, key=task_key(t.point, run), pure=False, retries=1): t
        for t in ordered
    }
    for future in as_completed(list(futures), loop=client.loop):  # type: ignore[no-untyped-call]
        task = futures[future]
        if future.status == "finished":
            on_done(PointOutcome(task.point, tables=future.result()))
        else:
            exc = future.exception()
            on_done(PointOutcome(task.point, error=str(exc) or type(exc).__name__))
        future.release()
    return run


def task_key(point: int, run: str) -> str:
    """The Dask key of ``point`` in sweep run ``run``."""
    return f"tlbreplay-point-{point}-{run}"


# -- RESULTS ----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` wrote and which points failed (point id -> message)."""

    out: Path
    manifest: dict[str, Any]
    failed: dict[int, str]
    run: str = ""  # the Dask key token of the run (see :func:`execute`)


def points_frame(plan: SweepPlan, failed: dict[int, str]) -> pl.DataFrame:
    """Rows of table points: id, setting, seeds, status, error and every grid key."""
    settings: dict[tuple[tuple[str, Value], ...], int] = {}
    by_point = {t.point: t for t in plan.tasks}
    rows = []
    for point in plan.points:
        setting = settings.setdefault(point.setting(), len(settings))
        task = by_point[point.point]
        row: dict[str, Any] = {
            "point": point.point,
            "setting": setting,
            "workload": task.variant.variant,
            "replay_seed": task.seed,
            "status": "failed" if point.point in failed else "ok",
            "error": failed.get(point.point),
        }
        for name in KEYS:
            row[name] = point.values.get(name)
        rows.append(row)
    from pipeline.schema import table_schema

    return pl.DataFrame(rows, schema=table_schema("points").polars())


def run_sweep(
    spec_path: Path,
    grid_path: Path,
    out: Path,
    *,
    scheduler: str | None = None,
    seed: int | None = None,
    workers: int = LOCAL_WORKERS,
    progress: Callable[[int], None] | None = None,
    plan: SweepPlan | None = None,
    client: Any = None,
) -> SweepResult:
    """Plan, run every point on Dask, write RESULTS atomically (failed points recorded).

    ``client``: an existing ``distributed.Client`` to use (else one is made and closed here).
    """
    from pipeline import __version__
    from pipeline.schema import atomic_output_dir, write_manifest, write_parquet, write_partitioned

    if plan is None:
        plan = plan_sweep(spec_path, grid_path, seed=seed)
    failed: dict[int, str] = {}
    rows = dict.fromkeys(RESULT_TABLES, 0)
    with atomic_output_dir(Path(out)) as tmp:

        def write_point(outcome: PointOutcome) -> None:
            if outcome.error is not None:
                failed[outcome.point] = outcome.error
            else:
                meta = {"point": outcome.point, "seed": plan.seed}
                for name in RESULT_TABLES:
                    table = outcome.tables[name]
                    rows[name] += table.num_rows
                    root = tmp / name / POINT_DIR.format(outcome.point)
                    write_partitioned(table, root, name, params=meta)
            if progress is not None:
                progress(1)

        if client is not None:
            run = execute(plan.tasks, client, on_done=write_point)
        else:
            with dask_client(scheduler, workers) as own:
                run = execute(plan.tasks, own, on_done=write_point)
        points = points_frame(plan, failed)
        write_parquet(points, tmp / "points.parquet", "points", params={"seed": plan.seed})
        policies = list(dict.fromkeys(t.policy for t in plan.tasks))
        manifest = {
            "kind": "results",
            "tool_version": __version__,
            "dataset": None,
            "policies": policies,
            "params": {"epoch_ms": plan.spec_epoch_ms},
            "epoch_ms": plan.spec_epoch_ms,
            "seed": plan.seed,
            "sweep": {
                "spec": str(Path(spec_path).resolve()),
                "spec_sha256": plan.variants[0].spec_sha256 if plan.variants else None,
                "grid": str(Path(grid_path).resolve()),
                "axes": {k: list(v) for k, v in plan.grid.axes.items()},
                "fixed": plan.grid.fixed,
                "keys": plan.grid.key_names(),
                "workload_keys": [
                    k for k in KEYS if k in WORKLOAD_KEYS and k in plan.grid.key_names()
                ],
                "points": len(plan.points),
                "workloads": len(plan.variants),
                "scheduler": scheduler or "local",
                "partition": "point",
            },
            "failed": [{"point": p, "error": failed[p]} for p in sorted(failed)],
            "rows": rows,
        }
        write_manifest(tmp, manifest)
    return SweepResult(out=Path(out), manifest=manifest, failed=failed, run=run)
