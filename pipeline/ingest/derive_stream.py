"""Derive's streaming half: fault rows -> slices -> runs -> parts (ADR 0120, 0130).

Fault rows arrive batch by batch (:mod:`pipeline.ingest.derive`). Each batch becomes points
(:mod:`pipeline.ingest.points`) of one access each: no aggregation per batch. A slice is one
(epoch, vCPU); slices are emitted in (epoch, vCPU) order:

* rows in epoch order (:func:`stream_ordered`): the points of an epoch are sorted, summed and
  range-compressed in one pass once a batch starts a later epoch;
* otherwise (:func:`stream_spilled`) points are spilled to ``.npy`` files in buckets of
  consecutive slices holding at most ``bucket_rows`` fault rows each (from the histogram the
  first pass counts), and each bucket is compressed in order. A bucket is bounded whatever
  ``--epoch-ms``: one long epoch is split by vCPU (ADR 0130).

Either way the rows equal counting the whole table at once.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.ingest.points import Points, reduced_runs, slice_key, sort_order
from pipeline.schema import ParquetStream, table_schema

SPILL_ROWS = 2 << 20  # points held before they are reduced (in order) or spilled
ACCESS_DTYPES = {
    "vm": pl.Int32,  # index of the VM in name order while counting
    "epoch": pl.Int64,
    "vcpu": pl.Int32,
    "write": pl.Boolean,
    "gfn_start": pl.Int64,
    "nr_pages": pl.Int64,
    "nr_accesses": pl.Int64,
}
NO_SLICE = None  # emit: every slice is done


class AccessParts:
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
        self._last_epoch: dict[str, int] = {}  # per VM: the epoch its open part ends with
        self._queue: queue.Queue[pl.DataFrame | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="derive-write", daemon=True)
        self._thread.start()

    def add(self, accesses: pl.DataFrame) -> None:
        """Append rows sorted by vm, epoch, vcpu, gfn_start; a later call never holds an
        earlier (epoch, vcpu) of a VM."""
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
            first_epoch = int(rows["epoch"][0])
            if (
                stream is not None
                and stream.rows >= self.part_rows
                and first_epoch != self._last_epoch[str(vm)]  # never split an epoch of a VM
            ):
                stream.close()
                stream = None
            if stream is None:
                files = self._files[str(vm)]
                name = f"vm{self._vms.index(str(vm)):05d}-{len(files):05d}.parquet"
                files.append(self._stage / name)
                stream = ParquetStream(files[-1], "accesses", params=self.params)
                self._open[str(vm)] = stream
            stream.write(rows)
            self._last_epoch[str(vm)] = int(rows["epoch"][-1])
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


class Emitter:
    """Turns the points of finished slices (plus DAMON rows) into sorted accesses rows."""

    def __init__(self, parts: AccessParts, damon: pl.DataFrame, names: list[str]) -> None:
        self.parts = parts
        self._names = dict(enumerate(names))
        index = {n: i for i, n in self._names.items()}
        damon = damon.with_columns(pl.col("vm").replace_strict(index, return_dtype=pl.Int32))
        key = pl.col("epoch") * (1 << 32) + pl.col("vcpu").cast(pl.Int64) + (1 << 31)
        self._damon = damon.with_columns(key.alias("_slice"))

    def emit(self, points: Points, below: int | None) -> None:
        """``points`` hold every fault of the slices ``< below`` (a :func:`slice_key`) not
        emitted yet; None: every slice."""
        cols = reduced_runs(points)
        damon = self._damon
        if below is not None:
            done = pl.col("_slice") < below
            damon, self._damon = damon.filter(done), damon.filter(~done)
        else:
            self._damon = damon.clear()
        if len(cols["vm"]) == 0 and damon.height == 0:
            return
        names = table_schema("accesses").names
        if damon.height == 0:
            order = sort_order([cols[k] for k in ("vm", "epoch", "vcpu", "gfn_start", "write")])
            data = {k: cols[k][order] for k in names}
            rows = pl.DataFrame(data, schema={k: ACCESS_DTYPES[k] for k in names})
        else:
            fault_rows = pl.DataFrame(cols, schema=ACCESS_DTYPES).select(names)
            rows = pl.concat([fault_rows, damon.select(names)], how="vertical_relaxed").sort(
                ["vm", "epoch", "vcpu", "gfn_start", "write"], maintain_order=True
            )
        vm = pl.col("vm").replace_strict(self._names, return_dtype=pl.String)
        self.parts.add(rows.with_columns(vm))


@dataclass
class Counter:
    """Turns a batch of fault rows into points and counts what was dropped."""

    vm: pl.Expr
    ram_pages: dict[int, int]
    epoch: pl.Expr
    unassigned: int = 0
    outside_ram: int = 0

    def points(self, batch: pl.DataFrame) -> Points:
        rows = batch.with_columns(self.vm)
        usable = (pl.col("vcpu").is_not_null() & pl.col("vm").is_not_null()).fill_null(False)
        ram = pl.col("vm").replace_strict(self.ram_pages, default=0, return_dtype=pl.Int64)
        in_ram = ((pl.col("gfn") >= 0) & (pl.col("gfn") < ram)).fill_null(False)
        flags = rows.select(usable.alias("usable"), (usable & in_ram).alias("kept"))
        n_usable, n_kept = int(flags["usable"].sum()), int(flags["kept"].sum())
        self.unassigned += rows.height - n_usable
        self.outside_ram += n_usable - n_kept
        kept = rows.filter(flags["kept"]).select("vm", self.epoch, "vcpu", "write", "gfn")
        return Points(
            kept["vm"].to_numpy().astype(np.int32, copy=False),
            kept["epoch"].to_numpy().astype(np.int64, copy=False),
            kept["vcpu"].to_numpy().astype(np.int32, copy=False),
            kept["write"].to_numpy().astype(np.bool_, copy=False),
            kept["gfn"].to_numpy().astype(np.int64, copy=False),
            np.ones(kept.height, np.int64),
        )


class EpochLayout:
    """Whether the fault rows are in epoch order, and the rows per (epoch, vCPU) slice."""

    _MERGE_AFTER = 64

    def __init__(self, epoch: pl.Expr) -> None:
        self._epoch = epoch
        self.ordered = True
        self._last: int | None = None
        self._keys: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []

    def add(self, batch: pl.DataFrame) -> None:
        frame = batch.select(self._epoch, "vcpu")
        if frame.is_empty():
            return
        e = frame["epoch"]
        if (self._last is not None and e[0] < self._last) or not e.is_sorted():
            self.ordered = False
        self._last = e[-1]
        slices = frame.drop_nulls("vcpu")
        keys = slice_key(slices["epoch"].to_numpy(), slices["vcpu"].to_numpy())
        uniq, rows = np.unique(keys, return_counts=True)
        self._keys.append(uniq)
        self._rows.append(rows.astype(np.int64))
        if len(self._keys) > self._MERGE_AFTER:
            self._merge()

    def _merge(self) -> None:
        if not self._keys:
            self._keys, self._rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        keys, rows = np.concatenate(self._keys), np.concatenate(self._rows)
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], rows[order]
        starts = np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1) != 0) if len(keys) else keys
        self._keys = [keys[starts]]
        self._rows = [np.add.reduceat(rows, starts) if len(keys) else rows]

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(slice keys, rows) sorted by slice."""
        self._merge()
        return self._keys[0], self._rows[0]

    def largest_epoch_rows(self) -> int:
        keys, rows = self.histogram()
        if not len(keys):
            return 0
        epochs = keys >> 32
        starts = np.flatnonzero(np.diff(epochs, prepend=epochs[:1] - 1) != 0)
        return int(np.add.reduceat(rows, starts).max())


def stream_ordered(
    batches: Iterator[pl.DataFrame],
    *,
    counter: Counter,
    emitter: Emitter,
    tick: Callable[[int], None],
) -> None:
    """Rows in epoch order: an epoch is emitted once a batch starts a later one."""
    pending: list[Points] = []
    held, limit = 0, SPILL_ROWS
    for b in batches:
        tick(b.height)
        if b.is_empty():
            continue
        pending.append(counter.points(b))
        held += len(pending[-1])
        last_epoch = int(b.select(counter.epoch)["epoch"][-1])
        lowest = min((int(p.epoch.min()) for p in pending if len(p)), default=last_epoch)
        if lowest < last_epoch:
            points = Points.concat(pending)
            done = points.epoch < last_epoch
            emitter.emit(points.take(done), last_epoch << 32)
            pending = [points.take(~done)]
            held, limit = len(pending[0]), SPILL_ROWS
        elif held > limit:  # one long epoch: sum its points so far
            pending = [Points.concat(pending).reduced()]
            held = len(pending[0])
            limit = max(SPILL_ROWS, 2 * held)
    emitter.emit(Points.concat(pending), NO_SLICE)


def buckets(keys: np.ndarray, rows: np.ndarray, bucket_rows: int) -> list[int]:
    """First slice key of each bucket of consecutive slices holding <= ``bucket_rows`` rows
    (a slice with more is a bucket of its own)."""
    starts: list[int] = []
    size = 0
    for key, n in zip(keys.tolist(), rows.tolist(), strict=True):
        if not starts or size + n > bucket_rows:
            starts.append(int(key))
            size = 0
        size += n
    return starts


def stream_spilled(
    batches: Iterator[pl.DataFrame],
    root: Path,
    *,
    counter: Counter,
    emitter: Emitter,
    starts: list[int],
    tick: Callable[[int], None],
) -> None:
    """Rows out of epoch order: spill points to slice buckets, emit bucket by bucket.

    One bucket (every fault row fits the bound of one): nothing is spilled, the points are
    held and emitted at the end, as the bucket would be read back.
    """
    if len(starts) <= 1:
        whole: list[Points] = []
        for b in batches:
            tick(b.height)
            whole.append(counter.points(b))
        emitter.emit(Points.concat(whole), NO_SLICE)
        emitter.emit(Points.empty(), NO_SLICE)
        return
    bounds = np.asarray(starts, np.int64)
    with tempfile.TemporaryDirectory(dir=root, prefix=".derive-spill-") as tmp:
        spill = Path(tmp)
        held: list[Points] = []
        seq = 0

        def flush() -> None:
            nonlocal held, seq
            points = Points.concat(held)
            held = []
            if not len(points):
                return
            bucket = np.searchsorted(bounds, slice_key(points.epoch, points.vcpu), side="right")
            bucket = np.maximum(bucket - 1, 0)
            order = np.argsort(bucket, kind="stable")
            points, bucket = points.take(order), bucket[order]
            cuts = np.flatnonzero(np.diff(bucket)) + 1
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(bucket)], strict=True):
                # one raw .npy per column: read back once, so no zip (np.savez's CRC-32)
                for name, col in points.take(slice(lo, hi)).columns().items():
                    np.save(spill / f"b{int(bucket[lo]):06d}-{seq:06d}.{name}.npy", col)
            seq += 1

        for b in batches:
            tick(b.height)
            held.append(counter.points(b))
            if sum(len(h) for h in held) >= SPILL_ROWS:
                flush()
        flush()
        names = list(Points.empty().columns())
        for i in range(len(starts)):
            chunks = sorted(f.name.split(".")[0] for f in spill.glob(f"b{i:06d}-*.n.npy"))
            parts = []
            for chunk in chunks:
                files = [spill / f"{chunk}.{name}.npy" for name in names]
                parts.append(Points(*(np.load(f) for f in files)))
                for f in files:
                    f.unlink()
            below = starts[i + 1] if i + 1 < len(starts) else NO_SLICE
            emitter.emit(Points.concat(parts), below)
    emitter.emit(Points.empty(), NO_SLICE)
