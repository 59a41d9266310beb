"""I/O for ``tlbreplay synth``: spec -> DATASET directory (manifest, vms, accesses parts).

The DATASET is written into a temporary sibling and renamed into place at the end
(:func:`pipeline.outdir.atomic_output_dir`), so a bad spec or a crash leaves nothing behind.
``accesses`` rows stream to ``accesses/part-NNNNN.parquet`` through
:class:`pipeline.schema.ParquetStream`: VMs in name order, epochs in order, a new part only
between epoch batches, so a file never splits an epoch of a VM and memory stays bounded by
one batch. Parquet bytes depend only on the spec's content and the seed (no path, no clock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import __version__
from pipeline.model.vmmodel import vms_frame
from pipeline.outdir import atomic_output_dir, check_replaceable
from pipeline.schema import ParquetStream, write_manifest, write_parquet
from pipeline.synth.generate import EPOCHS_PER_BATCH, Ranges, vm_batches
from pipeline.synth.spec import SynthSpec, load_spec

#: start a new accesses part once the current one holds this many rows
ROWS_PER_PART = 4_000_000
#: rows buffered before a write (one Parquet row group per write, at most)
ROWS_PER_WRITE = 1 << 18

Progress = Callable[[int], None]


@dataclass
class SynthResult:
    """What a run wrote: the manifest and the output directory."""

    out: Path
    manifest: dict[str, Any]


def to_table(vm: str, rows: Ranges) -> pa.Table:
    """Rows of table ``accesses`` for one VM (conformed by the stream on write)."""
    return pa.table(
        {
            "vm": pa.repeat(vm, len(rows)),
            "epoch": rows.epoch,
            "vcpu": rows.vcpu.astype("int32"),
            "gfn_start": rows.gfn_start,
            "nr_pages": rows.nr_pages,
            "nr_accesses": rows.nr_accesses,
            "write": rows.write,
        }
    )


class PartWriter:
    """Numbered ``part-NNNNN.parquet`` files of table ``accesses`` under ``root``."""

    def __init__(self, root: Path, params: dict[str, Any], rows_per_part: int) -> None:
        self.root = root
        self.params = params
        self.rows_per_part = rows_per_part
        self.parts: list[Path] = []
        self.rows = 0
        self._stream: ParquetStream | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, table: pa.Table) -> None:
        """Append whole epoch batches; a part is closed only after a whole batch.

        A part holds at least ``rows_per_part`` rows (except the last), plus the rest of the
        batch that crossed the mark.
        """
        self._pending.append(table)
        self._pending_rows += table.num_rows
        part_rows = self._stream.rows if self._stream is not None else 0
        if part_rows + self._pending_rows >= self.rows_per_part:
            self._flush()
            self._close_part()
        elif self._pending_rows >= ROWS_PER_WRITE:
            self._flush()

    def _close_part(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._stream is None:
            path = self.root / f"part-{len(self.parts):05d}.parquet"
            self._stream = ParquetStream(path, "accesses", params=self.params)
            self.parts.append(path)
        self._stream.write(pa.concat_tables(self._pending))
        self.rows += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        if self._stream is None and not self.parts:  # no accesses at all: one empty part
            path = self.root / "part-00000.parquet"
            self._stream = ParquetStream(path, "accesses", params=self.params)
            self.parts.append(path)
        self._close_part()

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()
            self._stream = None


def write_dataset(
    spec: SynthSpec,
    out: Path,
    *,
    progress: Progress | None = None,
    rows_per_part: int = ROWS_PER_PART,
    force: bool = False,
) -> SynthResult:
    """Generate ``spec`` into the DATASET directory ``out`` (atomically)."""
    params = {
        "generator": "synth",
        "spec_sha256": spec.sha256,
        "seed": spec.seed,
        "epoch_ms": spec.epoch_ms,
        "duration_s": spec.duration_s,
    }
    vms = vms_frame(spec.model)
    order = sorted(range(len(spec.model.vms)), key=lambda i: spec.model.vms[i].name)
    with atomic_output_dir(out, kind="dataset", force=force) as tmp:
        write_parquet(vms, tmp / "vms.parquet", "vms", params=params)
        parts = PartWriter(tmp / "accesses", params, rows_per_part)
        rows_per_vm: dict[str, int] = {}
        try:
            for i in order:
                name = spec.model.vms[i].name
                rows_per_vm[name] = 0
                for batch in vm_batches(spec, i):
                    if len(batch):
                        parts.add(to_table(name, batch))
                        rows_per_vm[name] += len(batch)
                    if progress is not None:
                        progress(EPOCHS_PER_BATCH)
            parts.close()
        except BaseException:
            parts.abort()
            raise
        manifest = {
            "kind": "dataset",
            "generator": "synth",
            "version": __version__,
            "epoch_ms": spec.epoch_ms,
            "seed": spec.seed,
            "sources": [{"path": str(spec.path.resolve()), "sha256": spec.sha256}],
            "parameters": {
                "duration_s": spec.duration_s,
                "nr_epochs": spec.nr_epochs,
                "epochs_per_batch": EPOCHS_PER_BATCH,
            },
            "vms": [vm.name for vm in spec.model.vms],
            # the VMM around each VM when replayed (ADR 0365): "qemu" (the default profile)
            "vmm_profile": spec.vmm_profile,
            "counts": {
                "vms": vms.height,
                "accesses": parts.rows,
                "accesses_by_vm": rows_per_vm,
                "accesses_files": len(parts.parts),
            },
        }
        write_manifest(tmp, manifest)
    return SynthResult(out=Path(out), manifest=manifest)


def run_synth(
    spec_path: Path,
    out: Path,
    *,
    seed: int | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
    force: bool = False,
    max_rows: int | None = None,
    max_memory_bytes: int | None = None,
) -> SynthResult:
    """Load and validate ``spec_path``, then write the DATASET ``out``.

    ``progress_factory(total_epochs)`` returns a callback advanced by epochs done. A spec
    whose estimated rows exceed ``max_rows`` or whose VM no replay could hold within
    ``max_memory_bytes`` is refused before any work (:func:`pipeline.synth.bounds.check_work`).
    """
    from pipeline.synth.bounds import check_work

    check_replaceable(out, "dataset", force=force)
    spec = load_spec(spec_path, seed=seed)
    check_work(spec, max_rows, max_memory_bytes)
    total = -(-spec.nr_epochs // EPOCHS_PER_BATCH) * EPOCHS_PER_BATCH * len(spec.model.vms)
    progress = progress_factory(total) if progress_factory is not None else None
    return write_dataset(spec, out, progress=progress, force=force)
