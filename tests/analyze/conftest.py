"""Fixtures for the analysis tests: small hand-made RESULTS + DATASET directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline.analyze.views import POINT_SCHEMA, connect
from tests.analyze.results_builder import ep, make_dataset, make_results, vm_row

POLICIES = ["linux-6.5", "linux-7.1", "oracle"]
#: vm1's epoch 2 under every policy: two THPs made PROT_NONE, faulted and migrated.
THP_MIGRATION = {
    "spte_zapped": 2,
    "numa_hint_faults": 2,
    "numa_pages_migrated": 1024,
    "numa_pte_updates": 1024,
    "numa_huge_pte_updates": 2,
}


def build_small_run(root: Path) -> Path:
    """Two VMs (vm0 fully pinned 4K, vm1 unpinned THP), three policies, a few epochs:
    ``root/ds`` (DATASET) and ``root/res`` (RESULTS, returned)."""
    ds = make_dataset(root / "ds", [vm_row("vm0", pinned="all"), vm_row("vm1", thp=True)])
    return make_results(
        root / "res",
        ds,
        policies=POLICIES,
        epochs=[
            ep(
                "linux-6.5",
                "vm0",
                1,
                remote_tlb_flushes=6,
                shootdown_ipis=12,
                spte_zapped=600,
                ept_violations=300,
                mmu_notifier_invalidations=6,
                kvm_unmap_gfn_range_calls=6,
                cost_us=30.0,
            ),
            ep(
                "linux-6.5",
                "vm0",
                3,
                remote_tlb_flushes=4,
                shootdown_ipis=8,
                spte_zapped=400,
                ept_violations=200,
                mmu_notifier_invalidations=4,
                kvm_unmap_gfn_range_calls=4,
                cost_us=20.0,
            ),
            ep(
                "linux-7.1",
                "vm0",
                1,
                remote_tlb_flushes=5,
                shootdown_ipis=10,
                spte_zapped=500,
                ept_violations=250,
                cost_us=25.0,
            ),
            ep(
                "linux-6.5",
                "vm1",
                2,
                page_size="2M",
                **THP_MIGRATION,
                remote_tlb_flushes=2,
                shootdown_ipis=4,
                cost_us=8.0,
            ),
            ep(
                "linux-7.1",
                "vm1",
                2,
                page_size="2M",
                **THP_MIGRATION,
                remote_tlb_flushes=2,
                shootdown_ipis=4,
                cost_us=8.0,
            ),
            ep(
                "oracle",
                "vm1",
                2,
                page_size="2M",
                **THP_MIGRATION,
                remote_tlb_flushes=1,
                shootdown_ipis=2,
                cost_us=4.0,
            ),
        ],
        vcpu_epochs=[
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "vcpu": 0,
                "epoch": 1,
                "ept_violations": 200,
                "shootdown_ipis": 6,
                "task_numa_work_runs": 1,
                "scan_period_ms": 1000,
            },
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "vcpu": 1,
                "epoch": 1,
                "ept_violations": 100,
                "shootdown_ipis": 6,
                "scan_period_ms": 1000,
            },
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "vcpu": 0,
                "epoch": 3,
                "ept_violations": 200,
                "shootdown_ipis": 8,
                "task_numa_work_runs": 1,
                "scan_period_ms": 2000,
            },
        ],
        scans=[
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "epoch": 1,
                "t_ms": 130,
                "vcpu": 0,
                "chunks": 4,
                "notifiers": 4,
                "nr_pte_updates": 0,
                "virt_pages": 262144,
            },
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "epoch": 3,
                "t_ms": 310,
                "vcpu": 0,
                "chunks": 2,
                "notifiers": 2,
                "nr_pte_updates": 0,
                "virt_pages": 131072,
            },
        ],
    )


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build_small_run, once per session: tests only read it."""
    return build_small_run(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="session")
def small_con(small_run: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The views of small_run, one connection for the session (queries only)."""
    con, _ = connect(small_run)
    yield con
    con.close()


@pytest.fixture
def con_of() -> Iterator[Callable[[Path], duckdb.DuckDBPyConnection]]:
    """Open the views of a RESULTS dir; closed at the end of the test."""
    opened: list[duckdb.DuckDBPyConnection] = []

    def open_(results: Path) -> duckdb.DuckDBPyConnection:
        con, _ = connect(results)
        opened.append(con)
        return con

    yield open_
    for con in opened:
        con.close()


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` as tuples."""
    return [tuple(r) for r in con.sql(sql).fetchall()]


def every_view_rows(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    """Every view of ``main`` and of the point-keyed schema, each as its sorted rows."""
    names = con.execute(
        "SELECT schema_name || '.' || view_name FROM duckdb_views() "
        "WHERE NOT internal AND schema_name IN ('main', ?) ORDER BY 1",
        [POINT_SCHEMA],
    ).fetchall()
    return {n: sorted(rows(con, f"SELECT * FROM {n}"), key=repr) for (n,) in names}
