"""A generated fleet (bench/fleetgen.py, CI-sized) end to end through the CLI on a LocalCluster
of two worker processes: every host ingested apart, replayed, and summed by the views."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.fleetgen import make_fleet
from pipeline.analyze.views import connect
from pipeline.cli import app
from pipeline.schema import read_manifest

HOSTS = 6


@pytest.mark.slow
def test_generated_fleet_end_to_end_on_a_local_cluster(tmp_path: Path) -> None:
    make_fleet(tmp_path / "captures", HOSTS, seconds=10)
    dataset, results = tmp_path / "dataset", tmp_path / "results"
    runner = CliRunner()
    ingested = runner.invoke(
        app, ["ingest", str(tmp_path / "captures"), "-o", str(dataset), "-j", "2"]
    )
    assert ingested.exit_code == 0, ingested.output
    manifest = read_manifest(dataset)
    assert manifest["scheduler"] == "local"
    assert [h["host"] for h in manifest["hosts"]] == [f"h{i:04d}" for i in range(HOSTS)]
    # every input line accounted for, host by host and in total
    assert all(
        h["lines_total"] == h["parsed"] + h["comments"] + h["quarantined"]
        for h in manifest["hosts"]
    )
    assert manifest["lines_total"] == sum(h["lines_total"] for h in manifest["hosts"])
    replayed = runner.invoke(
        app,
        [
            "replay",
            str(dataset),
            "-o",
            str(results),
            "-j",
            "2",
            "-p",
            "linux-6.5",
            "-p",
            "notify-changed",
        ],
    )
    assert replayed.exit_code == 0, replayed.output
    con, _ = connect(results)
    try:
        per_host = con.execute(
            "select host, policy, remote_tlb_flushes from shootdowns_by_vm order by all"
        ).fetchall()
        total = con.execute(
            "select policy, remote_tlb_flushes from savings_total order by policy"
        ).fetchall()
    finally:
        con.close()
    assert len(per_host) == HOSTS * 2
    assert {h for h, _, _ in per_host} == {f"h{i:04d}" for i in range(HOSTS)}
    for policy, flushes in total:
        assert flushes == sum(f for _, p, f in per_host if p == policy)
    # the generated hosts do cost shootdowns, and notify-changed saves some of them
    summed = dict(total)
    assert summed["linux-6.5"] > summed["notify-changed"] > 0
