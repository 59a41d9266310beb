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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.schema import conform, table_schema

PAGE_SHIFT = 12
HUGE_PAGE_BYTES = 2 << 20
DAMON_VCPU = 0  # DAMON does not know the vCPU; its accesses are attributed to vCPU 0
DEFAULT_VM = "vm0"


@dataclass(frozen=True)
class Derived:
    """What derive produced, plus the counts the manifest records."""

    vms: pl.DataFrame
    accesses: pl.DataFrame
    access_source: str
    unassigned: int
    outside_ram: int


def _scan(root: Path, event: str) -> pl.LazyFrame:
    """Table ``ftrace/<event>`` of the dataset being built, lazily (empty if absent)."""
    path = root / "ftrace" / f"{event}.parquet"
    if not path.is_file():
        return pl.LazyFrame(schema=table_schema(f"ftrace/{event}").polars())
    return pl.scan_parquet(path)


def _count(frame: pl.LazyFrame) -> int:
    return int(frame.select(pl.len()).collect().item())


def _epoch(t0_ns: int, epoch_ms: int) -> pl.Expr:
    return ((pl.col("ts_ns") - t0_ns) // (epoch_ms * 1_000_000)).alias("epoch")


def _fault_rows(root: Path, vms: pl.DataFrame | None) -> tuple[pl.LazyFrame, str]:
    """(ts_ns, pid, vcpu, gfn, write) per fault, lazily, and which event they came from."""
    faults = _scan(root, "kvm_page_fault")
    if _count(faults):
        rows = faults.select(
            "ts_ns",
            "pid",
            pl.col("vcpu").cast(pl.Int32),
            (pl.col("gpa") // (1 << PAGE_SHIFT)).cast(pl.Int64).alias("gfn"),
            ((pl.col("error_code") // 2) % 2 == 1).alias("write"),
        )
        return rows, "kvm_page_fault"
    req = _scan(root, "kvm_mmu_spte_requested")
    if _count(req) == 0:
        schema = {"ts_ns": pl.Int64, "pid": pl.Int32, "vcpu": pl.Int32, "gfn": pl.Int64}
        return pl.LazyFrame(schema={**schema, "write": pl.Boolean}), "none"
    index: dict[int, int] = {}
    if vms is not None and vms.height > 1:
        for row in vms.iter_rows(named=True):
            index |= {int(t): i for i, t in enumerate(row["vcpu_tids"] or [])}
    else:
        tids: list[int] = []
        if vms is not None and vms.height:
            tids = [int(t) for t in (vms.row(0, named=True)["vcpu_tids"] or [])]
        seen = req.select("pid").drop_nulls().unique(maintain_order=True).collect()["pid"]
        order = tids + [int(p) for p in seen.to_list() if int(p) not in tids]
        index = {pid: i for i, pid in enumerate(order)}
    rows = req.select(
        "ts_ns",
        "pid",
        pl.col("pid").replace_strict(index, default=None, return_dtype=pl.Int32).alias("vcpu"),
        pl.col("gfn").cast(pl.Int64),
        pl.lit(False).alias("write"),
    )
    return rows, "kvm_mmu_spte_requested"


def _assign_vm(rows: pl.LazyFrame, vms: pl.DataFrame) -> pl.LazyFrame:
    """Add ``vm``: the only VM, or the VM whose vcpu_tids hold the pid (else null)."""
    names = vms["vm"].to_list()
    if len(names) == 1:
        return rows.with_columns(pl.lit(names[0]).alias("vm"))
    owner = {int(t): r["vm"] for r in vms.iter_rows(named=True) for t in (r["vcpu_tids"] or [])}
    return rows.with_columns(
        pl.col("pid").replace_strict(owner, default=None, return_dtype=pl.String).alias("vm")
    )


def compress_runs(points: pl.DataFrame) -> pl.DataFrame:
    """(vm, epoch, vcpu, write, gfn, nr_accesses) points -> maximal runs (table accesses)."""
    keys = ["vm", "epoch", "vcpu", "write"]
    p = points.sort([*keys, "gfn"])
    brk = (
        pl.any_horizontal([pl.col(k) != pl.col(k).shift(1) for k in keys])
        | (pl.col("gfn") != pl.col("gfn").shift(1) + 1)
        | (pl.col("nr_accesses") != pl.col("nr_accesses").shift(1))
    ).fill_null(True)
    runs = (
        p.with_columns(brk.cum_sum().alias("_run"))
        .group_by("_run", maintain_order=True)
        .agg(
            *[pl.col(k).first() for k in keys],
            pl.col("gfn").first().alias("gfn_start"),
            pl.len().cast(pl.Int64).alias("nr_pages"),
            pl.col("nr_accesses").first(),
        )
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


def infer_vms(root: Path, faults: pl.LazyFrame) -> pl.DataFrame:
    """One VM row from what the trace shows; ``inferred`` is true.

    vcpus and their thread ids from the fault rows; memory = the highest gfn touched, rounded
    up to 2 MiB; host nodes from the node ids in sched_*_numa events (else 1); the secondary
    MMU is ``tdp`` when TDP-only events (kvm_tdp_mmu_spte_changed, kvm_page_fault) appear,
    else ``shadow`` when kvm_mmu_spte_requested does. Values the trace cannot show take the
    kernel defaults (scan knobs), 0 (node memory: unknown) or empty (pinned ranges).
    """
    first_pid = (
        faults.drop_nulls(["vcpu", "pid"])
        .group_by("vcpu")
        .agg(pl.col("pid").get(pl.col("ts_ns").arg_min()))
        .collect()
    )
    vcpus = int(first_pid["vcpu"].max()) + 1 if first_pid.height else 1  # type: ignore[arg-type]
    tids = [0] * vcpus
    for v, pid in first_pid.iter_rows():
        tids[int(v)] = int(pid)
    max_gfn = faults.select(pl.col("gfn").max()).collect().item()
    mem = ((int(max_gfn) + 1) << PAGE_SHIFT) if max_gfn is not None else HUGE_PAGE_BYTES
    mem = -(-mem // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    max_nid = -1
    for event in ("sched_move_numa", "sched_stick_numa", "sched_swap_numa"):
        top = _scan(root, event).select(pl.max_horizontal("src_nid", "dst_nid").max())
        value = top.collect().item()
        if value is not None:
            max_nid = max(max_nid, int(value))
    nodes = max_nid + 1 if max_nid >= 0 else 1
    tdp = _count(_scan(root, "kvm_tdp_mmu_spte_changed")) or _count(_scan(root, "kvm_page_fault"))
    requested = _scan(root, "kvm_mmu_spte_requested")
    shadow = _count(requested)
    top_level = requested.select(pl.col("level").max()).collect().item()
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
                "thp": top_level is not None and int(top_level) >= 2,
                "mof_policy": False,
                "placement": "first-touch",
                "pinned": [],
            }
        ],
        "numa_balancing": 1,
        "scan_delay_ms": 1000,
        "scan_period_min_ms": 1000,
        "scan_period_max_ms": 60000,
        "scan_size_mb": 256,
        "preempt": "voluntary",
        "mmu": "tdp" if tdp else ("shadow" if shadow else "tdp"),
        "kernel": None,
        "inferred": True,
    }
    frame = pl.DataFrame([row], schema=table_schema("vms").polars())
    return pl.from_arrow(conform(frame, "vms"))  # type: ignore[return-value]


def derive(root: Path, *, vm_config: Path | None, epoch_ms: int, t0_ns: int | None) -> Derived:
    """Tables ``vms`` and ``accesses`` for the dataset at ``root`` (ftrace/ already written)."""
    vms: pl.DataFrame | None = None
    if vm_config is not None:
        from pipeline.ingest.vmmodel import load_vm_file

        vms = load_vm_file(vm_config)
    faults, source = _fault_rows(root, vms)
    if vms is None:
        vms = infer_vms(root, faults)
    t0 = t0_ns if t0_ns is not None else 0
    rows = _assign_vm(faults, vms)
    usable = pl.col("vcpu").is_not_null() & pl.col("vm").is_not_null()
    unassigned = _count(rows.filter(~usable))
    ram_pages = {str(r["vm"]): int(r["mem_bytes"]) >> PAGE_SHIFT for r in vms.iter_rows(named=True)}
    in_ram = (pl.col("gfn") >= 0) & (
        pl.col("gfn") < pl.col("vm").replace_strict(ram_pages, default=0, return_dtype=pl.Int64)
    )
    outside = _count(rows.filter(usable & ~in_ram))
    points = (
        rows.filter(usable & in_ram)
        .with_columns(_epoch(t0, epoch_ms))
        .group_by(["vm", "epoch", "vcpu", "write", "gfn"])
        .agg(pl.len().cast(pl.Int64).alias("nr_accesses"))
        .collect(engine="streaming")
    )
    accesses = pl.concat(
        [compress_runs(points), _damon_rows(root, vms, t0, epoch_ms)], how="vertical_relaxed"
    ).sort(["vm", "epoch", "vcpu", "gfn_start", "write"])
    if source == "none" and accesses.height:
        source = "damon_aggregated"
    out = pl.from_arrow(conform(accesses, "accesses"))
    assert isinstance(out, pl.DataFrame)
    return Derived(
        vms=vms, accesses=out, access_source=source, unassigned=unassigned, outside_ram=outside
    )
