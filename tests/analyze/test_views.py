"""The views of sql/*.sql: input rows (conftest.small_run) + query + expected rows inline."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from pipeline.analyze.catalog import describe, run_view_docs, sql_view_docs
from pipeline.analyze.views import (
    MATERIALISED,
    MATERIALISED_SCHEMA,
    SQL_DIR,
    Run,
    connect,
    connect_in_memory,
    sql_files,
)
from pipeline.errors import DatasetError
from pipeline.schema import write_manifest
from tests.analyze.conftest import build_small_run, every_view_rows, rows
from tests.analyze.results_builder import ep, make_dataset, make_results, vm_row

Con = Callable[[Path], duckdb.DuckDBPyConnection]


def test_sql_files_hold_only_create_view() -> None:
    con = duckdb.connect()
    for path in sql_files():
        statements = con.extract_statements(path.read_text())
        assert statements, path
        for st in statements:
            assert st.type == duckdb.StatementType.CREATE, path
            assert re.match(r"(\s*--[^\n]*\n)*\s*CREATE VIEW ", st.query, re.IGNORECASE), (
                path,
                st.query[:60],
            )


def test_every_public_view_and_column_is_documented(
    small_con: duckdb.DuckDBPyConnection, small_run: Path
) -> None:
    con = small_con
    public = [v for v in run_view_docs(Run.open(small_run)) if v.is_public]
    names = {v.name for v in public}
    assert {"shootdowns", "savings", "timeline", "by_vcpu", "observed"} <= names
    for view in public:
        assert view.doc, f"{view.origin}: view {view.name} has no comment"
        cols = describe(con, view)
        undocumented = [c.name for c in cols if not c.doc]
        assert not undocumented, f"{view.origin}: {view.name}: {undocumented}"
        assert [c.name for c in cols] == [n for n, _ in view.columns]


def test_shootdowns_totals_per_policy_vm_page_size(small_con: duckdb.DuckDBPyConnection) -> None:
    con = small_con
    got = rows(
        con,
        "SELECT policy, vm, page_size, epochs, remote_tlb_flushes, shootdown_ipis, "
        "spte_zapped, ept_violations, kvm_unmap_gfn_range_calls, "
        "mmu_notifier_invalidations, numa_hint_faults, numa_pages_migrated, cost_us "
        "FROM shootdowns ORDER BY vm, policy",
    )
    assert got == [
        ("linux-6.5", "vm0", "4K", 2, 10, 20, 1000, 500, 10, 10, 0, 0, 50.0),
        ("linux-7.1", "vm0", "4K", 1, 5, 10, 500, 250, 0, 0, 0, 0, 25.0),
        # the oracle did nothing to vm0: no rows in epochs, still a row of zeros here
        ("oracle", "vm0", "4K", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0),
        ("linux-6.5", "vm1", "2M", 1, 2, 4, 2, 0, 0, 0, 2, 1024, 8.0),
        ("linux-7.1", "vm1", "2M", 1, 2, 4, 2, 0, 0, 0, 2, 1024, 8.0),
        ("oracle", "vm1", "2M", 1, 1, 2, 2, 0, 0, 0, 2, 1024, 4.0),
    ]


def test_savings_against_both_references(small_con: duckdb.DuckDBPyConnection) -> None:
    con = small_con
    got = rows(
        con,
        "SELECT policy, vm, baseline, baseline_value, value, saved, round(saved_pct, 2) "
        "FROM savings WHERE counter = 'remote_tlb_flushes' ORDER BY vm, baseline, policy",
    )
    assert got == [
        ("linux-6.5", "vm0", "linux-6.5", 10.0, 10.0, 0.0, 0.0),
        ("linux-7.1", "vm0", "linux-6.5", 10.0, 5.0, 5.0, 50.0),
        ("oracle", "vm0", "linux-6.5", 10.0, 0.0, 10.0, 100.0),
        ("linux-6.5", "vm0", "linux-7.1", 5.0, 10.0, -5.0, -100.0),
        ("linux-7.1", "vm0", "linux-7.1", 5.0, 5.0, 0.0, 0.0),
        ("oracle", "vm0", "linux-7.1", 5.0, 0.0, 5.0, 100.0),
        ("linux-6.5", "vm1", "linux-6.5", 2.0, 2.0, 0.0, 0.0),
        ("linux-7.1", "vm1", "linux-6.5", 2.0, 2.0, 0.0, 0.0),
        ("oracle", "vm1", "linux-6.5", 2.0, 1.0, 1.0, 50.0),
        ("linux-6.5", "vm1", "linux-7.1", 2.0, 2.0, 0.0, 0.0),
        ("linux-7.1", "vm1", "linux-7.1", 2.0, 2.0, 0.0, 0.0),
        ("oracle", "vm1", "linux-7.1", 2.0, 1.0, 1.0, 50.0),
    ]
    # a reference that did nothing gives no percentage
    zero = rows(
        con,
        "SELECT DISTINCT saved_pct FROM savings WHERE counter = 'numa_pages_migrated' "
        "AND vm = 'vm0'",
    )
    assert zero == [(None,)]


def test_savings_headline_and_total(small_con: duckdb.DuckDBPyConnection) -> None:
    con = small_con
    assert rows(con, "SELECT * FROM savings_headline WHERE vm = 'vm0' ORDER BY policy") == [
        ("linux-6.5", "vm0", 10, 0.0, -100.0, 50.0, 0.0, -100.0),
        ("linux-7.1", "vm0", 5, 50.0, 0.0, 25.0, 50.0, 0.0),
        ("oracle", "vm0", 0, 100.0, 100.0, 0.0, 100.0, 100.0),
    ]
    got = rows(
        con,
        "SELECT policy, vms, remote_tlb_flushes, round(flushes_saved_vs_6_5_pct, 3), "
        "round(flushes_saved_vs_7_1_pct, 3), cost_us FROM savings_total ORDER BY policy",
    )
    assert got == [
        ("linux-6.5", 2, 12, 0.0, -71.429, 58.0),
        ("linux-7.1", 2, 7, 41.667, 0.0, 33.0),
        ("oracle", 2, 1, 91.667, 85.714, 4.0),
    ]


def test_savings_empty_without_references(tmp_path: Path, con_of: Con) -> None:
    ds = make_dataset(tmp_path / "ds", [vm_row("vm0")])
    res = make_results(
        tmp_path / "r",
        ds,
        policies=["oracle"],
        epochs=[ep("oracle", "vm0", 0, remote_tlb_flushes=1)],
    )
    con = con_of(res)
    assert rows(con, "SELECT count(*) FROM savings") == [(0,)]
    assert rows(con, "SELECT * FROM savings_headline") == [
        ("oracle", "vm0", 1, None, None, 0.0, None, None)
    ]


def test_timeline_is_dense_and_joins_scans(small_con: duckdb.DuckDBPyConnection) -> None:
    con = small_con
    got = rows(
        con,
        "SELECT epoch, t_ms, remote_tlb_flushes, spte_zapped, scans, scan_chunks, "
        "scan_notifiers, scan_virt_pages FROM timeline "
        "WHERE policy = 'linux-6.5' AND vm = 'vm0' ORDER BY epoch",
    )
    assert got == [
        (0, 0, 0, 0, 0, 0, 0, 0),
        (1, 100, 6, 600, 1, 4, 4, 262144),
        (2, 200, 0, 0, 0, 0, 0, 0),
        (3, 300, 4, 400, 1, 2, 2, 131072),
    ]
    # every policy gets every epoch of the VM, even with no rows of its own
    assert rows(
        con, "SELECT policy, count(*) FROM timeline WHERE vm = 'vm0' GROUP BY 1 ORDER BY 1"
    ) == [("linux-6.5", 4), ("linux-7.1", 4), ("oracle", 4)]


def test_timeline_covers_the_dataset(tmp_path: Path, con_of: Con) -> None:
    """A quiet end of the trace still shows: the grid reaches the last access epoch, re-binned
    from the dataset's epoch (50 ms) to the run's (100 ms)."""
    ds = make_dataset(
        tmp_path / "ds",
        [vm_row("vm0")],
        accesses=[
            {
                "vm": "vm0",
                "epoch": e,
                "vcpu": 0,
                "gfn_start": 0,
                "nr_pages": 1,
                "nr_accesses": 1,
                "write": False,
            }
            for e in (0, 9)
        ],
    )
    res = make_results(
        tmp_path / "r",
        ds,
        policies=["linux-6.5"],
        epochs=[ep("linux-6.5", "vm0", 1, remote_tlb_flushes=2)],
    )
    manifest = json.loads((res / "manifest.json").read_text())
    write_manifest(res, {**manifest, "dataset_epoch_ms": 50})
    con = con_of(res)
    assert rows(con, "SELECT epoch, t_ms, remote_tlb_flushes FROM timeline ORDER BY epoch") == [
        (0, 0, 0),
        (1, 100, 2),
        (2, 200, 0),
        (3, 300, 0),
        (4, 400, 0),
    ]


def test_by_vcpu(small_con: duckdb.DuckDBPyConnection) -> None:
    con = small_con
    assert rows(
        con,
        "SELECT policy, vm, vcpu, epochs, ept_violations, shootdown_ipis, "
        "task_numa_work_runs, scan_period_ms_last, scan_period_ms_max "
        "FROM by_vcpu ORDER BY vcpu",
    ) == [
        ("linux-6.5", "vm0", 0, 2, 400, 14, 2, 2000, 2000),
        ("linux-6.5", "vm0", 1, 1, 100, 6, 0, 1000, 1000),
    ]


def test_observed_is_empty_without_ftrace_tables(small_con: duckdb.DuckDBPyConnection) -> None:
    con = small_con
    assert rows(con, "SELECT count(*) FROM observed") == [(0,)]
    assert rows(con, "SELECT count(*) FROM observed_vs_simulated") == [(0,)]


def _ev(ts: int, pid: int, **payload: object) -> dict[str, object]:
    return {"ts_ns": ts, "cpu": 0, "pid": pid, "comm": "qemu", "flags": "d..1.", **payload}


@pytest.fixture
def real_run(tmp_path: Path) -> Path:
    """One VM (vCPU tids 1000, 1001) with a few ftrace events of each kind counted."""
    ftrace = {
        "kvm_unmap_hva_range": [
            _ev(1, 1000, hva_start=0x7F0000000000, hva_end=0x7F0000200000),
            _ev(2, 1001, hva_start=0x7F0000200000, hva_end=0x7F0000201000),
            _ev(3, 4242, hva_start=0x7F0000400000, hva_end=0x7F0000600000),  # VMM thread
            # a VMM mapping outside guest RAM: counted by the tracepoint, not in guest RAM
            _ev(18, 4240, hva_start=0x55D000000000, hva_end=0x55D000010000),
            # straddles the end of guest RAM (1 GiB from 0x7f0000000000): 1 MiB inside
            _ev(19, 4240, hva_start=0x7F003FF00000, hva_end=0x7F0040100000),
        ],
        "kvm_page_fault": [
            _ev(4, 1000, vcpu=0, rip=0x1000, gpa=0x2000, error_code=0x181),
            _ev(5, 1001, vcpu=1, rip=0x1000, gpa=0x3000, error_code=0x181),
        ],
        "kvm_mmu_spte_requested": [
            _ev(15, 1000, gfn=0x10, pfn=0x1234, level=1),
            _ev(16, 1001, gfn=0x11, pfn=0x1235, level=1),
            _ev(17, 1001, gfn=0x12, pfn=0x1236, level=1),
        ],
        "kvm_tdp_mmu_spte_changed": [
            # present 4K leaf -> 0 (v6.5 zap): counted
            _ev(6, 1000, as_id=0, gfn=0x10, level=1, old_spte=0x800 | 0x7, new_spte=0),
            # present 2M leaf (bit 7) -> non-present (v7 SHADOW_NONPRESENT_VALUE): counted
            _ev(
                7,
                1000,
                as_id=0,
                gfn=0x200,
                level=2,
                old_spte=0x800 | 0x80 | 0x7,
                new_spte=0x8000000000000000,
            ),
            # non-leaf 2M entry (a page table) zapped: not a leaf, not counted
            _ev(8, 1000, as_id=0, gfn=0x400, level=2, old_spte=0x800 | 0x7, new_spte=0),
            # fault-in: non-present -> present, not counted
            _ev(9, 1000, as_id=0, gfn=0x11, level=1, old_spte=0, new_spte=0x800 | 0x7),
        ],
        "tlb_flush": [
            _ev(10, 1000, pages=-1, reason="local mm shootdown", reason_code=3),
            # a later flush of 5 pages (a small VMM mapping) by the same thread
            _ev(11, 1000, pages=5, reason="local MM shootdown", reason_code=3),
            # the IPI of the full flush at ts 10 (same page count), received by pid 1001
            _ev(12, 1001, pages=-1, reason="remote shootdown", reason_code=1),
        ],
        "ipi_send_cpumask": [
            _ev(
                13,
                1000,
                cpumask="0-3,8",
                callsite="kvm_make_all_cpus_request+0x1a",
                callback="ack_kick+0x0",
            ),
        ],
        "mm_migrate_pages": [
            _ev(
                14,
                1000,
                nr_succeeded=3,
                nr_failed=1,
                nr_thp_succeeded=0,
                nr_thp_failed=0,
                nr_thp_split=0,
                mode="MIGRATE_ASYNC",
                reason="numa_misplaced",
            ),
        ],
    }
    ds = make_dataset(tmp_path / "ds", [vm_row("vm0", vcpu_tids=[1000, 1001])], ftrace=ftrace)
    return make_results(
        tmp_path / "r",
        ds,
        policies=["linux-6.5"],
        epochs=[
            ep(
                "linux-6.5",
                "vm0",
                0,
                mmu_notifier_invalidations=4,
                notifier_bytes=3 << 21,
                ept_violations=2,
                spte_zapped=3,
                remote_tlb_flushes=1,
                shootdown_ipis=2,
                numa_pages_migrated=3,
            )
        ],
    )


def test_observed_counts_ftrace_events(real_run: Path, con_of: Con) -> None:
    con = con_of(real_run)
    assert rows(con, "SELECT * FROM observed ORDER BY counter, detail") == [
        ("vm0", "ipi_send_cpumask", "ack_kick calls", 1),
        ("vm0", "ipi_send_cpumask", "ack_kick targets", 5),
        ("vm0", "kvm_mmu_spte_requested", "calls", 3),
        ("vm0", "kvm_page_fault", "calls", 2),
        ("vm0", "kvm_unmap_hva_range", "bytes", 3 * (2 << 20) + 4096 + 65536),
        ("vm0", "kvm_unmap_hva_range", "bytes in guest RAM", 2 * (2 << 20) + 4096 + (1 << 20)),
        ("vm0", "kvm_unmap_hva_range", "calls", 5),
        ("vm0", "kvm_unmap_hva_range", "calls in guest RAM", 4),
        ("vm0", "mm_migrate_pages", "numa_misplaced nr_failed", 1),
        ("vm0", "mm_migrate_pages", "numa_misplaced nr_succeeded", 3),
        ("vm0", "spte_zapped", "2M", 1),
        ("vm0", "spte_zapped", "4K", 1),
        ("vm0", "tlb_flush", "local mm shootdown", 2),
        # the first local mm shootdown of pid 1000 after its guest-RAM notifier (ts 1 -> 10);
        # the second (ts 11) is not the VM's: only one flush closes a change_protection()
        ("vm0", "tlb_flush", "local mm shootdown closing a guest-RAM notifier", 1),
        ("vm0", "tlb_flush", "remote shootdown", 1),
        # ts 12 answers the ts-10 flush (same page count, within 1 ms), not the later 5-page one
        ("vm0", "tlb_flush", "remote shootdown after one", 1),
    ]


def test_observed_vs_simulated_side_by_side(real_run: Path, con_of: Con) -> None:
    con = con_of(real_run)
    got = rows(
        con,
        "SELECT policy, vm, counter, simulated, observed, round(ratio, 3) "
        "FROM observed_vs_simulated ORDER BY counter",
    )
    assert got == [
        ("linux-6.5", "vm0", "ept_violations", 2, 2, 1.0),
        ("linux-6.5", "vm0", "host_tlb_flush_ipis", 0, 1, 0.0),
        ("linux-6.5", "vm0", "host_tlb_flushes", 0, 1, 0.0),
        ("linux-6.5", "vm0", "mmu_notifier_invalidations", 4, 4, 1.0),
        ("linux-6.5", "vm0", "notifier_bytes", 3 << 21, 5 << 20 | 4096, 1.199),
        ("linux-6.5", "vm0", "numa_pages_migrated", 3, 3, 1.0),
        ("linux-6.5", "vm0", "remote_tlb_flushes", 1, 1, 1.0),
        ("linux-6.5", "vm0", "shootdown_ipis", 2, 5, 0.4),
        ("linux-6.5", "vm0", "spte_requested", 2, 3, 0.667),
        ("linux-6.5", "vm0", "spte_zapped", 3, 2, 1.5),
    ]


def test_events_of_several_vms_go_by_vcpu_thread(tmp_path: Path, con_of: Con) -> None:
    ftrace = {
        "kvm_page_fault": [
            _ev(1, 1000, vcpu=0, rip=0, gpa=0, error_code=0),
            _ev(2, 2000, vcpu=0, rip=0, gpa=0, error_code=0),
            _ev(3, 2000, vcpu=0, rip=0, gpa=0, error_code=0),
            _ev(4, 7, vcpu=0, rip=0, gpa=0, error_code=0),
        ]
    }
    ds = make_dataset(
        tmp_path / "ds",
        [vm_row("a", vcpu_tids=[1000, 1001]), vm_row("b", vcpu_tids=[2000, 2001])],
        ftrace=ftrace,
    )
    res = make_results(tmp_path / "r", ds, policies=["linux-6.5"])
    con = con_of(res)
    assert rows(con, "SELECT vm, value FROM observed ORDER BY vm NULLS LAST") == [
        ("a", 1),
        ("b", 2),
        (None, 1),
    ]


def test_partition_columns_are_text(tmp_path: Path, con_of: Con) -> None:
    ds = make_dataset(tmp_path / "ds", [vm_row("007")])
    res = make_results(
        tmp_path / "r",
        ds,
        policies=["linux-6.5"],
        epochs=[ep("linux-6.5", "007", 0, remote_tlb_flushes=1)],
    )
    con = con_of(res)
    assert rows(con, "SELECT vm, typeof(vm), typeof(policy) FROM epochs") == [
        ("007", "VARCHAR", "VARCHAR")
    ]
    assert rows(con, "SELECT vm, remote_tlb_flushes FROM shootdowns_by_vm") == [("007", 1)]


def test_empty_results_bind(tmp_path: Path, con_of: Con) -> None:
    """A run with no rows at all (nothing happened): every view binds and is empty or zero."""
    ds = make_dataset(tmp_path / "ds", [vm_row("vm0")])
    res = make_results(tmp_path / "r", ds, policies=["linux-6.5"])
    con = con_of(res)
    for view in ("timeline", "by_vcpu", "observed"):
        assert rows(con, f"SELECT count(*) FROM {view}") == [(0,)]
    # the headline still lists the VM, at its mapping size, with zeros
    assert rows(
        con, "SELECT policy, vm, page_size, epochs, remote_tlb_flushes FROM shootdowns"
    ) == [("linux-6.5", "vm0", "4K", 0, 0)]
    # the reference against itself: every counter compared, nothing saved, no percentage
    assert rows(con, "SELECT count(*), sum(saved), count(saved_pct) FROM savings") == [(10, 0.0, 0)]
    assert rows(con, "SELECT policy, vm, remote_tlb_flushes FROM shootdowns_by_vm") == [
        ("linux-6.5", "vm0", 0)
    ]


def test_missing_dataset_still_opens(con_of: Con, tmp_path: Path) -> None:
    import shutil

    res = build_small_run(tmp_path)
    shutil.rmtree(tmp_path / "ds")
    con = con_of(res)
    assert rows(con, "SELECT count(*) FROM vms") == [(0,)]
    assert rows(con, "SELECT sum(remote_tlb_flushes) FROM shootdowns") == [(20,)]


def test_extra_engine_columns_are_kept(tmp_path: Path, con_of: Con) -> None:
    """A column the engine adds later does not break the views and is readable."""
    import polars as pl
    import pyarrow.parquet as pq

    ds = make_dataset(tmp_path / "ds", [vm_row("vm0")])
    res = make_results(
        tmp_path / "r",
        ds,
        policies=["linux-6.5"],
        epochs=[ep("linux-6.5", "vm0", 0, remote_tlb_flushes=1)],
    )
    part = next((res / "epochs").rglob("*.parquet"))
    frame = pl.read_parquet(part).with_columns(pl.lit(7).alias("new_counter"))
    pq.write_table(frame.to_arrow(), part)
    con = con_of(res)
    assert rows(con, "SELECT new_counter FROM epochs") == [(7,)]
    assert rows(con, "SELECT remote_tlb_flushes FROM shootdowns") == [(1,)]


def test_not_a_results_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="manifest"):
        connect(tmp_path)
    write_manifest(tmp_path, {"kind": "dataset"})
    with pytest.raises(DatasetError, match="kind `dataset`"):
        connect(tmp_path)
    with pytest.raises(DatasetError, match="no such RESULTS"):
        connect(tmp_path / "nope")


def test_sql_dir_is_the_package_dir() -> None:
    assert SQL_DIR.name == "sql"
    assert (SQL_DIR / "audits").is_dir()


def test_in_memory_views_hold_the_same_rows(
    small_run: Path, small_con: duckdb.DuckDBPyConnection
) -> None:
    """ADR 0427: the report's connection (sources and views computed into tables) answers
    every view as the saved catalog's views over Parquet do, row for row."""
    con, _ = connect_in_memory(small_run)
    try:
        got = every_view_rows(con)
        tables = rows(
            con, f"SELECT count(*) FROM duckdb_tables() WHERE schema_name = '{MATERIALISED_SCHEMA}'"
        )
    finally:
        con.close()
    want = every_view_rows(small_con)
    assert got.keys() == want.keys()
    assert {"main.shootdowns", "main.observed_vs_simulated", "per_point.timeline"} <= got.keys()
    for name, expected in want.items():
        assert got[name] == expected, name
    # every source of the RESULTS and every analysis view is a table, not a Parquet scan
    assert tables[0][0] >= len(MATERIALISED) + len(sql_view_docs())


def test_in_memory_views_are_locked_down(small_run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    con, _ = connect_in_memory(small_run)
    try:
        with pytest.raises(duckdb.Error):
            con.sql(f"SELECT * FROM read_csv('{outside}')").fetchall()
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()
