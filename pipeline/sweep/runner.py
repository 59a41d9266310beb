"""``tlbreplay sweep``: one replay task per grid point on Dask, results as partitioned Parquet.

The plan (:func:`plan_sweep`) is made in the client and checked whole before any task runs:
the spec is read once, every distinct workload variant (the grid's workload keys, see
:mod:`pipeline.sweep.grid`) is applied to the spec document and validated, and each point
gets its :class:`~pipeline.replay.params.ReplayParams` and a seed derived from the base seed
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

Why one module over 500 lines: planning, running on Dask, resuming and writing a sweep share the
point keys and the partial-results state; the grid's parsing is in :mod:`pipeline.sweep.grid`.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.cluster import LOCAL_WORKERS, TaskFailedError, dask_client
from pipeline.errors import SpecError
from pipeline.model.tomlsource import Source, read_source
from pipeline.replay.params import ReplayParams
from pipeline.sweep.grid import (
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
from pipeline.synth.spec import SynthSpec, load_spec, parse_spec

#: synthesized datasets a worker process keeps (the tasks come sorted by variant)
CACHED_VARIANTS = 2
RESULT_TABLES = ("epochs", "vcpu_epochs", "scans")
POINT_DIR = "point={}"


PointFailedError = TaskFailedError
"""A grid point's task failed: the original exception's type and message, picklable."""


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
    dataset: str | None = None  # an ingested (or synthesized) DATASET every point replays


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
    if Path(spec_path).is_dir():
        return _plan_dataset_sweep(Path(spec_path), grid, seed=seed, base=base)
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


def _plan_dataset_sweep(
    dataset: Path, grid: Grid, *, seed: int | None, base: ReplayParams | None
) -> SweepPlan:
    """The plan of a sweep over a DATASET: engine keys only (an ingested trace fixes the
    workload), every point replaying the same accesses, read by the worker from ``dataset``
    (a path the workers share)."""
    from pipeline.errors import SweepError
    from pipeline.model.fleet import is_fleet
    from pipeline.replay.dataset import open_dataset
    from pipeline.schema import MANIFEST, read_manifest

    manifest = read_manifest(dataset)
    if is_fleet(manifest):
        msg = "a sweep replays one host; pass one host of the fleet (`DATASET/host=H`)"
        raise SweepError(f"{dataset}: {msg}")
    workload = [k for k in grid.key_names() if k in WORKLOAD_KEYS]
    if workload:
        msg = (
            f"`{workload[0]}` changes the workload, which a DATASET fixes; only engine keys "
            f"apply to `{dataset}` (docs/scale.md), or sweep its synth spec instead"
        )
        raise SpecError(grid.path, "grid", msg)
    epoch_ms = int(manifest.get("epoch_ms") or 0)
    base_params = base if base is not None else ReplayParams(epoch_ms=epoch_ms)
    open_dataset(dataset, base_params)  # a complete DATASET, or one clear error now
    base_seed = seed if seed is not None else grid.seed if grid.seed is not None else 0
    digest = hashlib.sha256((dataset / MANIFEST).read_bytes()).hexdigest()
    variant = Variant(0, (), {}, digest, str(dataset.resolve()), epoch_ms, str(dataset.resolve()))
    points = grid.points()
    tasks = []
    for point in points:
        check_point_against(point, grid.path, spec_epoch_ms=epoch_ms)
        tasks.append(
            PointTask(
                point=point.point,
                policy=str(point.values["policy"]),
                params=replay_params(point, base_params),
                seed=point_seed(base_seed, point.point),
                variant=variant,
            )
        )
    return SweepPlan(dataset, grid, points, tasks, base_seed, [variant], epoch_ms)


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
    from pipeline.model.vmmodel import vms_frame
    from pipeline.schema import conform, table_schema
    from pipeline.synth.generate import vm_batches
    from pipeline.synth.runner import to_table

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


def point_params(task: PointTask, vms: pl.DataFrame) -> ReplayParams:
    """The engine parameters of a spec point: the default VMM profile around each VM, as
    `tlbreplay replay` of the synth DATASET puts it (ADR 0365), unless the point gives
    hosting, turns it off, or the spec says ``vmm_profile = "none"``."""
    from pipeline.replay.dataset import profile_hosting

    params = task.params
    profile = task.variant.doc.get("vmm_profile", "qemu") != "none"
    if params.hosting or not params.dataset_hosting or not profile:
        return params
    return replace(params, hosting=profile_hosting(vms))


def run_point(task: PointTask) -> dict[str, pa.Table]:
    """Replay one grid point; the result tables as Arrow (raises PointFailedError)."""
    from pipeline.replay.runner import replay_frames

    if task.variant.dataset is not None:
        return _run_dataset_point(task)
    try:
        vms, accesses = _variant_dataset(task.variant)
        factor = task.params.epoch_ms // task.variant.epoch_ms
        lf = accesses.lazy()
        if factor > 1:
            lf = lf.with_columns(pl.col("epoch") // factor)
        out = replay_frames(vms, lf, [task.policy], point_params(task, vms), task.seed)
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise PointFailedError(msg) from None
    return _arrow_tables(out)


def _arrow_tables(out: Any) -> dict[str, pa.Table]:
    """A ReplayOutput's result tables as Arrow, by name."""
    return {name: getattr(out, name).to_arrow() for name in RESULT_TABLES}


def _run_dataset_point(task: PointTask) -> dict[str, pa.Table]:
    """A point of a DATASET sweep: the DATASET replayed with the point's engine parameters
    (its hosting and busy-vCPU rule as ``tlbreplay replay`` takes them)."""
    from pipeline.replay.dataset import dataset_epochs, open_dataset, resolve_params
    from pipeline.replay.runner import replay_frames

    assert task.variant.dataset is not None
    try:
        ds = open_dataset(Path(task.variant.dataset), task.params)
        params, _ = resolve_params(ds, task.params)
        span = dataset_epochs(ds)  # the span `replay` gives (ADR 0380)
        out = replay_frames(ds.vms, ds.accesses, [task.policy], params, task.seed, span_epochs=span)
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise PointFailedError(msg) from None
    return _arrow_tables(out)


# -- Dask -------------------------------------------------------------------------------------
def execute(
    tasks: Sequence[PointTask],
    client: Any,
    *,
    on_done: Callable[[PointOutcome], None],
) -> str:
    """Submit every task (``retries=1``, grouped by variant); call ``on_done`` as each
    finishes or fails (:func:`pipeline.cluster.run_tasks`: worker code checked, a lost
    scheduler raised). Task keys are ``tlbreplay-point-<point>-<run>``; returns ``run``."""
    from pipeline.cluster import Outcome, Task, run_tasks

    ordered = sorted(tasks, key=lambda t: (t.variant.variant, t.point))

    def done(outcome: Outcome) -> None:
        point = int(str(outcome.key))
        if outcome.error is not None:
            on_done(PointOutcome(point, error=outcome.error))
        else:
            on_done(PointOutcome(point, tables=outcome.result))

    return run_tasks(
        client,
        [Task(t.point, run_point, (t,), f"point-{t.point}") for t in ordered],
        on_done=done,
    )


def task_key(point: int, run: str) -> str:
    """The Dask key of ``point`` in sweep run ``run``."""
    from pipeline.cluster import task_key as key

    return key(f"point-{point}", run)


# -- RESULTS ----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` wrote and which points failed (point id -> message)."""

    out: Path
    manifest: dict[str, Any]
    failed: dict[int, str]
    run: str = ""  # the Dask key token of the run (see :func:`execute`)


def points_frame(
    plan: SweepPlan, failed: dict[int, str], pending: set[int] | frozenset[int] = frozenset()
) -> pl.DataFrame:
    """Rows of table points: id, setting, seeds, status, error and every grid key."""
    settings: dict[tuple[tuple[str, Value], ...], int] = {}
    by_point = {t.point: t for t in plan.tasks}
    rows = []
    for point in plan.points:
        setting = settings.setdefault(point.setting(), len(settings))
        task = by_point[point.point]
        status = "failed" if point.point in failed else "ok"
        row: dict[str, Any] = {
            "point": point.point,
            "setting": setting,
            "workload": task.variant.variant,
            "replay_seed": task.seed,
            "status": "pending" if point.point in pending else status,
            "error": failed.get(point.point),
        }
        for name in KEYS:
            row[name] = point.values.get(name)
        rows.append(row)
    from pipeline.schema import table_schema

    return pl.DataFrame(rows, schema=table_schema("points").polars())


def resumable_points(out: Path, plan: SweepPlan) -> set[int]:
    """The points of an earlier run of the same sweep in ``out`` that finished (status ok and
    their files present): ``--resume`` keeps them. Nothing when ``out`` does not exist; an
    error when it holds another sweep (spec, grid or seed differ)."""
    from pipeline.errors import SweepError
    from pipeline.schema import MANIFEST, read_manifest

    out = Path(out)
    if not (out / MANIFEST).is_file():
        return set()
    old = read_manifest(out)
    block = old.get("sweep") or {}
    now = _sweep_identity(plan)
    then = {k: block.get(k) for k in now} | {"seed": old.get("seed")}
    if old.get("kind") != "results" or then != json.loads(json.dumps(now, default=str)):
        changed = sorted(k for k in now if then.get(k) != json.loads(json.dumps(now[k])))
        msg = (
            f"`{out}` is not an earlier run of this sweep ({', '.join(changed) or 'kind'} "
            "differ); --resume needs the same spec, grid and seed, or choose another `--out`"
        )
        raise SweepError(msg)
    points = pl.read_parquet(out / "points.parquet", columns=["point", "status"])
    # written last, in the same atomic directory as the points' files: `ok` means present
    return set(points.filter(pl.col("status") == "ok")["point"].to_list())


def _sweep_identity(plan: SweepPlan) -> dict[str, Any]:
    return {
        "spec_sha256": plan.variants[0].spec_sha256 if plan.variants else None,
        "axes": {k: list(v) for k, v in plan.grid.axes.items()},
        "fixed": plan.grid.fixed,
        "points": len(plan.points),
        "seed": plan.seed,
    }


def _keep_points(src: Path, dst: Path, points: set[int], rows: dict[str, int]) -> None:
    """Hard-link (else copy) the result files of ``points`` from ``src`` into ``dst``."""
    import os
    import shutil

    import pyarrow.parquet as pq

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    for name in RESULT_TABLES:
        for point in sorted(points):
            part = src / name / POINT_DIR.format(point)
            if not part.is_dir():
                continue
            shutil.copytree(part, dst / name / part.name, copy_function=link)
            for f in (dst / name / part.name).rglob("*.parquet"):
                rows[name] += pq.ParquetFile(f).metadata.num_rows


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
    resume: bool = False,
    force: bool = False,
) -> SweepResult:
    """Plan, run every point on Dask, write RESULTS atomically (failed points recorded).

    ``client``: an existing ``distributed.Client`` to use (else one is made and closed here).
    ``resume``: keep the finished points of an earlier run of the same sweep in ``out`` and
    run only the others. ``out`` that holds anything but RESULTS is refused before any work
    unless ``force`` (ADR 0003). When the scheduler is lost mid-run, the finished points are written
    (the others ``pending`` in points and the manifest) and ClusterError says how to resume.
    """
    from pipeline import __version__
    from pipeline.cluster import SchedulerLostError
    from pipeline.errors import ClusterError
    from pipeline.outdir import atomic_output_dir, check_replaceable
    from pipeline.schema import write_manifest, write_parquet, write_partitioned

    check_replaceable(Path(out), "results", force=force)
    if plan is None:
        plan = plan_sweep(spec_path, grid_path, seed=seed)
    kept = resumable_points(Path(out), plan) if resume else set()
    failed: dict[int, str] = {}
    rows = dict.fromkeys(RESULT_TABLES, 0)
    pending: set[int] = set()
    lost: SchedulerLostError | None = None
    run = ""
    with atomic_output_dir(Path(out), kind="results", force=force) as tmp:
        _keep_points(Path(out), tmp, kept, rows)
        if progress is not None and kept:
            progress(len(kept))
        finished: set[int] = set(kept)

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
            finished.add(outcome.point)
            if progress is not None:
                progress(1)

        todo = [t for t in plan.tasks if t.point not in kept]
        try:
            if todo and client is not None:
                run = execute(todo, client, on_done=write_point)
            elif todo:
                with dask_client(scheduler, workers) as own:
                    run = execute(todo, own, on_done=write_point)
        except SchedulerLostError as exc:
            lost = exc
            pending = {t.point for t in plan.tasks} - finished
        points = points_frame(plan, failed, pending)
        write_parquet(points, tmp / "points.parquet", "points", params={"seed": plan.seed})
        policies = list(dict.fromkeys(t.policy for t in plan.tasks))
        manifest: dict[str, Any] = {
            "kind": "results",
            "tool_version": __version__,
            "dataset": plan.variants[0].dataset if plan.variants else None,
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
        if pending:
            manifest["pending"] = sorted(pending)
        write_manifest(tmp, manifest)
    if lost is not None:
        msg = (
            f"{lost}; the {len(plan.points) - len(pending)} finished points are in {out}: run "
            f"the same command with --resume to finish the other {len(pending)}"
        )
        raise ClusterError(msg)
    return SweepResult(out=Path(out), manifest=manifest, failed=failed, run=run)
