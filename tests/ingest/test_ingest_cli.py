"""`tlbreplay ingest` through typer's CliRunner and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
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
    # the output is a link to its version directory (.ds.v...; ADR 0003)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".ds.v")) == [
        "bin",
        "ds",
    ]


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


class FakeReporter:
    """Records what the bar was told (the Reporter interface of pipeline.clikit)."""

    def __init__(self) -> None:
        self.completed = 0.0
        self.total: float | None = None
        self.descriptions: list[str] = []

    def task(self, description: str, total: float | None = None) -> int:
        self.total = total
        self.descriptions.append(description)
        return 0

    def advance(self, task: int, amount: float = 1) -> None:
        self.completed += amount

    def update(self, task: int, **kwargs: object) -> None:
        if "completed" in kwargs:
            assert float(kwargs["completed"]) >= self.completed  # type: ignore[arg-type]
            self.completed = float(kwargs["completed"])  # type: ignore[arg-type]
        if "description" in kwargs and kwargs["description"] != self.descriptions[-1]:
            self.descriptions.append(str(kwargs["description"]))


def test_one_bar_covers_parse_then_derive(tmp_path: Path) -> None:
    from pipeline.ingest.commands import DERIVE_SHARE, IngestBar
    from pipeline.ingest.runner import run_ingest

    src = DATA / "v6.5_tracefs.txt"
    rep = FakeReporter()
    bar = IngestBar(rep, src.stat().st_size)  # type: ignore[arg-type]
    at_derive: list[float] = []

    def derived(done: int, total: int) -> None:
        if not at_derive:
            at_derive.append(rep.completed)
        bar.derived(done, total)

    run_ingest([str(src)], tmp_path / "ds", progress=bar.parsed, derive_progress=derived)
    size = src.stat().st_size
    assert rep.descriptions == ["parse", "derive"]
    assert at_derive[0] == pytest.approx(size * (1 - DERIVE_SHARE))  # parse: all bytes, 75 %
    assert rep.completed == pytest.approx(size)  # derive ends the bar at 100 %


def test_quiet_and_pipes_print_no_bar(tmp_path: Path) -> None:
    src = str(DATA / "v6.5_tracefs.txt")
    for extra in (["--quiet"], []):
        out = tmp_path / f"ds{len(extra)}"
        res = subprocess.run(
            [str(EXE), "ingest", src, "--out", str(out), *extra],
            check=False,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        assert "parse" not in res.stderr and "derive" not in res.stderr  # stderr is a pipe
        assert res.stderr == ("" if extra else res.stderr.splitlines()[0] + "\n")
