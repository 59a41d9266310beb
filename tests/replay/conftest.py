"""Hand-built `vms` / `accesses` frames (schemas/vms.toml, schemas/accesses.toml)."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.schema import conform

GIB = 1 << 30
MIB = 1 << 20
PMD_PAGES = 512


def region(
    name: str = "ram",
    *,
    size_bytes: int = GIB,
    gpa_start: int = 0,
    hva_start: int = 0x7F0000000000,
    backing: str = "anon",
    thp: bool = False,
    mof_policy: bool = False,
    placement: str = "node:0",
    pinned: list[tuple[int, int]] | str = (),  # type: ignore[assignment]
    mempolicy: str | None = None,
) -> dict[str, Any]:
    nr = size_bytes >> 12
    if pinned == "all":
        pins = [{"gfn_start": gpa_start >> 12, "nr_pages": nr}]
    else:
        pins = [{"gfn_start": s, "nr_pages": n} for s, n in pinned]
    return {
        "name": name,
        "gpa_start": gpa_start,
        "hva_start": hva_start,
        "size_bytes": size_bytes,
        "backing": backing,
        "thp": thp,
        "mof_policy": mof_policy,
        "placement": placement,
        "pinned": pins,
        **({} if mempolicy is None else {"mempolicy": mempolicy}),
    }


def vm_row(
    name: str = "vm0",
    *,
    regions: list[dict[str, Any]] | None = None,
    vcpu_nodes: list[int] = (0, 1),  # type: ignore[assignment]
    preempt: str = "none",
    mmu: str = "tdp",
    scan_delay_ms: int = 1000,
    scan_period_min_ms: int = 1000,
    scan_period_max_ms: int = 60000,
    scan_size_mb: int = 256,
    host_nodes: int = 2,
    node_mem_gib: int = 64,
) -> dict[str, Any]:
    regions = regions or [region()]
    mem = sum(r["size_bytes"] for r in regions)
    return {
        "vm": name,
        "mem_bytes": mem,
        "vcpus": len(vcpu_nodes),
        "vcpu_nodes": list(vcpu_nodes),
        "vcpu_tids": [4242 + i for i in range(len(vcpu_nodes))],
        "host_nodes": host_nodes,
        "host_node_mem_bytes": [node_mem_gib * GIB] * host_nodes,
        "regions": regions,
        "numa_balancing": 1,
        "scan_delay_ms": scan_delay_ms,
        "scan_period_min_ms": scan_period_min_ms,
        "scan_period_max_ms": scan_period_max_ms,
        "scan_size_mb": scan_size_mb,
        "preempt": preempt,
        "mmu": mmu,
        "kernel": None,
        "inferred": False,
    }


def vms_frame(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.from_arrow(conform(pl.DataFrame(list(rows)), "vms"))  # type: ignore[return-value]


def accesses_frame(rows: list[tuple[str, int, int, int, int]]) -> pl.DataFrame:
    """Rows of (vm, epoch, vcpu, gfn_start, nr_pages), sorted as the contract says."""
    frame = pl.DataFrame(
        {
            "vm": [r[0] for r in rows],
            "epoch": [r[1] for r in rows],
            "vcpu": [r[2] for r in rows],
            "gfn_start": [r[3] for r in rows],
            "nr_pages": [r[4] for r in rows],
            "nr_accesses": [1] * len(rows),
            "write": [True] * len(rows),
        },
        schema_overrides={
            "epoch": pl.Int64,
            "vcpu": pl.Int32,
            "gfn_start": pl.Int64,
            "nr_pages": pl.Int64,
        },
    ).sort("vm", "epoch", "vcpu", "gfn_start")
    return pl.from_arrow(conform(frame, "accesses"))  # type: ignore[return-value]


def every_epoch(
    vm: str, epochs: int, vcpu: int, gfn_start: int, nr_pages: int
) -> list[tuple[str, int, int, int, int]]:
    return [(vm, e, vcpu, gfn_start, nr_pages) for e in range(epochs)]


def totals(
    frame: pl.DataFrame, policy: str, *cols: str, page_size: str | None = None
) -> dict[str, int]:
    sub = frame.filter(pl.col("policy") == policy)
    if page_size is not None:
        sub = sub.filter(pl.col("page_size") == page_size)
    return {c: int(sub[c].sum()) for c in cols}


def empty_run(cfg: Any, policy: str, knobs: dict[str, int], n_epochs: int) -> Any:
    """A VmRun of ``cfg`` (a VmConfig) with no accesses, for driving the engine by hand."""
    import numpy as np

    from pipeline.replay.engine import EngineOptions, VmAccesses, VmRun
    from pipeline.replay.kvm import YieldModel
    from pipeline.replay.policies import POLICIES
    from pipeline.replay.state import HostState

    empty = VmAccesses(*(np.empty(0, np.int64) for _ in range(4)))
    return VmRun(
        cfg,
        empty,
        POLICIES[policy],
        HostState(cfg.node_mem_pages.copy()),
        opts=EngineOptions(epoch_ms=100, yields=YieldModel()),
        n_epochs=n_epochs,
        knobs=knobs,
    )
