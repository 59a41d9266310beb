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

Constant memory (ADR 0120, 0130): the event tables are streamed in batches of ``BATCH_ROWS``
rows (:mod:`pipeline.ingest.derive_stream`); the fault rows of an (epoch, vCPU) slice are
sorted once, summed per (vm, epoch, vcpu, write, gfn) and range-compressed as soon as no later
row can belong to it. When the rows are in time order (tracefs text, one source) that is after
the batch that holds the epoch's last row. Otherwise (a ``trace-cmd report`` that interleaves
CPUs, several sources, or an epoch of more than ``BUCKET_ROWS`` rows) the rows are spilled to
temporary files in buckets of consecutive slices of at most ``BUCKET_ROWS`` rows and each
bucket is compressed in order (when all rows fit one bucket they are held, not spilled).
Either way the rows are identical to counting the whole table at once. ``accesses`` is
written in parts of about ``PART_ROWS`` rows
(``accesses/part-NNNNN.parquet``, VM by VM in name order); a part never splits an epoch of a VM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.ingest.derive_stream import (
    ACCESS_DTYPES,
    AccessParts,
    Counter,
    Emitter,
    EpochLayout,
    buckets,
    stream_ordered,
    stream_spilled,
)
from pipeline.ingest.points import Points, reduced_runs
from pipeline.model.knobs import NUMA_KNOB_DEFAULTS
from pipeline.schema import conform, table_schema

PAGE_SHIFT = 12
HUGE_PAGE_BYTES = 2 << 20
DAMON_VCPU = 0  # DAMON does not know the vCPU; its accesses are attributed to vCPU 0
DEFAULT_VM = "vm0"
BATCH_ROWS = 1 << 18  # event rows read per batch
BUCKET_ROWS = 4 << 20  # fault rows per spill bucket (out of time order, or a long epoch)
PART_ROWS = 4 << 20  # accesses rows per part file (closed at an epoch boundary)

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
    """Where the vCPU accesses come from and how to read them batch by batch.

    A table of at most ``hold_rows`` rows (the rows of one spill bucket: ~26 bytes each as
    held) is read from Parquet once; the later passes over it take the batches kept by the
    first whole one (issue 13: reading the table back was a third of derive).
    """

    source: str
    rows: int
    index: dict[int, int] = field(default_factory=dict)  # pid -> vCPU (kvm_mmu_spte_requested)
    hold_rows: int = 0
    _held: list[pl.DataFrame] | None = field(default=None, repr=False)

    def batches(self, root: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
        """(ts_ns, pid, vcpu, gfn, write) per fault, in table order."""
        if self._held is not None:
            yield from self._held
            return
        held: list[pl.DataFrame] | None = [] if self.rows <= self.hold_rows else None
        for b in self._read(root, batch_rows):
            if held is not None:
                held.append(b)
            yield b
        if held is not None:
            self._held = held  # only once every batch was read

    def _read(self, root: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
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
    differs (:func:`pipeline.ingest.points.reduced_runs`; one sort of packed keys, no group-by).
    Distinct points are expected (equal points would be summed first); runs come sorted by
    vm, epoch, vcpu, write, gfn_start.
    """
    vm_names = points["vm"].unique().sort()
    vm_index = points.select(pl.col("vm").rank("dense").cast(pl.Int32) - 1)["vm"].to_numpy()
    p = Points(
        vm_index,
        points["epoch"].to_numpy().astype(np.int64),
        points["vcpu"].to_numpy().astype(np.int32),
        points["write"].to_numpy().astype(np.bool_),
        points["gfn"].to_numpy().astype(np.int64),
        points["nr_accesses"].to_numpy().astype(np.int64),
    )
    cols = reduced_runs(p)
    frame = pl.DataFrame(cols, schema=ACCESS_DTYPES)
    vm = pl.col("vm").replace_strict(
        dict(enumerate(vm_names.to_list())), return_dtype=vm_names.dtype
    )
    return frame.with_columns(vm).select(table_schema("accesses").names)


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
    faults.hold_rows = bucket_rows
    t0 = t0_ns if t0_ns is not None else 0
    epoch = _epoch(t0, epoch_ms)
    layout = EpochLayout(epoch)
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
    counter = Counter(_vm_assigner(vms, names), ram_pages, epoch)
    parts = AccessParts(root, names, params, part_rows)
    emitter = Emitter(parts, _damon_rows(root, vms, t0, epoch_ms), names)
    try:
        batches = faults.batches(root, batch_rows)
        if layout.ordered and layout.largest_epoch_rows() <= bucket_rows:
            stream_ordered(batches, counter=counter, emitter=emitter, tick=tick)
        else:  # out of order, or an epoch too long to hold: buckets of (epoch, vCPU) slices
            keys, rows = layout.histogram()
            starts = buckets(keys, rows, bucket_rows)
            stream_spilled(
                batches, root, counter=counter, emitter=emitter, starts=starts, tick=tick
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
