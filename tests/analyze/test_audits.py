"""Each audit in sql/audits/ returns exactly the rows that break its invariant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.analyze.query import audit_files, run_audits
from pipeline.analyze.views import connect
from tests.analyze.results_builder import ep, make_dataset, make_results, vm_row


def audit_rows(
    tmp_path: Path, vms: list[dict[str, Any]], **results: Any
) -> dict[str, list[tuple[Any, ...]]]:
    ds = make_dataset(tmp_path / "ds", vms)
    res = make_results(tmp_path / "r", ds, **results)
    con, _ = connect(res)
    try:
        return {a.name: [tuple(r.values()) for r in a.rows.to_pylist()] for a in run_audits(con)}
    finally:
        con.close()


def test_audit_files_have_docs() -> None:
    names = [p.stem for p in audit_files()]
    assert names == sorted(names) and len(names) >= 5
    for path in audit_files():
        text = path.read_text()
        assert text.startswith("-- Audit: "), path
        assert "-- Returns: " in text, path


def test_pinned_page_migrated(tmp_path: Path) -> None:
    got = audit_rows(
        tmp_path,
        [vm_row("pinned", pinned="all"), vm_row("free")],
        policies=["linux-6.5"],
        epochs=[
            ep("linux-6.5", "pinned", numa_pages_migrated=512),
            ep("linux-6.5", "free", numa_pages_migrated=4096),  # unpinned: allowed
        ],
    )
    assert got["pinned_page_migrated"] == [("linux-6.5", "pinned", 1 << 30, 1 << 30, 512)]


def test_oracle_above_other_policy(tmp_path: Path) -> None:
    got = audit_rows(
        tmp_path,
        [vm_row("vm0")],
        policies=["linux-6.5", "oracle"],
        epochs=[
            ep("linux-6.5", "vm0", remote_tlb_flushes=3, spte_zapped=10),
            ep("oracle", "vm0", remote_tlb_flushes=4, spte_zapped=12),
        ],
    )
    # flushes are not compared (cadence and history differ): only the zaps
    assert got["oracle_above_other_policy"] == [("vm0", "spte_zapped", 12, "linux-6.5", 10)]


def test_counter_bounds(tmp_path: Path) -> None:
    got = audit_rows(
        tmp_path,
        [vm_row("vm0", vcpus=2)],
        policies=["linux-6.5"],
        epochs=[
            ep("linux-6.5", "vm0", 0, numa_hint_faults=1, numa_hint_faults_local=2),
            ep("linux-6.5", "vm0", 1, remote_tlb_flushes=1, shootdown_ipis=3),
            ep("linux-6.5", "vm0", 2, numa_huge_pte_updates=1, numa_pte_updates=100),
            ep("linux-6.5", "vm0", 3, spte_zapped=-1),
            ep("linux-6.5", "vm0", 4, cost_us=float("nan")),
            ep("linux-6.5", "vm0", 5, remote_tlb_flushes=2, shootdown_ipis=4, cost_us=1.0),
        ],
    )
    assert got["counter_bounds"] == [
        ("linux-6.5", "vm0", 0, "numa_hint_faults_local > numa_hint_faults"),
        ("linux-6.5", "vm0", 1, "shootdown_ipis > remote_tlb_flushes * vcpus"),
        ("linux-6.5", "vm0", 2, "numa_huge_pte_updates * 512 > numa_pte_updates"),
        ("linux-6.5", "vm0", 3, "a counter is negative"),
        ("linux-6.5", "vm0", 4, "cost_us negative or not finite"),
    ]


def test_vcpu_totals_match_epochs(tmp_path: Path) -> None:
    got = audit_rows(
        tmp_path,
        [vm_row("vm0")],
        policies=["linux-6.5"],
        epochs=[ep("linux-6.5", "vm0", ept_violations=5, numa_hint_faults=2)],
        vcpu_epochs=[
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "vcpu": 0,
                "epoch": 0,
                "ept_violations": 3,
                "numa_hint_faults": 2,
            },
            {"policy": "linux-6.5", "vm": "vm0", "vcpu": 1, "epoch": 0, "ept_violations": 1},
        ],
    )
    assert got["vcpu_totals_match_epochs"] == [("linux-6.5", "vm0", "ept_violations", 5, 4)]


def test_epoch_times(tmp_path: Path) -> None:
    got = audit_rows(
        tmp_path,
        [vm_row("vm0")],
        policies=["linux-6.5"],
        epochs=[ep("linux-6.5", "vm0", 2, t_ms=250, remote_tlb_flushes=1)],
        scans=[
            {"policy": "linux-6.5", "vm": "vm0", "epoch": 1, "t_ms": 200},  # end tick: fine
            {"policy": "linux-6.5", "vm": "vm0", "epoch": 1, "t_ms": 201},  # next epoch
        ],
    )
    assert got["epoch_times"] == [
        ("epochs", "linux-6.5", "vm0", 2, 250, 200),
        ("scans", "linux-6.5", "vm0", 1, 201, 100),
    ]


def test_all_audits_pass_on_consistent_rows(tmp_path: Path) -> None:
    got = audit_rows(
        tmp_path,
        [vm_row("vm0", pinned="all")],
        policies=["linux-6.5", "oracle"],
        epochs=[
            ep(
                "linux-6.5",
                "vm0",
                1,
                remote_tlb_flushes=1,
                shootdown_ipis=2,
                spte_zapped=8,
                ept_violations=2,
                cost_us=3.5,
            )
        ],
        vcpu_epochs=[
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "vcpu": v,
                "epoch": 1,
                "ept_violations": 1,
                "shootdown_ipis": 1,
            }
            for v in (0, 1)
        ],
    )
    assert got == {name: [] for name in got}
