"""The engine's input: a replay's accesses, from a frame in memory or read from a DATASET in
batches of epochs, sorted per VM, and their checks against the VMs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import DatasetError
from pipeline.replay.engine import VmAccesses

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


def sorted_accesses(lf: pl.LazyFrame) -> pl.DataFrame:
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
        return _split_by_vm(sorted_accesses(lf), names)


Accesses = FrameAccesses | DatasetAccesses


@dataclass(frozen=True)
class AccessSummary:
    """What the replay needs to know of the accesses before reading them in batches."""

    n_epochs: int
    rows: int


def check_accesses(source: Accesses, cfgs: Sequence[Any]) -> AccessSummary:
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
