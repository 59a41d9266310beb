"""A fleet of three real captures (three hosts) ingested and replayed in one process and on a
scheduler with two worker processes: identical files; each host replayed on its own host
state; the views split by host; a worker killed mid-run changes nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.analyze.views import MATERIALISED_SCHEMA, POINT_SCHEMA, connect, connect_in_memory
from pipeline.cli import app
from pipeline.errors import InputError
from pipeline.ingest.fleet import run_fleet_ingest
from pipeline.model.fleet import find_captures
from pipeline.replay.fleet import run_fleet_replay
from pipeline.replay.params import ReplayParams
from pipeline.replay.runner import run_replay
from pipeline.schema import read_manifest
from tests.analyze.conftest import every_view_rows
from tests.cluster.conftest import FLEET_CAPTURES, Cluster, parquet_bytes

POLICIES = ["linux-6.5", "linux-7.1", "notify-changed"]
HOSTS = sorted(FLEET_CAPTURES)


def _manifest(root: Path, *drop: str) -> dict[str, Any]:
    data = read_manifest(root)
    return {k: v for k, v in data.items() if k not in drop}


@pytest.fixture
def one_process(fleet_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The fleet ingested and replayed in this process (the reference)."""
    dataset, results = tmp_path / "ref-dataset", tmp_path / "ref-results"
    run_fleet_ingest([str(fleet_dir)], dataset)
    run_fleet_replay(dataset, results, POLICIES, ReplayParams())
    return dataset, results


@pytest.mark.slow
def test_fleet_on_two_worker_processes_equals_one_process(
    cluster: Cluster, fleet_dir: Path, one_process: tuple[Path, Path], tmp_path: Path
) -> None:
    ref_dataset, ref_results = one_process
    dataset, results = tmp_path / "dataset", tmp_path / "results"
    runner = CliRunner()
    ingested = runner.invoke(
        app, ["ingest", str(fleet_dir), "--out", str(dataset), "--scheduler", cluster.address]
    )
    assert ingested.exit_code == 0, ingested.output
    assert "3 hosts" in ingested.output
    policy_args = [a for p in POLICIES for a in ("--policy", p)]
    replayed = runner.invoke(
        app,
        [
            "replay",
            str(dataset),
            "--out",
            str(results),
            "--scheduler",
            cluster.address,
            *policy_args,
        ],
    )
    assert replayed.exit_code == 0, replayed.output

    # identical to the single-process run, file by file
    assert parquet_bytes(dataset) == parquet_bytes(ref_dataset)
    assert parquet_bytes(results) == parquet_bytes(ref_results)
    assert _manifest(dataset, "scheduler") == _manifest(ref_dataset, "scheduler")
    assert _manifest(results, "scheduler", "dataset") == _manifest(
        ref_results, "scheduler", "dataset"
    )
    # the client wrote the manifests, the workers every partition; nothing temporary is left
    assert read_manifest(dataset)["scheduler"] == cluster.address
    assert not list(tmp_path.rglob(".*.tmp"))

    # 3 hosts in vms and in the results, host by host
    assert sorted(p.name for p in dataset.glob("host=*")) == [f"host={h}" for h in HOSTS]
    con, _ = connect(results)
    try:
        assert con.execute("select host, vm from vms order by host").fetchall() == [
            (h, "lab") for h in HOSTS
        ]
        rows = con.execute(
            "select host, policy, count(*) from shootdowns_by_vm group by all order by all"
        ).fetchall()
        assert rows == sorted((h, p, 1) for h in HOSTS for p in POLICIES)
        total = con.execute(
            "select sum(remote_tlb_flushes) from epochs where policy = 'linux-6.5'"
        ).fetchone()
        by_host = con.execute(
            "select sum(remote_tlb_flushes) from shootdowns_by_vm where policy = 'linux-6.5'"
        ).fetchone()
        assert total == by_host  # the fleet's views sum the hosts' totals
    finally:
        con.close()

    # each host replayed on its own host state: its partition is what a replay of that host's
    # DATASET alone writes, byte for byte
    for host in HOSTS:
        alone = tmp_path / f"alone-{host}"
        run_replay(dataset / f"host={host}", alone, POLICIES, ReplayParams())
        mine = {
            k.replace(f"/host={host}", ""): v
            for k, v in parquet_bytes(results).items()
            if f"/host={host}/" in k
        }
        assert mine == parquet_bytes(alone)


@pytest.mark.slow
def test_worker_killed_mid_replay_still_identical(
    cluster: Cluster, one_process: tuple[Path, Path], tmp_path: Path
) -> None:
    ref_dataset, ref_results = one_process
    victim = cluster.workers[0]
    done: list[int] = []

    def kill_after_first(n: int) -> None:
        done.append(n)
        if len(done) == 1:
            os.kill(victim.pid, signal.SIGKILL)

    results = tmp_path / "results"
    run_fleet_replay(
        ref_dataset,
        results,
        POLICIES,
        ReplayParams(),
        scheduler=cluster.address,
        progress=kill_after_first,
    )
    assert victim.wait(timeout=30) == -signal.SIGKILL
    assert len(done) == len(HOSTS) * len(POLICIES)  # the kill came after the first of 9
    assert parquet_bytes(results) == parquet_bytes(ref_results)


def test_fleet_captures_need_their_sidecars(fleet_dir: Path, tmp_path: Path) -> None:
    (fleet_dir / "h-anon.toml").unlink()
    with pytest.raises(InputError, match=r"h-anon.trace.zst: no sidecar `h-anon.toml`"):
        find_captures([str(fleet_dir)])
    result = CliRunner().invoke(app, ["ingest", str(fleet_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_fleet_sources_glob_and_duplicates(fleet_dir: Path) -> None:
    caps = find_captures([str(fleet_dir / "h-*")])  # a quoted glob; sidecars are skipped
    assert [c.host for c in caps] == HOSTS
    assert all(c.sidecar.name == f"{c.host}.toml" for c in caps)
    again = str(fleet_dir / "h-anon.trace.zst")
    with pytest.raises(InputError, match="host `h-anon` is also the capture"):
        find_captures([again, str(fleet_dir)])


def test_single_host_ingest_refuses_cluster_options(tmp_path: Path) -> None:
    trace = Path(__file__).resolve().parents[2] / "traces/real/lab-anon-thp-pin-nb1.trace.zst"
    result = CliRunner().invoke(
        app, ["ingest", str(trace), "--out", str(tmp_path / "o"), "--jobs", "2"]
    )
    assert result.exit_code == 1
    assert "pass a directory, a glob or --fleet" in result.output


@pytest.mark.slow
def test_in_memory_views_of_a_fleet_keep_accesses_a_view(one_process: tuple[Path, Path]) -> None:
    """ADR 0427 on a fleet: the report's connection answers every view as the saved views
    do, and the fleet's keyed `accesses` (a row-level copy of the DATASET's) is not copied."""
    _, results = one_process
    saved, _ = connect(results)
    memory, _ = connect_in_memory(results)
    try:
        want, got = every_view_rows(saved), every_view_rows(memory)
        copied = {
            name
            for (name,) in memory.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = ?",
                [MATERIALISED_SCHEMA],
            ).fetchall()
        }
    finally:
        saved.close()
        memory.close()
    assert "main.shootdowns" in want
    assert got == want
    assert "epochs" in copied and f"{POINT_SCHEMA}_shootdowns" in copied
    assert not any(name.endswith("accesses") for name in copied)
