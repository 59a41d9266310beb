"""Derive the engine's inputs (tables ``accesses`` and ``vms``) from ingested ftrace tables.

Accesses (KERNEL.md 5.4, 10a):

* ``kvm:kvm_page_fault`` (EPT violation / NPF, arch/x86/kvm/trace.h): one access to
  ``gfn = gpa >> 12`` by vCPU ``vcpu``; a write when bit 1 of ``error_code`` is set (VMX exit
  qualification bit 1 "data write", SVM PFERR_WRITE_MASK: both bit 1).
* Without any kvm_page_fault (a shadow MMU such as kvm_pvm never fires it), each
  ``kvmmmu:kvm_mmu_spte_requested`` is a guest (re)fault: an access to ``gfn`` by the vCPU
  whose thread emitted it (index of the pid in the VM's ``vcpu_tids``, else order of first
  appearance); the printk carries no access type, so ``write`` is false.
* ``damon:damon_aggregated`` regions with ``nr_accesses > 0``: ``nr_accesses`` accesses to
  every page of ``[start, end)``, mapped from host virtual to guest physical through the VM's
  regions when the address falls in one, else read as a physical address, clipped to guest
  RAM. DAMON does not know the vCPU: its accesses are attributed to vCPU 0.

Faults on frames outside the VM's RAM (MMIO, firmware) cannot be replayed; they are dropped
and counted (manifest ``accesses_outside_ram``), as are faults of threads that are in no VM's
``vcpu_tids`` when the sidecar has several VMs (``accesses_unassigned``).

Epoch ``e`` covers ``[t0 + e*epoch_ms, t0 + (e+1)*epoch_ms)`` where ``t0`` is the first
event's ``ts_ns``. Rows are range-compressed: maximal runs of consecutive gfns with the same
(vm, epoch, vcpu, write, nr_accesses).

Constant memory (ADR 0120): the event tables are streamed in batches of ``BATCH_ROWS`` rows,
each batch is counted per (vm, epoch, vcpu, write, gfn) and an epoch is range-compressed and
written as soon as no later row can belong to it. When the rows are in time order (tracefs
text, one source) that is after the batch that holds the epoch's last row. Otherwise (a
``trace-cmd report`` that interleaves CPUs, several sources) the per-batch counts are spilled
to temporary Parquet files in buckets of consecutive epochs of at most ``BUCKET_ROWS`` events
and each bucket is compressed in epoch order. Either way the rows are identical to counting
the whole table at once. ``accesses`` is written in parts of about ``PART_ROWS`` rows
(``accesses/part-NNNNN.parquet``, VM by VM in name order); a part never splits an epoch of a VM.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.model.knobs import NUMA_KNOB_DEFAULTS
from pipeline.schema import ParquetStream, conform, table_schema

PAGE_SHIFT = 12
HUGE_PAGE_BYTES = 2 << 20
DAMON_VCPU = 0  # DAMON does not know the vCPU; its accesses are attributed to vCPU 0
DEFAULT_VM = "vm0"
BATCH_ROWS = 1 << 18  # event rows read per batch
BUCKET_ROWS = 4 << 20  # event rows per spill bucket when the table is not in time order
SPILL_ROWS = 2 << 20  # counted points held before they are merged (in order) or spilled
PART_ROWS = 4 << 20  # accesses rows per part file (closed at an epoch boundary)
KEYS = ["vm", "epoch", "vcpu", "write"]
POINT_KEYS = [*KEYS, "gfn"]
POINTS_SCHEMA = {
    "vm": pl.Int32,  # index of the VM in name order while counting
    "epoch": pl.Int64,
    "vcpu": pl.Int32,
    "write": pl.Boolean,
    "gfn": pl.Int64,
    "nr_accesses": pl.Int64,
}

Progress = Callable[[int, int], None]
"""``progress(rows_done, rows_total)``: event rows streamed so far, over all passes."""


@dataclass(frozen=True)
class Derived:
    """What derive produced, plus the counts the manifest records."""

    vms: pl.DataFrame
    accesses_rows: int
    parts: list[Path]
    access_source: str
    unassigned: int
    outside_ram: int


def _path(root: Path, event: str) -> Path:
    return root / "ftrace" / f"{event}.parquet"


def _scan(root: Path, event: str) -> pl.LazyFrame:
    """Table ``ftrace/<event>`` of the dataset being built, lazily (empty if absent)."""
    path = _path(root, event)
    if not path.is_file():
        return pl.LazyFrame(schema=table_schema(f"ftrace/{event}").polars())
    return pl.scan_parquet(path)


def _nrows(root: Path, event: str) -> int:
    """Row count of table ``ftrace/<event>`` from the Parquet footer (0 if absent)."""
    path = _path(root, event)
    if not path.is_file():
        return 0
    with pq.ParquetFile(path) as f:
        return int(f.metadata.num_rows)


def _batches(root: Path, event: str, columns: list[str], batch_rows: int) -> Iterator[pl.DataFrame]:
    """``columns`` of table ``ftrace/<event>`` in batches of ``batch_rows`` rows, in file order."""
    path = _path(root, event)
    if not path.is_file():
        return
    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=batch_rows, columns=columns):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame


def _column_max(root: Path, event: str, columns: list[str], batch_rows: int) -> int | None:
    """Largest value of ``columns`` in table ``ftrace/<event>``, streamed (None if no rows)."""
    top: int | None = None
    for b in _batches(root, event, columns, batch_rows):
        value = b.select(pl.max_horizontal(columns).max()).item()
        if value is not None:
            top = int(value) if top is None else max(top, int(value))
    return top


def _epoch(t0_ns: int, epoch_ms: int) -> pl.Expr:
    return ((pl.col("ts_ns") - t0_ns) // (epoch_ms * 1_000_000)).alias("epoch")


@dataclass
class _Faults:
    """Where the vCPU accesses come from and how to read them batch by batch."""

    source: str
    rows: int
    index: dict[int, int] = field(default_factory=dict)  # pid -> vCPU (kvm_mmu_spte_requested)

    def batches(self, root: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
        """(ts_ns, pid, vcpu, gfn, write) per fault, in table order."""
        if self.source == "kvm_page_fault":
            cols = ["ts_ns", "pid", "vcpu", "gpa", "error_code"]
            for b in _batches(root, self.source, cols, batch_rows):
                yield b.select(
                    "ts_ns",
                    "pid",
                    pl.col("vcpu").cast(pl.Int32),
                    (pl.col("gpa") // (1 << PAGE_SHIFT)).cast(pl.Int64).alias("gfn"),
                    ((pl.col("error_code") // 2) % 2 == 1).alias("write"),
                )
        elif self.source == "kvm_mmu_spte_requested":
            vcpu = pl.col("pid").replace_strict(self.index, default=None, return_dtype=pl.Int32)
            for b in _batches(root, self.source, ["ts_ns", "pid", "gfn"], batch_rows):
                yield b.select(
                    "ts_ns",
                    "pid",
                    vcpu.alias("vcpu"),
                    pl.col("gfn").cast(pl.Int64),
                    pl.lit(False).alias("write"),
                )


def _fault_rows(
    root: Path, vms: pl.DataFrame | None, batch_rows: int, tick: Callable[[int], None]
) -> _Faults:
    """Which event the faults come from; for kvm_mmu_spte_requested also the pid -> vCPU map."""
    rows = _nrows(root, "kvm_page_fault")
    if rows:
        return _Faults("kvm_page_fault", rows)
    rows = _nrows(root, "kvm_mmu_spte_requested")
    if rows == 0:
        return _Faults("none", 0)
    index: dict[int, int] = {}
    if vms is not None and vms.height > 1:
        for row in vms.iter_rows(named=True):
            index |= {int(t): i for i, t in enumerate(row["vcpu_tids"] or [])}
        return _Faults("kvm_mmu_spte_requested", rows, index)
    order: dict[int, None] = {}
    if vms is not None and vms.height:
        order = dict.fromkeys(int(t) for t in (vms.row(0, named=True)["vcpu_tids"] or []))
    for b in _batches(root, "kvm_mmu_spte_requested", ["pid"], batch_rows):
        for pid in b["pid"].drop_nulls().unique(maintain_order=True).to_list():
            order.setdefault(int(pid))
        tick(b.height)
    return _Faults("kvm_mmu_spte_requested", rows, {pid: i for i, pid in enumerate(order)})


def _passes(root: Path, vms: pl.DataFrame | None) -> int:
    """How many times derive streams the fault table (for the progress total)."""
    passes = 2  # epoch layout (and the inferred VM), counting
    spte = _nrows(root, "kvm_page_fault") == 0 and _nrows(root, "kvm_mmu_spte_requested") > 0
    return passes + (spte and (vms is None or vms.height <= 1))


def _vm_assigner(vms: pl.DataFrame, names: list[str]) -> pl.Expr:
    """``vm`` as an index into ``names``: the only VM, or the VM whose vcpu_tids hold the pid.

    Null when no VM's vcpu_tids hold it. Counting and sorting on an integer instead of the
    name halves the cost of a batch; ``names`` is sorted, so the index sorts like the name.
    """
    if len(names) == 1:
        return pl.lit(0, pl.Int32).alias("vm")
    owner = {
        int(t): names.index(str(r["vm"]))
        for r in vms.iter_rows(named=True)
        for t in (r["vcpu_tids"] or [])
    }
    return pl.col("pid").replace_strict(owner, default=None, return_dtype=pl.Int32).alias("vm")


def compress_runs(points: pl.DataFrame) -> pl.DataFrame:
    """(vm, epoch, vcpu, write, gfn, nr_accesses) points -> maximal runs (table accesses).

    A run starts where the keys change, the gfn is not the previous one + 1, or the count
    differs; its length is the distance to the next start (no group-by: one sort, one filter).
    """
    keys = ["vm", "epoch", "vcpu", "write"]
    p = points.sort([*keys, "gfn"])
    brk = (
        pl.any_horizontal([pl.col(k) != pl.col(k).shift(1) for k in keys])
        | (pl.col("gfn") != pl.col("gfn").shift(1) + 1)
        | (pl.col("nr_accesses") != pl.col("nr_accesses").shift(1))
    ).fill_null(True)
    starts = p.with_row_index("_i").filter(brk)
    ends = starts["_i"].shift(-1, fill_value=p.height)
    runs = starts.select(
        *keys,
        pl.col("gfn").alias("gfn_start"),
        (ends - starts["_i"]).cast(pl.Int64).alias("nr_pages"),
        "nr_accesses",
    )
    return runs.select(table_schema("accesses").names)


def _damon_rows(root: Path, vms: pl.DataFrame, t0_ns: int, epoch_ms: int) -> pl.DataFrame:
    damon = _scan(root, "damon_aggregated").filter(pl.col("nr_accesses") > 0).collect()
    cols = table_schema("accesses").names
    if damon.height == 0:
        return pl.DataFrame(schema=table_schema("accesses").polars()).select(cols)
    first = vms.row(0, named=True)
    vm, regions = str(first["vm"]), first["regions"] or []
    start, end = pl.col("start").cast(pl.Int64), pl.col("end").cast(pl.Int64)
    gpa_start, gpa_end = start, end
    for r in regions:
        lo, size = int(r["hva_start"]), int(r["size_bytes"])
        inside = (start >= lo) & (end <= lo + size) & pl.lit(lo > 0)
        shift = int(r["gpa_start"]) - lo
        gpa_start = pl.when(inside).then(start + shift).otherwise(gpa_start)
        gpa_end = pl.when(inside).then(end + shift).otherwise(gpa_end)
    page = 1 << PAGE_SHIFT
    ram_pages = int(first["mem_bytes"]) // page
    first_gfn = (gpa_start // page).clip(0, ram_pages)
    end_gfn = ((gpa_end + page - 1) // page).clip(0, ram_pages)
    return damon.select(
        pl.lit(vm).alias("vm"),
        _epoch(t0_ns, epoch_ms),
        pl.lit(DAMON_VCPU, pl.Int32).alias("vcpu"),
        first_gfn.alias("gfn_start"),
        (end_gfn - first_gfn).alias("nr_pages"),
        pl.col("nr_accesses").cast(pl.Int64),
        pl.lit(False).alias("write"),
    ).filter(pl.col("nr_pages") > 0)


def infer_vms(
    root: Path,
    faults: _Faults,
    *,
    batch_rows: int = BATCH_ROWS,
    tick: Callable[[int], None] = lambda _n: None,
    on_batch: Callable[[pl.DataFrame], None] = lambda _b: None,
) -> pl.DataFrame:
    """One VM row from what the trace shows; ``inferred`` is true.

    vcpus and their thread ids from the fault rows (a vCPU's thread: the pid of its earliest
    fault); memory = the highest gfn touched, rounded up to 2 MiB; host nodes from the node
    ids in sched_*_numa events (else 1); the secondary MMU is ``tdp`` when TDP-only events
    (kvm_tdp_mmu_spte_changed, kvm_page_fault) appear, else ``shadow`` when
    kvm_mmu_spte_requested does. Values the trace cannot show take the kernel defaults (scan
    knobs), 0 (node memory: unknown) or empty (pinned ranges). Streams the fault table once,
    handing each batch to ``on_batch`` too.
    """
    first: dict[int, tuple[int, int]] = {}  # vcpu -> (earliest ts_ns, its pid)
    max_gfn: int | None = None
    for b in faults.batches(root, batch_rows):
        tick(b.height)
        on_batch(b)
        top = b["gfn"].max()
        if top is not None:
            max_gfn = int(top) if max_gfn is None else max(max_gfn, int(top))  # type: ignore[arg-type]
        firsts = (
            b.drop_nulls(["vcpu", "pid"])
            .group_by("vcpu")
            .agg(pl.col("ts_ns").min(), pl.col("pid").get(pl.col("ts_ns").arg_min()))
        )
        for v, ts, pid in firsts.iter_rows():
            if v not in first or ts < first[v][0]:  # a tie keeps the earlier row
                first[v] = (ts, pid)
    vcpus = max(first) + 1 if first else 1
    tids = [0] * vcpus
    for v, (_ts, pid) in first.items():
        tids[int(v)] = int(pid)
    mem = ((max_gfn + 1) << PAGE_SHIFT) if max_gfn is not None else HUGE_PAGE_BYTES
    mem = -(-mem // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    max_nid = -1
    for event in ("sched_move_numa", "sched_stick_numa", "sched_swap_numa"):
        value = _column_max(root, event, ["src_nid", "dst_nid"], batch_rows)
        if value is not None:
            max_nid = max(max_nid, value)
    nodes = max_nid + 1 if max_nid >= 0 else 1
    tdp = _nrows(root, "kvm_tdp_mmu_spte_changed") or _nrows(root, "kvm_page_fault")
    shadow = _nrows(root, "kvm_mmu_spte_requested")
    top_level = _column_max(root, "kvm_mmu_spte_requested", ["level"], batch_rows)
    row: dict[str, Any] = {
        "vm": DEFAULT_VM,
        "mem_bytes": mem,
        "vcpus": vcpus,
        "vcpu_nodes": [0] * vcpus,
        "vcpu_tids": tids,
        "host_nodes": nodes,
        "host_node_mem_bytes": [0] * nodes,
        "regions": [
            {
                "name": "ram",
                "gpa_start": 0,
                "hva_start": 0,
                "size_bytes": mem,
                "backing": "anon",
                "thp": top_level is not None and top_level >= 2,
                "mof_policy": False,
                "placement": "first-touch",
                "pinned": [],
            }
        ],
        "numa_balancing": 1,
        **NUMA_KNOB_DEFAULTS,
        "preempt": "voluntary",
        "mmu": "tdp" if tdp else ("shadow" if shadow else "tdp"),
        "kernel": None,
        "inferred": True,
    }
    frame = pl.DataFrame([row], schema=table_schema("vms").polars())
    return pl.from_arrow(conform(frame, "vms"))  # type: ignore[return-value]


class _AccessParts:
    """``accesses/part-NNNNN.parquet``: VM by VM in name order, a part closed between epochs.

    Each VM's parts are staged under ``.accesses-staging/`` while the epochs stream in (all
    VMs at once) and numbered in VM order on :meth:`close`, so the files read in name order
    are sorted by vm, epoch, vcpu, gfn_start. Rows are conformed, compressed and written by a
    background thread (Arrow and zstd release the GIL), overlapping the counting; at most
    two batches wait for it.
    """

    def __init__(self, root: Path, vms: list[str], params: dict[str, Any] | None, part_rows: int):
        self.root = root
        self.params = params
        self.part_rows = part_rows
        self.rows = 0
        self._stage = root / ".accesses-staging"
        self._vms = vms
        self._files: dict[str, list[Path]] = {vm: [] for vm in self._vms}
        self._open: dict[str, ParquetStream] = {}
        self._queue: queue.Queue[pl.DataFrame | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="derive-write", daemon=True)
        self._thread.start()

    def add(self, accesses: pl.DataFrame) -> None:
        """Append rows sorted by vm, epoch, vcpu, gfn_start that hold whole epochs."""
        self._raise()
        self._queue.put(accesses)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def _write(self, accesses: pl.DataFrame) -> None:
        for (vm,), rows in accesses.partition_by("vm", as_dict=True, maintain_order=True).items():
            stream = self._open.get(str(vm))
            if stream is not None and stream.rows >= self.part_rows:
                stream.close()
                stream = None
            if stream is None:
                files = self._files[str(vm)]
                name = f"vm{self._vms.index(str(vm)):05d}-{len(files):05d}.parquet"
                files.append(self._stage / name)
                stream = ParquetStream(files[-1], "accesses", params=self.params)
                self._open[str(vm)] = stream
            stream.write(rows)
            self.rows += rows.height

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> list[Path]:
        """Close every part and number them part-00000... in VM order; the part paths."""
        self._stop()
        self._raise()
        for stream in self._open.values():
            stream.close()
        self._open = {}
        out = self.root / "accesses"
        out.mkdir(parents=True, exist_ok=True)
        staged = [p for vm in self._vms for p in self._files[vm]]
        parts = [out / f"part-{i:05d}.parquet" for i in range(len(staged))]
        for src, dst in zip(staged, parts, strict=True):
            src.rename(dst)
        if not parts:  # no accesses at all: one empty part
            parts = [out / "part-00000.parquet"]
            ParquetStream(parts[0], "accesses", params=self.params).close()
        if self._stage.exists():
            self._stage.rmdir()
        return parts

    def abort(self) -> None:
        self._stop()
        for stream in self._open.values():
            stream.abort()
        self._open = {}


class _Emitter:
    """Turns counted points of finished epochs (plus DAMON rows) into sorted accesses rows."""

    def __init__(self, parts: _AccessParts, damon: pl.DataFrame, names: list[str]) -> None:
        self.parts = parts
        self._names = dict(enumerate(names))
        index = {n: i for i, n in self._names.items()}
        self._damon = damon.with_columns(pl.col("vm").replace_strict(index, return_dtype=pl.Int32))

    def emit(self, points: pl.DataFrame, below: int | None) -> None:
        """``points`` hold every fault of epochs ``< below`` not emitted yet (None: all)."""
        if points.height:
            summed = points.group_by(POINT_KEYS).agg(pl.col("nr_accesses").sum())
            runs = compress_runs(summed)
        else:
            runs = pl.DataFrame(schema={**table_schema("accesses").polars(), "vm": pl.Int32})
        damon = self._damon
        if below is not None:
            damon, self._damon = (
                damon.filter(pl.col("epoch") < below),
                damon.filter(pl.col("epoch") >= below),
            )
        else:
            self._damon = damon.clear()
        if runs.height == 0 and damon.height == 0:
            return
        rows = pl.concat([runs, damon], how="vertical_relaxed").sort(
            ["vm", "epoch", "vcpu", "gfn_start", "write"], maintain_order=True
        )
        vm = pl.col("vm").replace_strict(self._names, return_dtype=pl.String)
        self.parts.add(rows.with_columns(vm))


@dataclass
class _Counter:
    """Counts each batch of fault rows per (vm, epoch, vcpu, write, gfn) and what was dropped."""

    vm: pl.Expr
    ram_pages: dict[int, int]
    epoch: pl.Expr
    unassigned: int = 0
    outside_ram: int = 0

    def points(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = batch.with_columns(self.vm)
        usable = (pl.col("vcpu").is_not_null() & pl.col("vm").is_not_null()).fill_null(False)
        ram = pl.col("vm").replace_strict(self.ram_pages, default=0, return_dtype=pl.Int64)
        in_ram = ((pl.col("gfn") >= 0) & (pl.col("gfn") < ram)).fill_null(False)
        flags = rows.select(usable.alias("usable"), (usable & in_ram).alias("kept"))
        n_usable, n_kept = int(flags["usable"].sum()), int(flags["kept"].sum())
        self.unassigned += rows.height - n_usable
        self.outside_ram += n_usable - n_kept
        return (
            rows.filter(flags["kept"])
            .with_columns(self.epoch)
            .group_by(POINT_KEYS)
            .agg(pl.len().cast(pl.Int64).alias("nr_accesses"))
            .select(list(POINTS_SCHEMA))
            .cast(POINTS_SCHEMA)  # type: ignore[arg-type]
        )


class _EpochLayout:
    """Whether the fault rows are in epoch order, and the rows per epoch, batch by batch."""

    def __init__(self, epoch: pl.Expr) -> None:
        self._epoch = epoch
        self.ordered = True
        self._last: int | None = None
        self._counts: list[pl.DataFrame] = []

    def add(self, batch: pl.DataFrame) -> None:
        e = batch.select(self._epoch)["epoch"]
        if e.is_empty():
            return
        if (self._last is not None and e[0] < self._last) or not e.is_sorted():
            self.ordered = False
        self._last = e[-1]
        self._counts.append(e.value_counts(name="rows"))
        if len(self._counts) > 64:
            self._counts = [self.histogram()]

    def histogram(self) -> pl.DataFrame:
        """(epoch, rows) sorted by epoch."""
        if not self._counts:
            return pl.DataFrame(schema={"epoch": pl.Int64, "rows": pl.UInt32})
        return pl.concat(self._counts).group_by("epoch").agg(pl.col("rows").sum()).sort("epoch")


def _stream_ordered(
    faults: _Faults,
    root: Path,
    *,
    counter: _Counter,
    emitter: _Emitter,
    batch_rows: int,
    tick: Callable[[int], None],
) -> None:
    """Rows in epoch order: an epoch is emitted once a batch starts a later one."""
    pending: list[pl.DataFrame] = []
    held = 0
    for b in faults.batches(root, batch_rows):
        tick(b.height)
        if b.is_empty():
            continue
        pending.append(counter.points(b))
        held += pending[-1].height
        last_epoch = int(b.select(counter.epoch)["epoch"][-1])
        lowest = min((int(p["epoch"].min()) for p in pending if p.height), default=last_epoch)  # type: ignore[arg-type]
        if lowest < last_epoch:
            held_points = pl.concat(pending)
            done = held_points.filter(pl.col("epoch") < last_epoch)
            emitter.emit(done, last_epoch)
            pending = [held_points.filter(pl.col("epoch") >= last_epoch)]
            held = pending[0].height
        elif held > SPILL_ROWS:  # one long epoch: merge its counts
            merged = pl.concat(pending).group_by(POINT_KEYS).agg(pl.col("nr_accesses").sum())
            pending, held = [merged], merged.height
    emitter.emit(pl.concat(pending) if pending else pl.DataFrame(schema=POINTS_SCHEMA), None)


def _buckets(hist: pl.DataFrame, bucket_rows: int) -> list[int]:
    """First epoch of each bucket of consecutive epochs holding <= ``bucket_rows`` rows."""
    starts: list[int] = []
    size = 0
    for epoch, rows in hist.iter_rows():
        if not starts or size + rows > bucket_rows:
            starts.append(int(epoch))
            size = 0
        size += rows
    return starts


def _stream_spilled(
    faults: _Faults,
    root: Path,
    *,
    counter: _Counter,
    emitter: _Emitter,
    starts: list[int],
    batch_rows: int,
    tick: Callable[[int], None],
) -> None:
    """Rows out of epoch order: spill counted points to epoch buckets, emit bucket by bucket."""
    bounds = pl.Series("start", starts, dtype=pl.Int64)
    with tempfile.TemporaryDirectory(dir=root, prefix=".derive-spill-") as tmp:
        spill = Path(tmp)
        held: list[pl.DataFrame] = []
        seq = 0

        def flush() -> None:
            nonlocal held, seq
            if not held:
                return
            frame = pl.concat(held)
            for (bucket,), rows in frame.partition_by("bucket", as_dict=True).items():
                rows.drop("bucket").write_parquet(spill / f"b{bucket:06d}-{seq:06d}.parquet")
            held, seq = [], seq + 1

        for b in faults.batches(root, batch_rows):
            tick(b.height)
            pts = counter.points(b)
            bucket = bounds.search_sorted(pts["epoch"], side="right") - 1
            held.append(pts.with_columns(bucket.alias("bucket")))
            if sum(h.height for h in held) >= SPILL_ROWS:
                flush()
        flush()
        for i in range(len(starts)):
            files = sorted(spill.glob(f"b{i:06d}-*.parquet"))
            points = pl.concat([pl.read_parquet(f) for f in files]) if files else None
            below = starts[i + 1] if i + 1 < len(starts) else None
            emitter.emit(
                points if points is not None else pl.DataFrame(schema=POINTS_SCHEMA), below
            )
            for f in files:
                f.unlink()
    emitter.emit(pl.DataFrame(schema=POINTS_SCHEMA), None)


def derive(
    root: Path,
    *,
    vm_config: Path | None,
    epoch_ms: int,
    t0_ns: int | None,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
    bucket_rows: int = BUCKET_ROWS,
    part_rows: int = PART_ROWS,
) -> Derived:
    """Write ``accesses/`` for the dataset at ``root`` (ftrace/ already written); vms + counts.

    Memory is bounded by ``batch_rows`` event rows, the counted points of the epochs still
    open (or of one spill bucket of ``bucket_rows`` events) and one DAMON table.
    """
    vms: pl.DataFrame | None = None
    if vm_config is not None:
        from pipeline.model.vmmodel import load_vm_file

        vms = load_vm_file(vm_config)
    done, total = 0, 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    total = _passes(root, vms) * (
        _nrows(root, "kvm_page_fault") or _nrows(root, "kvm_mmu_spte_requested")
    )
    faults = _fault_rows(root, vms, batch_rows, tick)
    t0 = t0_ns if t0_ns is not None else 0
    epoch = _epoch(t0, epoch_ms)
    layout = _EpochLayout(epoch)
    if vms is None:
        vms = infer_vms(root, faults, batch_rows=batch_rows, tick=tick, on_batch=layout.add)
    else:
        for b in faults.batches(root, batch_rows):
            tick(b.height)
            layout.add(b)
    names = sorted(str(n) for n in vms["vm"])
    ram_pages = {
        names.index(str(r["vm"])): int(r["mem_bytes"]) >> PAGE_SHIFT
        for r in vms.iter_rows(named=True)
    }
    counter = _Counter(_vm_assigner(vms, names), ram_pages, epoch)
    parts = _AccessParts(root, names, params, part_rows)
    emitter = _Emitter(parts, _damon_rows(root, vms, t0, epoch_ms), names)
    try:
        if layout.ordered:
            _stream_ordered(
                faults, root, counter=counter, emitter=emitter, batch_rows=batch_rows, tick=tick
            )
        else:
            starts = _buckets(layout.histogram(), bucket_rows)
            _stream_spilled(
                faults,
                root,
                counter=counter,
                emitter=emitter,
                starts=starts,
                batch_rows=batch_rows,
                tick=tick,
            )
        paths = parts.close()
    except BaseException:
        parts.abort()
        raise
    source = faults.source
    if source == "none" and parts.rows:
        source = "damon_aggregated"
    if progress is not None:
        progress(total, total)
    return Derived(
        vms=vms,
        accesses_rows=parts.rows,
        parts=paths,
        access_source=source,
        unassigned=counter.unassigned,
        outside_ram=counter.outside_ram,
    )
