"""`tlbreplay sweep` on a real LocalCluster: layout, equality with replay, determinism,
failures after retry, the views on a sweep RESULTS, the CLI (with --scheduler)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.analyze.sweep_plots import attach_sweep, write_sensitivity
from pipeline.analyze.views import connect
from pipeline.cli import app
from pipeline.errors import ClusterError, SpecError
from pipeline.replay.dataset import profile_hosting
from pipeline.replay.params import ReplayParams
from pipeline.replay.runner import replay_frames
from pipeline.schema import read_manifest, read_parquet, table_schema
from pipeline.sweep.runner import (
    dask_client,
    plan_sweep,
    point_params,
    run_sweep,
    synth_frames,
    task_key,
)
from pipeline.synth.spec import load_spec

SPEC = """\
duration_s = 2
epoch_ms = 100
seed = 5

[host]
nodes = 2
node_mem_gib = [1, 1]
scan_delay_ms = 100
scan_period_min_ms = 100
scan_size_mb = 32
preempt = "full"

[[vm]]
name = "vm0"
mem_mib = 128
vcpus = 2
vcpu_nodes = [0, 1]

[[vm.region]]
name = "ram"
size_mib = 128
thp = true
pinned = "all"

[[vm.workload]]
vcpus = "all"
kind = "uniform"
rate_mib_per_s = 64
"""
GRID = """\
seed = 11
[grid]
policy = ["linux-6.5", "skip-pinned"]
pinned = [0.0, 1.0]
"""


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_client(None) as c:
        yield c


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    return spec, grid


def parquet_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_sweep_writes_every_point_as_replay_would(
    client: Any, files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, grid = files
    out = tmp_path / "res"
    result = run_sweep(spec, grid, out, client=client)
    assert result.failed == {}
    points = read_parquet(out / "points.parquet", "points")
    assert points["point"].to_list() == [0, 1, 2, 3]
    assert points["policy"].to_list() == ["linux-6.5", "linux-6.5", "skip-pinned", "skip-pinned"]
    assert points["pinned"].to_list() == [0.0, 1.0, 0.0, 1.0]
    assert points["setting"].to_list() == [0, 1, 0, 1]
    assert points["workload"].to_list() == [0, 1, 0, 1]
    assert points["status"].to_list() == ["ok"] * 4
    assert points["scan_size_mb"].null_count() == 4
    manifest = read_manifest(out)
    assert manifest["kind"] == "results"
    assert manifest["sweep"]["points"] == 4
    assert manifest["failed"] == []
    # point 3 (skip-pinned, all pinned) equals a direct replay of the same spec variant
    # (the spec already pins all; the grid's seed 11 is the workload's seed)
    spec_path = tmp_path / "variant.toml"
    spec_path.write_text(SPEC.replace("seed = 5", "seed = 11"))
    vms, accesses = synth_frames(load_spec(spec_path))
    plan = plan_sweep(spec, grid)
    # with the default VMM profile a synth spec is replayed with (ADR 0365)
    params = ReplayParams(hosting=profile_hosting(vms))
    assert point_params(plan.tasks[3], vms) == params
    direct = replay_frames(vms, accesses, ["skip-pinned"], params, plan.tasks[3].seed)
    files3 = sorted((out / "epochs" / "point=3").rglob("*.parquet"))
    assert [f.relative_to(out / "epochs" / "point=3").as_posix() for f in files3] == [
        "policy=skip-pinned/vm=vm0/part-0.parquet"
    ]
    got = pl.read_parquet(files3[0])
    want = direct.epochs.drop("policy", "vm")
    assert got.equals(want)
    assert manifest["rows"]["epochs"] > 0
    # pinning all memory makes skip-pinned skip every THP: fewer PTE updates than pinned=none
    updates = pl.read_parquet(out / "epochs" / "point=2" / "**" / "*.parquet")
    assert updates["numa_pte_updates"].sum() > got["numa_pte_updates"].sum()


def test_same_spec_grid_seed_identical_parquet(
    client: Any, files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, grid = files
    run_sweep(spec, grid, tmp_path / "a", client=client)
    run_sweep(spec, grid, tmp_path / "b", client=client)
    a, b = parquet_bytes(tmp_path / "a"), parquet_bytes(tmp_path / "b")
    assert a and a == b
    assert read_manifest(tmp_path / "a") == read_manifest(tmp_path / "b")
    run_sweep(spec, grid, tmp_path / "c", client=client, seed=12)
    seeds = read_parquet(tmp_path / "c" / "points.parquet", "points")["replay_seed"]
    assert (
        seeds.to_list()
        != read_parquet(tmp_path / "a" / "points.parquet", "points")["replay_seed"].to_list()
    )


def _processing_count(key: str, dask_scheduler: Any = None) -> int:
    """How often the scheduler sent task ``key`` to a worker (its transition log)."""
    return sum(1 for t in dask_scheduler.story(key) if t[0] == key and t[2] == "processing")


def test_failed_point_is_retried_then_reported(
    client: Any, files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, grid = files
    plan = plan_sweep(spec, grid)
    broken = dataclasses.replace(plan.tasks[1].variant, doc={"duration_s": -1})
    tasks = [*plan.tasks[:1], dataclasses.replace(plan.tasks[1], variant=broken), *plan.tasks[2:]]
    plan = dataclasses.replace(plan, tasks=tasks)
    out = tmp_path / "res"
    result = run_sweep(spec, grid, out, client=client, plan=plan)
    assert list(result.failed) == [1]
    assert result.failed[1].startswith("SpecError: ")
    manifest = read_manifest(out)
    assert manifest["failed"] == [{"point": 1, "error": result.failed[1]}]
    points = read_parquet(out / "points.parquet", "points")
    assert points["status"].to_list() == ["ok", "failed", "ok", "ok"]
    assert points["error"].to_list()[1] == result.failed[1]
    assert not (out / "epochs" / "point=1").exists()
    # the scheduler ran the failing point twice (retries=1), the others once
    count = client.run_on_scheduler(_processing_count, task_key(1, result.run))
    assert count == 2
    assert client.run_on_scheduler(_processing_count, task_key(2, result.run)) == 1
    for p in (0, 2, 3):
        assert (out / "epochs" / f"point={p}").is_dir()


def test_views_read_a_sweep(client: Any, files: tuple[Path, Path], tmp_path: Path) -> None:
    spec, grid = files
    out = tmp_path / "res"
    run_sweep(spec, grid, out, client=client)
    sql = (
        "select e.point, p.policy, p.pinned, sum(e.remote_tlb_flushes) as flushes "
        f"from epochs e join read_parquet('{out}/points.parquet') p using (point) "
        "group by all order by e.point"
    )
    result = CliRunner().invoke(app, ["query", str(out), sql, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["point"] for r in rows] == [0, 1, 2, 3]
    assert [r["pinned"] for r in rows] == [0.0, 1.0, 0.0, 1.0]
    assert all(r["flushes"] > 0 for r in rows)


def test_sweep_views_and_sensitivity_plots(
    client: Any, files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, grid = files
    out = tmp_path / "res"
    run_sweep(spec, grid, out, client=client)
    con, _ = connect(out)
    try:
        attach_sweep(con, out)
        totals = con.sql(
            "select point, policy, remote_tlb_flushes from sweep_point_totals order by point"
        ).fetchall()
        savings = con.sql(
            "select point, flushes_saved_pct from sweep_savings order by point"
        ).fetchall()
        axes = con.sql("select * from sweep_axes").fetchall()
        sens = con.sql(
            "select value, policy, flushes_saved_pct from sweep_sensitivity order by all"
        ).fetchall()
    finally:
        con.close()
    flushes = {p: f for p, _, f in totals}
    assert [p for p, _, _ in totals] == [0, 1, 2, 3]
    assert all(f > 0 for f in flushes.values())
    # linux-6.5 is the only reference replayed: each point against point 0 or 1 (its setting)
    want = {
        0: 0.0,
        1: 0.0,
        2: 100.0 * (flushes[0] - flushes[2]) / flushes[0],
        3: 100.0 * (flushes[1] - flushes[3]) / flushes[1],
    }
    assert dict(savings) == pytest.approx(want)
    assert axes == [("pinned", 2)]
    assert [(v, p) for v, p, _ in sens] == [
        ("0.0", "linux-6.5"),
        ("0.0", "skip-pinned"),
        ("1.0", "linux-6.5"),
        ("1.0", "skip-pinned"),
    ]
    pngs = write_sensitivity(out, tmp_path / "plots")
    assert [p.name for p in pngs] == ["sensitivity_pinned.png"]
    assert pngs[0].read_bytes().startswith(b"\x89PNG")
    assert write_sensitivity(tmp_path / "not-a-sweep", tmp_path / "x") == []


def test_cli_with_scheduler_and_bad_grid(
    client: Any, files: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, grid = files
    out = tmp_path / "res"
    address = client.scheduler.address
    args = ["sweep", str(spec), "--grid", str(grid), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--scheduler", address])
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["sweep"]["scheduler"] == address
    assert pl.read_parquet(out / "points.parquet").columns == table_schema("points").names
    grid.write_text("[grid]\nscan_size_mb = [64, 0]\n")
    bad = CliRunner().invoke(app, [*args[:-1], "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1
    assert "`scan_size_mb` = `0`; expected an integer >= 1" in lines[0]
    assert not (tmp_path / "bad").exists()


def test_unreachable_scheduler_is_one_cluster_error() -> None:
    with (
        pytest.raises(ClusterError, match=r"cannot use the Dask scheduler `tcp://127.0.0.1:9`"),
        dask_client("tcp://127.0.0.1:9", connect_timeout_s=1),
    ):
        pass


def test_sweep_over_an_ingested_dataset(client: Any, tmp_path: Path) -> None:
    """`sweep DATASET --grid`: the grid's engine keys on a real capture; each point is what
    `replay DATASET --policy P` with those knobs writes; workload keys are refused."""
    from pipeline.ingest.runner import run_ingest
    from pipeline.replay.runner import run_replay

    real = Path(__file__).resolve().parents[2] / "traces" / "real"
    dataset = tmp_path / "dataset"
    name = "lab-anon-thp-pin-nb1"
    run_ingest(
        [str(real / f"{name}.trace.zst")], dataset, vm_config=real / f"{name}.toml", workers=1
    )
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\npolicy = ["linux-6.18", "linux-7.1"]\nscan_size_mb = [128, 256]\n')
    out = tmp_path / "sweep"
    result = run_sweep(dataset, grid, out, client=client)
    assert not result.failed
    assert result.manifest["dataset"] == str(dataset.resolve())
    # point 3 = linux-7.1 at scan_size_mb 256: the replay's own defaults for this capture
    alone = tmp_path / "alone"
    run_replay(dataset, alone, ["linux-7.1"], ReplayParams(scan_size_mb=256))
    (mine,) = (out / "epochs" / "point=3").rglob("*.parquet")
    (theirs,) = (alone / "epochs").rglob("*.parquet")
    assert mine.relative_to(out / "epochs" / "point=3") == theirs.relative_to(alone / "epochs")
    assert pl.read_parquet(mine).equals(pl.read_parquet(theirs))
    con, _ = connect(out)
    try:
        assert con.execute("select vm from vms").fetchall() == [("lab",)]
    finally:
        con.close()

    grid.write_text('[grid]\npinned = ["none", "all"]\n')
    with pytest.raises(SpecError, match="`pinned` changes the workload, which a DATASET fixes"):
        plan_sweep(dataset, grid)


def test_sweep_out_refuses_another_kind_unless_force(
    client: Any, files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Issue 16: `sweep --out` replaced anything (a DATASET, a user's directory) at its end."""
    from pipeline.errors import OutputError
    from pipeline.schema import write_manifest

    spec, grid = files
    dataset = tmp_path / "ds"
    dataset.mkdir()
    write_manifest(dataset, {"kind": "dataset"})
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    seen: list[int] = []
    for out, what in ((dataset, "holds a tlbreplay dataset"), (mine, "`thesis.tex`")):
        with pytest.raises(OutputError, match=what):
            run_sweep(spec, grid, out, client=client, progress=seen.append)
    assert not seen  # refused before any point ran
    assert read_manifest(dataset) == {"kind": "dataset"}
    assert (mine / "thesis.tex").read_text() == "keep"
    got = CliRunner().invoke(
        app, ["sweep", str(spec), "--grid", str(grid), "--out", str(dataset), "-q"]
    )
    assert got.exit_code == 1 and "--force" in got.output
    run_sweep(spec, grid, dataset, client=client, force=True)
    assert read_manifest(dataset)["kind"] == "results"
