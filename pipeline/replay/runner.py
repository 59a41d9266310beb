"""Run the engine over a DATASET or over frames, for several policies, and write RESULTS.

The public API of stage 2: :class:`ReplayParams`, :func:`replay_frames`,
:func:`replay_dataset`, :func:`run_replay` (docs/engine.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import DatasetError, OutputError
from pipeline.model.hosting import VmHosting, hosting_for
from pipeline.replay.bounds import VmSize, check_memory
from pipeline.replay.cost import CostModel
from pipeline.replay.counters import EPOCH_COUNTERS, PAGE_SIZES, VCPU_COUNTERS
from pipeline.replay.engine import Engine, EngineOptions, VmAccesses, VmRun
from pipeline.replay.kvm import ReschedModel, YieldModel
from pipeline.replay.policies import POLICIES, get_policy
from pipeline.replay.workcost import NumaWorkCost
from pipeline.schema import conform, table_schema

KNOBS = ("scan_delay_ms", "scan_period_min_ms", "scan_period_max_ms", "scan_size_mb")


@dataclass(frozen=True)
class ReplayParams:
    """Engine parameters; every field has a documented default (docs/engine.md).

    * ``epoch_ms`` 100: replay epoch; a multiple of the dataset's epoch_ms.
    * ``scan_size_mb``, ``scan_delay_ms``, ``scan_period_min_ms``, ``scan_period_max_ms``:
      override the VM rows' NUMA-balancing knobs (None: use the dataset).
    * ``yields``: the KVM yield-while-pending model (:class:`YieldModel`).
    * ``cost``: the cost model (:class:`CostModel`).
    * ``mmu``: override every VM's ``mmu`` (``tdp`` | ``shadow``; None: use the dataset).
    * ``preempt``: override every VM's host preemption model (None: use the dataset).
    * ``vmm_thread`` False: also let the VMM main thread run task_numa_work (KERNEL.md §10a).
    * ``shadow_guest_2m`` False: on a shadow MMU, assume the guest maps 2 MiB where the host
      has a THP, so SPTEs are 2M there (else 4K).
    * ``vmm_thread_share`` 0.05: the share of each epoch the VMM main thread runs (it mostly
      sleeps in ppoll()); its runtime drives task_tick_numa() (KERNEL.md §3.3).
    * ``vmm_threads`` 8: QEMU threads besides the vCPUs (main thread, iothreads, RCU, worker
      pool), counted by get_nr_threads() in the v6.12+ forced scan of an inactive VMA
      (kernel/sched/fair.c vma_is_accessed() condition (4), f22cde4371f3, KERNEL.md §3.4).
    * ``busy_vcpus`` None: treat every vCPU as running (in guest mode, gaining runtime) in
      every epoch, not only those with accesses. For real traces, whose accesses come from
      faults only: an idle-looking vCPU would otherwise never tick the scanner. None: on for a
      DATASET from a trace (:func:`from_trace`, ADR 0330), off for frames and synth datasets.
    * ``resched``: the need_resched() yields of the KVM zap walk (:class:`ReschedModel`;
      0 on an idle host, the default).
    * ``work_cost``: CPU time of task_numa_work() per SPTE zapped and PTE changed, for the
      ``node_stamp += 32 * runtime`` cap (:class:`NumaWorkCost`, ADR 0350).
    * ``hosting`` (): per-VM process and host facts (:class:`VmHosting`: the VMM's non-RAM
      VMAs, the vCPUs' CPU share, get_nr_threads(), host load, zap cost; ADR 0320). A VM
      without an entry keeps the defaults (guest RAM only, share 1.0, idle host). Empty:
      a DATASET's ``hosting.parquet`` when there is one and ``dataset_hosting`` (ADR 0330).
    * ``dataset_hosting`` True: use a DATASET's ``hosting.parquet`` (``--no-hosting``: False).
    * ``batch_epochs`` 256: epochs of ``accesses`` read at a time from a DATASET (memory
      bounded by one batch, not the dataset); the results do not depend on it.
    * ``spte_4k`` None: the share of THP-region granules backed by 4K pages, so mapped by 4K
      SPTEs (mixed SPTE levels, ADR 0371); None derives it from the boot profile (granules
      first touched only by 4K-grained accesses).
    * ``thp_fault_fallback`` 0.0: the share of THP-region granules whose THP fault fell back
      to 4K pages on the host (/proc/vmstat thp_fault_fallback; ADR 0371).
    * ``workers`` 1: processes running policies in parallel (0: one per CPU, at most 8, when
      the dataset has at least 200k access rows). The results do not depend on it.
    * ``max_memory_bytes`` None: refuse a replay whose engine arrays are estimated above this
      (None: half the machine's RAM; pipeline/replay/bounds.py, ADR 0380).
    """

    epoch_ms: int = 100
    scan_size_mb: int | None = None
    scan_delay_ms: int | None = None
    scan_period_min_ms: int | None = None
    scan_period_max_ms: int | None = None
    yields: YieldModel = field(default_factory=YieldModel)
    cost: CostModel = field(default_factory=CostModel)
    mmu: str | None = None
    preempt: str | None = None
    vmm_thread: bool = False
    shadow_guest_2m: bool = False
    busy_vcpus: bool | None = None
    vmm_threads: int = 8
    vmm_thread_share: float = 0.05
    resched: ReschedModel = field(default_factory=ReschedModel)
    work_cost: NumaWorkCost = field(default_factory=NumaWorkCost)
    hosting: tuple[VmHosting, ...] = ()
    workers: int = 1
    dataset_hosting: bool = True
    batch_epochs: int = 256
    max_memory_bytes: int | None = None
    spte_4k: float | None = None
    thp_fault_fallback: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplayOutput:
    """The three result tables, conforming to schemas/epochs, vcpu_epochs, scans."""

    epochs: pl.DataFrame
    vcpu_epochs: pl.DataFrame
    scans: pl.DataFrame
    traces: dict[tuple[str, str], list[tuple[str, int, int]]] | None = None


def _check_params(params: ReplayParams) -> None:
    if params.epoch_ms <= 0:
        raise DatasetError("--epoch-ms", f"must be positive, got {params.epoch_ms}")
    for name in KNOBS:
        value = getattr(params, name)
        if value is not None and value <= 0:
            raise DatasetError(f"--{name.replace('_', '-')}", f"must be positive, got {value}")
    if params.batch_epochs <= 0:
        raise DatasetError("batch_epochs", f"must be positive, got {params.batch_epochs}")
    if params.mmu not in (None, "tdp", "shadow"):
        raise DatasetError("mmu", f"unknown mmu `{params.mmu}`; choose tdp or shadow")
    if params.spte_4k is not None and not 0.0 <= params.spte_4k <= 1.0:
        raise DatasetError("spte_4k", f"must be a share in [0, 1], got {params.spte_4k}")
    if not 0.0 <= params.thp_fault_fallback <= 1.0:
        raise DatasetError(
            "--thp-fault-fallback", f"must be a share in [0, 1], got {params.thp_fault_fallback}"
        )
    if params.yields.mode not in ("process", "expected"):
        raise DatasetError("yields", f"unknown mode `{params.yields.mode}`; process or expected")


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


ACCESS_COLUMNS = ("vm", "epoch", "vcpu", "gfn_start", "nr_pages")
SORT_KEYS = ("vm", "epoch", "vcpu", "gfn_start")


def _split_by_vm(frame: pl.DataFrame, names: Sequence[str]) -> dict[str, VmAccesses]:
    """One VM's rows of ``frame`` (sorted by vm, epoch, vcpu, gfn_start) as arrays."""
    out: dict[str, VmAccesses] = {}
    for name in names:
        sub = frame.filter(pl.col("vm") == name)
        out[name] = VmAccesses(
            epoch=sub["epoch"].to_numpy().astype(np.int64),
            vcpu=sub["vcpu"].to_numpy().astype(np.int64),
            gfn_start=sub["gfn_start"].to_numpy().astype(np.int64),
            nr_pages=sub["nr_pages"].to_numpy().astype(np.int64),
        )
    return out


def _sorted(lf: pl.LazyFrame) -> pl.DataFrame:
    # stable: rows with equal keys keep the file order, in memory and in batches alike
    return lf.select(ACCESS_COLUMNS).sort(SORT_KEYS, maintain_order=True).collect()


@dataclass(frozen=True)
class FrameAccesses:
    """Accesses held in memory (``replay_frames``); picklable for worker processes."""

    frame: pl.DataFrame

    def lazy(self) -> pl.LazyFrame:
        return self.frame.lazy()

    def window(self, e0: int, e1: int, names: Sequence[str]) -> dict[str, VmAccesses]:
        sub = self.frame.filter((pl.col("epoch") >= e0) & (pl.col("epoch") < e1))
        return _split_by_vm(sub, names)


@dataclass(frozen=True)
class DatasetAccesses:
    """A DATASET's ``accesses/*.parquet`` read in epoch batches (issue 6). The parts are
    sorted by vm, epoch, vcpu, gfn_start and never split an epoch of a VM, so a filter on
    the epoch reads only the row groups that hold it (parquet statistics); ``factor`` re-bins
    the dataset's epochs to the replay's."""

    files: tuple[str, ...]
    factor: int = 1

    def lazy(self) -> pl.LazyFrame:
        lf = pl.scan_parquet(list(self.files)).select(ACCESS_COLUMNS)
        return lf.with_columns(pl.col("epoch") // self.factor) if self.factor > 1 else lf

    def window(self, e0: int, e1: int, names: Sequence[str]) -> dict[str, VmAccesses]:
        lf = pl.scan_parquet(list(self.files)).select(ACCESS_COLUMNS)
        lf = lf.filter((pl.col("epoch") >= e0 * self.factor) & (pl.col("epoch") < e1 * self.factor))
        if self.factor > 1:
            lf = lf.with_columns(pl.col("epoch") // self.factor)
        return _split_by_vm(_sorted(lf), names)


Accesses = FrameAccesses | DatasetAccesses


@dataclass(frozen=True)
class AccessSummary:
    """What the replay needs to know of the accesses before reading them in batches."""

    n_epochs: int
    rows: int


def _check_accesses(source: Accesses, cfgs: Sequence[Any]) -> AccessSummary:
    """Validate every VM's accesses with one aggregate pass (no rows held in memory)."""
    stats = (
        source.lazy()
        .group_by("vm")
        .agg(
            pl.len().alias("rows"),
            pl.col("epoch").min().alias("epoch_min"),
            pl.col("epoch").max().alias("epoch_max"),
            pl.col("vcpu").min().alias("vcpu_min"),
            pl.col("vcpu").max().alias("vcpu_max"),
            pl.col("nr_pages").min().alias("pages_min"),
            pl.col("gfn_start").min().alias("gfn_min"),
            (pl.col("gfn_start") + pl.col("nr_pages")).max().alias("gfn_end_max"),
        )
        .collect(engine="streaming")
    )
    by_name = {str(r["vm"]): r for r in stats.to_dicts()}
    unknown = sorted(set(by_name) - {c.name for c in cfgs})
    if unknown:
        msg = f"accesses name vms not in vms.parquet: {', '.join(unknown[:5])}"
        raise DatasetError("accesses", msg)
    for cfg in cfgs:
        row = by_name.get(cfg.name)
        if row is None or not row["rows"]:
            continue
        bad = []
        if row["epoch_min"] < 0:
            bad.append("negative epoch")
        if row["vcpu_min"] < 0 or row["vcpu_max"] >= cfg.vcpus:
            bad.append(f"vcpu outside 0..{cfg.vcpus - 1}")
        if row["pages_min"] <= 0:
            bad.append("nr_pages <= 0")
        if row["gfn_min"] < 0 or row["gfn_end_max"] > cfg.nr_pages:
            bad.append(f"gfn outside guest RAM (0..{cfg.nr_pages})")
        if bad:
            raise DatasetError("accesses", f"vm `{cfg.name}`: " + ", ".join(bad))
    n_epochs = max((int(r["epoch_max"]) + 1 for r in by_name.values()), default=0)
    return AccessSummary(n_epochs, sum(int(r["rows"]) for r in by_name.values()))


Traces = dict[tuple[str, str], list[tuple[str, int, int]]]


@dataclass(frozen=True)
class _Job:
    """Everything one policy's replay needs; picklable, so policies can run in processes."""

    policy: str
    rows: list[dict[str, Any]]
    acc: Accesses
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
        engine.run(until=e1, progress=progress)
        del batch
    weights = params.cost.weights()
    return (
        [_epochs_frame(policy.name, r, params.epoch_ms, weights) for r in runs],
        [_vcpu_frame(policy.name, r, params.epoch_ms) for r in runs],
        [_scans_frame(policy.name, r) for r in runs],
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
    _check_params(params)
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
        acc = FrameAccesses(_sorted(lf))
    summary = _check_accesses(acc, cfgs)
    n_epochs, rows_total = max(summary.n_epochs, span_epochs), summary.rows
    jobs = [_Job(n, rows, acc, params, n_epochs, trace, seed) for n in names]
    workers = min(_workers(params, rows_total), len(jobs))
    sizes = [VmSize(c.name, c.nr_pages, c.vcpus) for c in cfgs]
    check_memory(sizes, n_epochs, params.epoch_ms, workers, params.max_memory_bytes)
    if workers > 1 and not trace:
        from pipeline.workers import run_in_workers

        results = run_in_workers(_run_job, jobs, workers, progress)
    else:
        results = [_run_job(job, progress) for job in jobs]
    traces: Traces = {}
    for res in results:
        traces.update(res[3])
    return ReplayOutput(
        epochs=_concat([f for r in results for f in r[0]], "epochs"),
        vcpu_epochs=_concat([f for r in results for f in r[1]], "vcpu_epochs"),
        scans=_concat([f for r in results for f in r[2]], "scans"),
        traces=traces if trace else None,
    )


AUTO_PARALLEL_MIN_ROWS = 200_000  # below this, starting worker processes costs more than it saves


def _workers(params: ReplayParams, rows: int) -> int:
    if params.workers > 0:
        return params.workers
    if rows < AUTO_PARALLEL_MIN_ROWS:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _concat(frames: list[pl.DataFrame], name: str) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.from_arrow(table_schema(name).empty())  # type: ignore[return-value]
    return pl.from_arrow(conform(pl.concat(frames, how="vertical_relaxed"), name))  # type: ignore[return-value]


def _epochs_frame(policy: str, run: VmRun, epoch_ms: int, weights: np.ndarray) -> pl.DataFrame:
    arr = run.counters.epochs  # [epoch, page_size, counter]
    cost = arr.astype(np.float64) @ weights
    e_idx, p_idx = np.nonzero(arr.any(axis=2) | (cost > 0))
    data: dict[str, Any] = {
        "policy": [policy] * e_idx.size,
        "vm": [run.cfg.name] * e_idx.size,
        "page_size": [PAGE_SIZES[i] for i in p_idx.tolist()],
        "epoch": e_idx.astype(np.int64),
        "t_ms": e_idx.astype(np.int64) * epoch_ms,
    }
    for k, name in enumerate(EPOCH_COUNTERS):
        data[name] = arr[e_idx, p_idx, k]
    data["cost_us"] = cost[e_idx, p_idx]
    return pl.DataFrame(data)


def _vcpu_frame(policy: str, run: VmRun, epoch_ms: int) -> pl.DataFrame:
    arr = run.counters.threads  # [epoch, thread, counter]
    e_idx, t_idx = np.nonzero(arr.any(axis=2))
    vcpus = run.cfg.vcpus
    data: dict[str, Any] = {
        "policy": [policy] * e_idx.size,
        "vm": [run.cfg.name] * e_idx.size,
        "vcpu": np.where(t_idx < vcpus, t_idx, -1).astype(np.int32),
        "epoch": e_idx.astype(np.int64),
        "t_ms": e_idx.astype(np.int64) * epoch_ms,
    }
    for k, name in enumerate(VCPU_COUNTERS):
        data[name] = arr[e_idx, t_idx, k]
    data["scan_period_ms"] = run.counters.scan_period_ms[e_idx, t_idx]
    return pl.DataFrame(data)


def _scans_frame(policy: str, run: VmRun) -> pl.DataFrame:
    recs = run.scanner.records
    vcpus = run.cfg.vcpus
    return pl.DataFrame(
        {
            "policy": [policy] * len(recs),
            "vm": [run.cfg.name] * len(recs),
            "epoch": [r.epoch for r in recs],
            "t_ms": [r.t_ms for r in recs],
            "vcpu": [r.thread if r.thread < vcpus else -1 for r in recs],
            "numa_scan_seq": [r.numa_scan_seq for r in recs],
            "scan_period_ms": [r.scan_period_ms for r in recs],
            "gfn_start": [r.gfn_start for r in recs],
            "gfn_end": [r.gfn_end for r in recs],
            "chunks": [r.chunks for r in recs],
            "notifiers": [r.notifiers for r in recs],
            "nr_pte_updates": [r.nr_pte_updates for r in recs],
            "virt_pages": [r.virt_pages for r in recs],
        },
        schema_overrides={"epoch": pl.Int64, "t_ms": pl.Int64, "vcpu": pl.Int32},
    )


# -- DATASET / RESULTS ----------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A DATASET opened for replay: vms, accesses (read in batches), manifest, hosting."""

    vms: pl.DataFrame
    accesses: DatasetAccesses
    manifest: dict[str, Any]
    hosting: tuple[VmHosting, ...]


def open_dataset(dataset: Path, params: ReplayParams) -> Dataset:
    """Read a DATASET's manifest, vms and hosting; its accesses re-binned to
    ``params.epoch_ms`` are read later, in batches."""
    from pipeline.schema import read_manifest, read_parquet

    dataset = Path(dataset)
    if not dataset.exists():
        msg = "no such DATASET directory; make one with `tlbreplay ingest` or `tlbreplay synth`"
        raise DatasetError(dataset, msg)
    manifest = read_manifest(dataset)
    if manifest.get("kind") != "dataset":
        raise DatasetError(dataset, f"manifest kind is `{manifest.get('kind')}`, want `dataset`")
    ds_ms = manifest.get("epoch_ms")
    if not isinstance(ds_ms, int) or ds_ms <= 0:
        raise DatasetError(dataset / "manifest.json", "missing or bad `epoch_ms`")
    if params.epoch_ms % ds_ms:
        raise DatasetError(
            dataset,
            f"--epoch-ms {params.epoch_ms} is not a multiple of the dataset's epoch_ms {ds_ms}; "
            f"use a multiple of {ds_ms}",
        )
    vms_path = dataset / "vms.parquet"
    if not vms_path.is_file():
        raise DatasetError(dataset, "no `vms.parquet`: not a complete DATASET")
    vms = read_parquet(vms_path, "vms")
    files = sorted((dataset / "accesses").glob("*.parquet"))
    if not files:
        raise DatasetError(dataset, "no `accesses/*.parquet`: not a complete DATASET")
    names = pl.scan_parquet([str(f) for f in files]).collect_schema().names()
    missing = [c for c in ACCESS_COLUMNS if c not in names]
    if missing:
        raise DatasetError(files[0], f"accesses lack columns {', '.join(missing)}")
    hosting: tuple[VmHosting, ...] = ()
    if (dataset / "hosting.parquet").is_file():
        from pipeline.model.hosting import hosting_from_frame

        hosting = hosting_from_frame(read_parquet(dataset / "hosting.parquet", "hosting"))
    accesses = DatasetAccesses(tuple(str(f) for f in files), params.epoch_ms // ds_ms)
    return Dataset(vms, accesses, manifest, hosting)


def load_dataset(
    dataset: Path, params: ReplayParams
) -> tuple[pl.DataFrame, pl.LazyFrame, dict[str, Any]]:
    """Read a DATASET's manifest, vms and accesses (lazily), re-binned to ``params.epoch_ms``."""
    ds = open_dataset(dataset, params)
    return ds.vms, ds.accesses.lazy(), ds.manifest


def from_trace(manifest: dict[str, Any], hosting: Sequence[VmHosting] = ()) -> bool:
    """Whether a DATASET comes from a kernel trace (``ingest``, or ``hosting.parquet``), not
    from a synthetic spec: its accesses are the faults of vCPUs that ran all along."""
    if hosting or manifest.get("command") == "ingest":
        return True
    if manifest.get("generator") == "synth" or manifest.get("command") == "synth":
        return False
    paths = [str(s.get("path", "")) for s in manifest.get("sources") or [] if isinstance(s, dict)]
    return any(p and not p.endswith(".toml") for p in paths)


def _facts(h: VmHosting) -> list[str]:
    default = VmHosting(h.vm)
    return [f for f in VmHosting.__dataclass_fields__ if getattr(h, f) != getattr(default, f)]


def _provenance(
    ds: Dataset, hosting: Sequence[VmHosting], origin: str
) -> dict[str, dict[str, str]]:
    """Per VM of the DATASET, each hosting fact's origin for the RESULTS manifest (issue 11):
    the DATASET's record (``hosting_provenance``, written by ingest) when its hosting.parquet
    is used, ``given`` for facts passed in ``ReplayParams.hosting``, else ``defaulted``."""
    recorded = ds.manifest.get("hosting_provenance") or {}
    by_vm = {h.vm: h for h in hosting}
    out: dict[str, dict[str, str]] = {}
    for vm in ds.vms["vm"].to_list():
        h = by_vm.get(str(vm), VmHosting(str(vm)))
        given = set(_facts(h))
        facts = {}
        for name in VmHosting.__dataclass_fields__:
            if name == "vm":
                continue
            if name not in given:
                facts[name] = "defaulted"
            elif origin == "params":
                facts[name] = "given"
            else:
                facts[name] = (recorded.get(str(vm)) or {}).get(name, "measured")
        out[str(vm)] = facts
    return out


def resolve_params(ds: Dataset, params: ReplayParams) -> tuple[ReplayParams, dict[str, Any]]:
    """``params`` completed from the DATASET (ADR 0330): its hosting.parquet unless
    ``params.hosting`` is given or ``params.dataset_hosting`` is False; ``busy_vcpus`` on for
    a dataset from a trace when not given. Also what was used, for the RESULTS manifest."""
    if params.hosting:
        hosting, origin = params.hosting, "params"
    elif params.dataset_hosting and ds.hosting:
        hosting, origin = ds.hosting, "dataset hosting.parquet"
    else:
        hosting, origin = (), "none" if params.dataset_hosting else "none (--no-hosting)"
    busy, busy_from = params.busy_vcpus, "params"
    if busy is None:
        busy = from_trace(ds.manifest, ds.hosting)
        busy_from = "dataset from a trace" if busy else "synthetic dataset"
    used = {
        "hosting": {
            "from": origin,
            "facts": {h.vm: _facts(h) for h in hosting},
            "provenance": _provenance(ds, hosting, origin),
        },
        "busy_vcpus": {"value": busy, "from": busy_from},
    }
    return replace(params, hosting=tuple(hosting), busy_vcpus=busy), used


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


def dataset_epochs(ds: Dataset) -> int:
    """The DATASET's time span in replay epochs (ADR 0380): ``n_epochs`` recorded by ingest
    (first to last event of any kind, or the sidecar's lab window), ``parameters.nr_epochs``
    of a synth dataset; 0 when neither is recorded (the accesses then set the span)."""
    n = ds.manifest.get("n_epochs")
    if n is None:
        n = (ds.manifest.get("parameters") or {}).get("nr_epochs")
    if not isinstance(n, int) or n <= 0:
        return 0
    return -(-n // ds.accesses.factor)


def dataset_seed(manifest: dict[str, Any]) -> int:
    """The seed a replay of this DATASET uses when none is given: the synth seed recorded in
    its manifest (a synthetic boot and its contention draws go together), else 0."""
    seed = manifest.get("seed")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def run_replay(
    dataset: Path,
    out: Path,
    policies: Sequence[str] | None,
    params: ReplayParams = ReplayParams(),
    *,
    quiet: bool = True,
    seed: int | None = None,
    force: bool = False,
) -> Path:
    """Replay and write RESULTS atomically: manifest.json + epochs/, vcpu_epochs/, scans/."""
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
    params, used = resolve_params(ds, params)
    manifest = ds.manifest
    seed_from = "--seed" if seed is not None else "dataset"
    seed = dataset_seed(manifest) if seed is None else seed
    epoch_max = ds.accesses.lazy().select(pl.col("epoch").max()).collect(engine="streaming")
    n_epochs = max(int(epoch_max.item() or 0) + 1, dataset_epochs(ds))
    try:
        with reporter(quiet) as rep:
            task = rep.task(
                f"replay: {len(names)} policies", total=n_epochs * len(names), unit="epochs"
            )
            result = replay_frames(
                ds.vms,
                ds.accesses,
                names,
                params,
                seed,
                progress=lambda done: rep.advance(task, done),
                span_epochs=dataset_epochs(ds),
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
