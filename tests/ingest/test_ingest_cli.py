"""`tlbreplay ingest` through typer's CliRunner and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipeline.cli import app

DATA = Path(__file__).resolve().parents[1] / "data" / "ftrace"
EXE = Path(sys.executable).parent / "tlbreplay"


def test_cli_ingest_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(DATA / "v6.5_tracefs.txt"),
            str(DATA / "v7_tracefs.txt"),
            "--out",
            str(out),
            "--epoch-ms",
            "50",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "dataset" and m["epoch_ms"] == 50 and len(m["sources"]) == 2
    assert m["accesses_from"] == "kvm_page_fault"
    acc = pq.read_table(out / "accesses" / "part-00000.parquet").to_pylist()
    faults = [r for r in acc if r["gfn_start"] == 0x12345]
    assert [(r["gfn_start"], r["write"]) for r in faults] == [(0x12345, True), (0x12345, False)]
    assert (out / "vms.parquet").is_file() and (out / "quarantine.parquet").is_file()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlbreplay: error: ") and "missing" in lines[0]
    assert not (tmp_path / "o").exists()


def test_subprocess_exit_codes_and_no_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    ok = subprocess.run(
        [str(EXE), "ingest", str(DATA / "v7_tracefs.txt"), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    binary = tmp_path / "bin"
    binary.write_bytes(bytes(range(256)) * 64)
    bad = subprocess.run(
        [str(EXE), "ingest", str(DATA / "v7_tracefs.txt"), str(binary), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert (
        bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr and str(binary) in bad.stderr
    )
    # the earlier dataset is untouched and no temporary sibling is left
    assert json.loads((out / "manifest.json").read_text())["sources"][0]["path"].endswith(
        "v7_tracefs.txt"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "ds"]


def test_subprocess_stdin_and_unwritable_out(tmp_path: Path) -> None:
    data = (DATA / "v7_tracefs.txt").read_bytes()
    ok = subprocess.run(
        [str(EXE), "ingest", "-", "--out", str(tmp_path / "ds"), "-q"],
        input=data,
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    bad = subprocess.run(
        [str(EXE), "ingest", str(DATA / "v7_tracefs.txt"), "--out", str(afile / "sub"), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("tlbreplay: error: ")
    assert "Traceback" not in bad.stderr
