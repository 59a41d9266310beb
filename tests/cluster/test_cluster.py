"""What a user sees when the cluster misbehaves, through the real CLI and real processes: a
worker running modified code, a scheduler with no worker, a scheduler lost mid-sweep (then
``--resume``), SIGTERM of the client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.cluster import code_fingerprint
from pipeline.schema import read_manifest
from pipeline.sweep.runner import plan_sweep, run_sweep
from tests.cluster.conftest import BIN, REPO, TINY_SPEC, cli_env, parquet_bytes, start_cluster

GRID = '[grid]\npolicy = ["linux-6.5", "linux-7.1"]\nscan_size_mb = [16, 32, 64]\n'


def _sweep_cli(
    out: Path, grid: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    args = [str(BIN / "tlbreplay"), "sweep", str(TINY_SPEC), "--grid", str(grid)]
    return subprocess.run(
        [*args, "--out", str(out), "--quiet", *extra],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=300,
        check=False,
    )


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def _modified_copy(tmp_path: Path) -> Path:
    """The package with one changed line in the cost model, as a 'modified worker' runs it."""
    alt = tmp_path / "alt"
    shutil.copytree(REPO / "pipeline", alt / "pipeline", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copytree(REPO / "schemas", alt / "schemas")
    cost = alt / "pipeline" / "replay" / "cost.py"
    cost.write_text(cost.read_text() + "\n# a local change: cost_us doubled here\n")
    return alt


@pytest.mark.slow
def test_worker_with_other_code_is_one_line_and_exit_1(tmp_path: Path, grid: Path) -> None:
    cluster = start_cluster(tmp_path, 0)
    try:
        alt = _modified_copy(tmp_path)
        cluster.add_worker(env={**os.environ, "PYTHONPATH": str(alt)})
        cluster.wait_workers(1)
        out = tmp_path / "results"
        result = _sweep_cli(out, grid, "--scheduler", cluster.address)
    finally:
        cluster.stop()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tlbreplay: error: Dask worker `tcp://127.0.0.1:")
    assert f"this client {code_fingerprint()}" in lines[0]
    assert "install the same version" in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".results.*"))


@pytest.mark.slow
def test_scheduler_without_workers_is_one_line_and_exit_1(tmp_path: Path, grid: Path) -> None:
    cluster = start_cluster(tmp_path, 0)
    try:
        out = tmp_path / "results"
        env = {**cli_env(), "TLBREPLAY_WORKER_TIMEOUT_S": "2"}
        result = _sweep_cli(out, grid, "--scheduler", cluster.address, env=env)
    finally:
        cluster.stop()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"tlbreplay: error: no Dask worker joined the scheduler `{cluster.address}` within 2 s; "
        f"start workers (`dask worker {cluster.address}`) or raise TLBREPLAY_WORKER_TIMEOUT_S"
    ]
    assert not out.exists()


@pytest.mark.slow
def test_scheduler_lost_keeps_finished_points_and_resume_finishes(
    tmp_path: Path, grid: Path
) -> None:
    plan = plan_sweep(TINY_SPEC, grid)
    cluster = start_cluster(tmp_path, 1)
    out = tmp_path / "results"
    args = [str(BIN / "tlbreplay"), "sweep", str(TINY_SPEC), "--grid", str(grid), "-q"]
    try:
        proc = subprocess.Popen(
            [*args, "--out", str(out), "--scheduler", cluster.address],
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".results.*.tmp/epochs")):  # a point is written
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cluster.scheduler.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        cluster.stop()
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # no Dask traceback, no "failed after one retry: None"
    assert lines[0].startswith("tlbreplay: error: lost the Dask scheduler after ")
    assert "run the same command with --resume" in lines[0]
    points = pl.read_parquet(out / "points.parquet")
    ok = set(points.filter(pl.col("status") == "ok")["point"].to_list())
    pending = set(points.filter(pl.col("status") == "pending")["point"].to_list())
    assert ok
    assert pending
    assert ok | pending == set(range(len(plan.points)))
    assert {p.name for p in (out / "epochs").iterdir()} == {f"point={p}" for p in ok}
    assert read_manifest(out)["pending"] == sorted(pending)

    # a new cluster; --resume keeps the finished points and runs the rest
    again = start_cluster(tmp_path, 1)
    try:
        result = run_sweep(TINY_SPEC, grid, out, scheduler=again.address, resume=True)
    finally:
        again.stop()
    assert not result.failed
    assert "pending" not in result.manifest
    reference = tmp_path / "reference"
    run_sweep(TINY_SPEC, grid, reference, workers=1)
    assert parquet_bytes(out) == parquet_bytes(reference)


@pytest.mark.slow
def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\nscan_size_mb = [8, 16, 32, 64, 128, 256]\n")  # 42 points
    out = tmp_path / "results"
    args = [str(BIN / "tlbreplay"), "sweep", str(TINY_SPEC), "--grid", str(grid)]
    proc = subprocess.Popen(
        [*args, "--out", str(out), "--quiet", "-j", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".results.*.tmp/epochs")):  # the first point is written
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "tlbreplay: interrupted"
    assert not out.exists()
    assert not list(tmp_path.glob(".results.*"))
