"""derive: accesses from kvm_page_fault / kvm_mmu_spte_requested / damon_aggregated; vms rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.ingest.derive import compress_runs
from pipeline.ingest.runner import run_ingest

DATA = Path(__file__).resolve().parents[1] / "data" / "ftrace"

SIDECAR = """
[host]
nodes = 2
mmu = "shadow"
kernel = "6.18.0-test"

[[vm]]
name = "lab"
mem_gib = 1
vcpus = 2
vcpu_tids = [4243, 4242]

[[vm.region]]
name = "ram"
size_gib = 1
hva_start = 0x7f0000000000
"""


def accesses(out: Path) -> list[dict[str, object]]:
    return pq.read_table(out / "accesses" / "part-00000.parquet").to_pylist()


def test_shadow_mmu_accesses_by_first_appearance_and_epochs(tmp_path: Path) -> None:
    m = run_ingest([str(DATA / "trace_pipe_noirq.txt")], tmp_path / "ds", epoch_ms=100)
    assert m["accesses_from"] == "kvm_mmu_spte_requested" and m["vms_inferred"]
    rows = accesses(tmp_path / "ds")
    assert [(r["epoch"], r["vcpu"], r["gfn_start"], r["nr_pages"]) for r in rows] == [
        (0, 0, 0x20, 2),
        (1, 1, 0x22, 1),
    ]
    assert all(r["vm"] == "vm0" and r["nr_accesses"] == 1 and not r["write"] for r in rows)
    (vm,) = pq.read_table(tmp_path / "ds" / "vms.parquet").to_pylist()
    assert vm["inferred"] and vm["mmu"] == "shadow" and vm["vcpu_tids"] == [4242, 4243]
    assert vm["vcpus"] == 2 and vm["mem_bytes"] == 2 << 20


def test_sidecar_vcpu_tids_and_damon_regions(tmp_path: Path) -> None:
    sidecar = tmp_path / "vm.toml"
    sidecar.write_text(SIDECAR)
    srcs = [str(DATA / "trace_pipe_noirq.txt"), str(DATA / "v6.5_tracefs.txt")]
    m = run_ingest(srcs, tmp_path / "ds", vm_config=sidecar, epoch_ms=1000)
    assert not m["vms_inferred"]
    (vm,) = pq.read_table(tmp_path / "ds" / "vms.parquet").to_pylist()
    assert vm["vm"] == "lab" and not vm["inferred"] and vm["kernel"] == "6.18.0-test"
    rows = accesses(tmp_path / "ds")
    # kvm_page_fault is present (v6.5 fixture), so it is the source of vCPU accesses
    assert m["accesses_from"] == "kvm_page_fault"
    damon = [r for r in rows if r["gfn_start"] == 59]
    # 139637976969216-139637977001984 lies in the region at hva 0x7f0000000000 (gpa 0)
    assert [(r["gfn_start"], r["nr_pages"], r["nr_accesses"]) for r in damon] == [(59, 8, 5)]
    epochs = pl.DataFrame(rows)["epoch"].to_list()
    assert epochs == sorted(epochs)


def test_sidecar_tids_number_spte_requested_vcpus(tmp_path: Path) -> None:
    sidecar = tmp_path / "vm.toml"
    sidecar.write_text(SIDECAR)
    run_ingest([str(DATA / "trace_cmd_report.txt")], tmp_path / "ds", vm_config=sidecar)
    rows = accesses(tmp_path / "ds")
    assert [(r["vcpu"], r["gfn_start"]) for r in rows] == [(0, 0x11), (1, 0x10)]


def test_compress_runs_breaks_on_gaps_counts_and_keys() -> None:
    points = pl.DataFrame(
        {
            "vm": ["a"] * 6,
            "epoch": [0, 0, 0, 0, 0, 1],
            "vcpu": [0, 0, 0, 0, 1, 0],
            "write": [False] * 6,
            "gfn": [1, 2, 3, 5, 6, 7],
            "nr_accesses": [1, 1, 2, 2, 1, 1],
        },
        schema_overrides={"vcpu": pl.Int32},
    )
    runs = compress_runs(points)
    got = runs.select("epoch", "vcpu", "gfn_start", "nr_pages", "nr_accesses").rows()
    assert got == [
        (0, 0, 1, 2, 1),
        (0, 0, 3, 1, 2),
        (0, 0, 5, 1, 2),
        (0, 1, 6, 1, 1),
        (1, 0, 7, 1, 1),
    ]


def test_bad_epoch_ms(tmp_path: Path) -> None:
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="epoch-ms"):
        run_ingest([str(DATA / "v7_tracefs.txt")], tmp_path / "ds", epoch_ms=0)
