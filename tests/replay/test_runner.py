"""RESULTS writing, DATASET reading, the `replay` and `policies` commands, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import DatasetError, UnknownPolicyError
from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import ReplayParams, replay_dataset, replay_frames, run_replay
from pipeline.schema import read_partitioned, write_manifest, write_parquet
from tests.replay.conftest import MIB, accesses_frame, every_epoch, region, vm_row, vms_frame


def make_dataset(root: Path, *, epoch_ms: int = 100, vcpu: int = 1, epochs: int = 14) -> Path:
    root.mkdir(parents=True)
    vms = vms_frame(vm_row(regions=[region(size_bytes=8 * MIB)]))
    acc = accesses_frame(every_epoch("vm0", epochs, vcpu, 0, 2048))
    write_parquet(vms, root / "vms.parquet", "vms")
    (root / "accesses").mkdir()
    write_parquet(acc, root / "accesses" / "part-00000.parquet", "accesses")
    write_manifest(root, {"kind": "dataset", "epoch_ms": epoch_ms, "sources": ["test"]})
    return root


def test_run_replay_writes_results(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds")
    out = run_replay(ds, tmp_path / "res", ["linux-6.5", "linux-7.1"], quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "results"
    assert manifest["dataset"] == str(ds.resolve())
    assert manifest["policies"] == ["linux-6.5", "linux-7.1"]
    assert manifest["epoch_ms"] == 100
    assert (out / "epochs" / "policy=linux-6.5" / "vm=vm0" / "part-0.parquet").is_file()
    for table in ("epochs", "vcpu_epochs", "scans"):
        assert (out / table / "policy=linux-7.1" / "vm=vm0" / "part-0.parquet").is_file()
    back = read_partitioned(out / "epochs", "epochs").sort("policy", "page_size", "epoch")
    direct = replay_dataset(ds, ["linux-6.5", "linux-7.1"]).epochs.sort(
        "policy", "page_size", "epoch"
    )
    assert back.equals(direct)


def test_workers_do_not_change_results(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds")
    one = replay_dataset(ds, None, ReplayParams(workers=1))
    two = replay_dataset(ds, None, ReplayParams(workers=2))
    assert one.epochs.equals(two.epochs)
    assert one.scans.equals(two.scans)
    assert set(one.epochs["policy"].unique()) <= set(POLICIES)


def test_parallel_progress_moves_per_epoch_batch(tmp_path: Path) -> None:
    """With workers, the bar is fed as epochs pass in each worker, not once per policy."""
    ds = make_dataset(tmp_path / "ds", epochs=40)
    seen: list[int] = []
    out = replay_dataset(
        ds, ["linux-6.5", "linux-7.1"], ReplayParams(workers=2), progress=seen.append
    )
    assert out.epochs.height > 0
    assert sum(seen) == 2 * 40
    assert len(seen) > 2 and max(seen) < 40


def test_coarser_epochs_rebin_the_dataset(tmp_path: Path) -> None:
    # 28 epochs of 50 ms re-binned to 14 of 100 ms replay like 14 epochs of 100 ms
    fine = make_dataset(tmp_path / "fine", epoch_ms=50, epochs=28)
    coarse = make_dataset(tmp_path / "coarse", epoch_ms=100, epochs=14)
    out = replay_dataset(fine, ["linux-6.5"], ReplayParams(epoch_ms=100))
    assert out.epochs["epoch"].max() == 11  # scan at the end of epoch 10, refaults in 11
    assert out.epochs.equals(replay_dataset(coarse, ["linux-6.5"]).epochs)
    ds = fine
    with pytest.raises(DatasetError, match="multiple"):
        replay_dataset(ds, ["linux-6.5"], ReplayParams(epoch_ms=75))


def test_bad_accesses_are_a_dataset_error() -> None:
    vms = vms_frame(vm_row(regions=[region(size_bytes=8 * MIB)]))
    with pytest.raises(DatasetError, match="vcpu outside"):
        replay_frames(vms, accesses_frame([("vm0", 0, 7, 0, 1)]))
    with pytest.raises(DatasetError, match="gfn outside"):
        replay_frames(vms, accesses_frame([("vm0", 0, 0, 2040, 100)]))
    with pytest.raises(UnknownPolicyError, match=r"did you mean `linux-6\.5`"):
        replay_frames(vms, accesses_frame([("vm0", 0, 0, 0, 1)]), ["linux-6.6"])


def test_unaligned_region_is_a_dataset_error() -> None:
    vms = vms_frame(vm_row(regions=[region(size_bytes=3 * MIB)]))
    with pytest.raises(DatasetError, match="2 MiB"):
        replay_frames(vms, accesses_frame([("vm0", 0, 0, 0, 1)]))


def test_cli_replay_and_policies(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "replay",
            str(ds),
            "--out",
            str(tmp_path / "r"),
            "--policy",
            "rfc-v2",
            "--quiet",
            "--jobs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "manifest.json").is_file()
    res = runner.invoke(app, ["policies"])
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(POLICIES)


def test_cli_errors_are_one_line_and_leave_nothing(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds")
    out = tmp_path / "r"
    script = Path(sys.executable).with_name("tlbreplay")
    if not script.is_file():
        pytest.skip("the tlbreplay console script is not installed next to this python")
    cmd = [str(script)]
    for args, needle in (
        (["replay", str(ds), "--out", str(out), "--policy", "linux-6.6"], "did you mean"),
        (["replay", str(tmp_path / "nope"), "--out", str(out)], "no such DATASET directory"),
        (["replay", str(ds), "--out", str(out), "--epoch-ms", "150"], "multiple"),
    ):
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
        assert res.returncode == 1
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tlbreplay: error:") and needle in err[0]
        assert "Traceback" not in res.stderr
        assert not out.exists()
        assert not list(tmp_path.glob(".r.*"))


def test_results_are_deterministic(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds")
    a = run_replay(ds, tmp_path / "a", ["linux-6.5"], quiet=True)
    b = run_replay(ds, tmp_path / "b", ["linux-6.5"], quiet=True)
    for table in ("epochs", "vcpu_epochs", "scans"):
        fa = sorted((a / table).rglob("*.parquet"))
        fb = sorted((b / table).rglob("*.parquet"))
        assert [
            pl.read_parquet(f).equals(pl.read_parquet(g)) for f, g in zip(fa, fb, strict=True)
        ] == [True] * len(fa)


def test_accesses_of_an_unknown_vm_are_an_error() -> None:
    vms = vms_frame(vm_row(regions=[region(size_bytes=8 * MIB)]))
    with pytest.raises(DatasetError, match="not in vms"):
        replay_frames(vms, accesses_frame([("other", 0, 0, 0, 1)]))


def test_vmm_main_thread_scans_at_task_scan_start() -> None:
    # the mm's first thread has node_stamp 0, so task_tick_numa() sets task_scan_start():
    # 8 MiB RSS -> one window -> max(100, 1000 / 1) = 1000 ms. Running all the time
    # (vmm_thread_share 1.0) its runtime passes 0 + scan_delay 1000 ms at the end of epoch
    # 10, as vCPU 0's does (node_stamp 8 ms). The tick order rotates: key (index - 10 % 3)
    # % 3 is 1 for the main thread (index 2) and 2 for vCPU 0, so the main thread ticks
    # first and wins task_numa_work.
    vms = vms_frame(vm_row(regions=[region(size_bytes=8 * MIB)]))
    acc = accesses_frame(every_epoch("vm0", 30, 0, 0, 2048))
    busy = ReplayParams(vmm_thread=True, vmm_thread_share=1.0)
    out = replay_frames(vms, acc, ["linux-6.5"], busy)
    assert -1 in out.scans["vcpu"].to_list()
    main = out.vcpu_epochs.filter(pl.col("vcpu") == -1)
    assert main["task_numa_work_runs"].sum() >= 1
    # by default it runs 5% of each epoch (it sleeps in ppoll()): 30 x 5 ms = 150 ms of
    # runtime, below node_stamp 0 + scan_delay 1000 ms: it never scans (review finding 4)
    idle = replay_frames(vms, acc, ["linux-6.5"], ReplayParams(vmm_thread=True))
    assert -1 not in idle.scans["vcpu"].to_list()
    assert idle.vcpu_epochs.filter(pl.col("vcpu") == -1)["task_numa_work_runs"].sum() == 0


def test_out_may_not_replace_the_dataset(tmp_path: Path) -> None:
    from pipeline.errors import OutputError

    ds = make_dataset(tmp_path / "ds")
    for out in (ds, tmp_path):
        with pytest.raises(OutputError, match="would replace the DATASET"):
            run_replay(ds, out, ["linux-6.5"], quiet=True)
    assert (ds / "manifest.json").is_file()


def test_busy_vcpus_tick_without_accesses() -> None:
    # vCPU 0 touches the region at epoch 0 and one page at epoch 29: by accesses alone it ran
    # for 2 epochs (200 ms < scan_delay), so nothing is scanned; with busy_vcpus every vCPU
    # runs all 30 epochs and scans at the end of epochs 10 and 20
    vms = vms_frame(vm_row(regions=[region(size_bytes=8 * MIB)]))
    acc = accesses_frame([("vm0", 0, 0, 0, 2048), ("vm0", 29, 0, 0, 1)])
    idle = replay_frames(vms, acc, ["linux-6.5"])
    busy = replay_frames(vms, acc, ["linux-6.5"], ReplayParams(busy_vcpus=True))
    assert idle.scans.height == 0
    assert busy.scans["epoch"].to_list() == [10, 20]
    assert int(busy.epochs["spte_zapped"].sum()) == 2048
