"""A DATASET's hosting.parquet and trace origin reach the engine (ADR 0330)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.model.hosting import VmHosting, VmmArea, hosting_frame
from pipeline.replay.runner import (
    ReplayParams,
    from_trace,
    open_dataset,
    replay_dataset,
    replay_frames,
    run_replay,
)
from pipeline.schema import read_manifest, write_manifest, write_parquet
from tests.replay.test_runner import make_dataset

SLOW_SHARE = VmHosting(
    "vm0",
    vcpu_cpu_share=(0.1, 0.1),
    vmm_areas=(VmmArea(0x10000000, 64 << 20, 8 << 20, "anon"),),
    nr_threads=4,
    host_runnable=9.0,
    zap_ns_per_spte=100.0,
    host_cpus=2,
)


def _with_hosting(root: Path, hosting: VmHosting = SLOW_SHARE) -> Path:
    ds = make_dataset(root, epochs=40)
    write_parquet(hosting_frame([hosting]), ds / "hosting.parquet", "hosting")
    return ds


def test_hosting_table_round_trips(tmp_path: Path) -> None:
    ds = _with_hosting(tmp_path / "ds")
    assert open_dataset(ds, ReplayParams()).hosting == (SLOW_SHARE,)


def test_dataset_hosting_is_used_unless_turned_off_or_given(tmp_path: Path) -> None:
    ds = _with_hosting(tmp_path / "ds")
    opened = open_dataset(ds, ReplayParams())
    frame = opened.accesses.lazy().collect()
    pol = ["linux-6.18"]
    used = replay_dataset(ds, pol, ReplayParams(busy_vcpus=True))
    direct = replay_frames(
        opened.vms, frame, pol, ReplayParams(busy_vcpus=True, hosting=(SLOW_SHARE,))
    )
    assert used.scans.equals(direct.scans) and used.epochs.equals(direct.epochs)
    ignored = replay_dataset(ds, pol, ReplayParams(busy_vcpus=True, dataset_hosting=False))
    plain = replay_frames(opened.vms, frame, pol, ReplayParams(busy_vcpus=True))
    assert ignored.scans.equals(plain.scans)
    # a vCPU at a 10% CPU share reaches the 1 s scan delay ten times later: fewer scans
    assert used.scans.height < ignored.scans.height
    other = VmHosting("vm0", vcpu_cpu_share=(0.5, 0.5))
    given = replay_dataset(ds, pol, ReplayParams(busy_vcpus=True, hosting=(other,)))
    want = replay_frames(opened.vms, frame, pol, ReplayParams(busy_vcpus=True, hosting=(other,)))
    assert given.scans.equals(want.scans)


def test_results_manifest_records_the_facts_used(tmp_path: Path) -> None:
    ds = _with_hosting(tmp_path / "ds")
    out = run_replay(ds, tmp_path / "res", ["linux-6.18"])
    manifest = read_manifest(out)
    assert manifest["hosting"]["from"] == "dataset hosting.parquet"
    assert set(manifest["hosting"]["facts"]["vm0"]) == {
        "vcpu_cpu_share",
        "vmm_areas",
        "nr_threads",
        "host_runnable",
        "zap_ns_per_spte",
        "host_cpus",
    }
    # a hosting.parquet written without ingest's record: its facts count as measured
    provenance = manifest["hosting"]["provenance"]["vm0"]
    assert provenance["vcpu_cpu_share"] == "measured"
    assert provenance["preempt_per_s"] == "defaulted"
    # hosting.parquet means a capture: busy vCPUs by default
    assert manifest["busy_vcpus"] == {"value": True, "from": "dataset from a trace"}
    assert manifest["params"]["busy_vcpus"] is True
    res = CliRunner().invoke(
        app,
        [
            "replay",
            str(ds),
            "--out",
            str(tmp_path / "r2"),
            "-p",
            "linux-6.18",
            "--no-hosting",
            "--no-busy-vcpus",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert manifest["hosting"]["from"] == "none (--no-hosting)"
    assert manifest["hosting"]["facts"] == {}
    assert set(manifest["hosting"]["provenance"]["vm0"].values()) == {"defaulted"}
    assert manifest["busy_vcpus"] == {"value": False, "from": "params"}


def test_busy_vcpus_default_follows_the_dataset_origin(tmp_path: Path) -> None:
    assert from_trace({"command": "ingest", "sources": [{"path": "x.trace.zst"}]})
    assert not from_trace({"generator": "synth", "sources": [{"path": "x.toml"}]})
    assert from_trace({"sources": [{"path": "/t/x.dat"}]})
    assert not from_trace({"sources": ["test"]})
    assert from_trace({}, (SLOW_SHARE,))
    ds = make_dataset(tmp_path / "ds", epochs=40, vcpu=0)
    write_manifest(ds, {"kind": "dataset", "epoch_ms": 100, "command": "ingest", "sources": []})
    # vCPU 1 never faults: a real trace's vCPU 1 still ran, so it ticks the scanner too
    auto = replay_dataset(ds, ["linux-6.18"])
    off = replay_dataset(ds, ["linux-6.18"], ReplayParams(busy_vcpus=False))
    assert set(auto.vcpu_epochs["vcpu"].to_list()) > set(off.vcpu_epochs["vcpu"].to_list())


REAL = Path(__file__).resolve().parents[2] / "traces" / "real"


def test_provenance_of_a_lab_capture_reaches_the_results(tmp_path: Path) -> None:
    """issue 11: per fact, measured (the lab, capture.json), inferred (the trace, or another
    fact) or defaulted, from ingest's DATASET manifest to replay's RESULTS manifest."""
    import pytest

    from pipeline.ingest.runner import run_ingest

    stem = REAL / "lab-anon-thp-nopin-nb1"
    if not Path(f"{stem}.trace.zst").is_file():
        pytest.skip("capture not committed")
    ds = tmp_path / "ds"
    run_ingest([f"{stem}.trace.zst"], ds, vm_config=Path(f"{stem}.toml"))
    recorded = read_manifest(ds)["hosting_provenance"]["lab"]
    assert recorded["vcpu_cpu_share"] == "measured ([lab] schedstat)"
    assert recorded["vmm_areas"] == "measured (capture.json smaps)"
    assert recorded["host_runnable"].startswith("inferred")
    # this THP cell has no zap probe ([lab] kvm_zap_ns_per_spte): the trace gives its bound
    assert recorded["zap_ns_per_spte"].startswith("inferred (trace")
    assert recorded["scan_ns_per_spte_2m"].startswith("inferred (trace")
    assert recorded["scan_ns_per_spte_4k"] == "defaulted"
    out = run_replay(ds, tmp_path / "res", ["linux-6.18"])
    assert read_manifest(out)["hosting"]["provenance"]["lab"] == recorded
