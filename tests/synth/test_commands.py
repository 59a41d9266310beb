"""`tlbreplay synth`: CliRunner and subprocess; success, bad spec -> one line + exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

TRACES = Path(__file__).resolve().parents[2] / "traces"
GOOD = 'duration_s = 2\n[[vm]]\nname = "v"\nmem_gib = 1\nvcpus = 2\n' + (
    '[[vm.workload]]\nkind = "uniform"\nrate_mib_per_s = 40\n'
)


def test_synth_writes_a_dataset(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(GOOD)
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["synth", str(spec), "--out", str(out), "--seed", "4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "dataset"
    assert manifest["seed"] == 4
    assert (out / "vms.parquet").is_file()
    assert (out / "accesses" / "part-00000.parquet").is_file()


def test_bad_spec_is_one_line_and_no_output(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(GOOD.replace('kind = "uniform"', 'kind = "uniform"\nbacking = "tmpfs"'))
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["synth", str(spec), "--out", str(out)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"tlbreplay: error: {spec}:8: vm `v`: workload 1: unknown key")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_missing_spec_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "no.toml"), "--out", "x"])
    assert result.exit_code == 1
    assert "no.toml: no such file" in result.stderr


def test_subprocess_sample_spec_and_error(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "pipeline.cli", "synth"]
    ok = subprocess.run(
        [*cmd, str(TRACES / "no-device.toml"), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    assert json.loads((out / "manifest.json").read_text())["counts"]["accesses"] > 0
    bad = tmp_path / "bad.toml"
    bad.write_text("duration_s = [\n")
    fail = subprocess.run(
        [*cmd, str(bad), "--out", str(tmp_path / "ds2")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert fail.returncode == 1
    assert fail.stderr.count("\n") == 1
    assert "not valid TOML" in fail.stderr
    assert "Traceback" not in fail.stderr
    assert not (tmp_path / "ds2").exists()


@pytest.mark.parametrize("pinned", ["all", "none"])
def test_replay_reads_a_synthetic_dataset(tmp_path: Path, pinned: str) -> None:
    """End to end through the CLI contract: synth -> replay; only unpinned RAM migrates."""
    spec = tmp_path / "s.toml"
    spec.write_text(
        "duration_s = 6\n[host]\nnodes = 2\n"
        '[[vm]]\nname = "v"\nvcpus = 2\nvcpu_nodes = [0, 1]\n'
        f'[[vm.region]]\nsize_mib = 512\npinned = "{pinned}"\n'
        '[[vm.workload]]\nkind = "moving"\nmove_every_s = 1\nrate_mib_per_s = 64\n'
    )
    data, results = tmp_path / "ds", tmp_path / "res"
    runner = CliRunner()
    synth = runner.invoke(app, ["synth", str(spec), "--out", str(data), "-q"])
    assert synth.exit_code == 0, synth.output
    replay = runner.invoke(
        app,
        ["replay", str(data), "--out", str(results), "-p", "linux-6.5", "-j", "1", "-q"],
    )
    assert replay.exit_code == 0, replay.output
    from pipeline.schema import read_manifest, read_partitioned

    assert read_manifest(results)["kind"] == "results"
    epochs = read_partitioned(results / "epochs", "epochs")
    assert epochs["numa_hint_faults"].sum() > 0
    migrated = epochs["numa_pages_migrated"].sum()
    assert migrated == 0 if pinned == "all" else migrated > 0
