"""trace.dat through `trace-cmd report` as a streamed subprocess."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError, MissingFacilityError
from pipeline.ingest.runner import run_ingest
from pipeline.ingest.tracedat import TRACE_DAT_MAGIC

DATA = Path(__file__).resolve().parents[1] / "data" / "ftrace"
REAL = Path(__file__).resolve().parents[2] / "traces" / "real"


def fake_trace_dat(tmp_path: Path) -> Path:
    dat = tmp_path / "trace.dat"
    dat.write_bytes(TRACE_DAT_MAGIC + b"\x00" * 64)
    return dat


def fake_trace_cmd(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir()
    exe = bin_dir / "trace-cmd"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def test_trace_dat_is_streamed_through_trace_cmd_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = DATA / "trace_cmd_report.txt"
    fake_trace_cmd(tmp_path / "bin", f'[ "$1 $2 $3" = "report -t -i" ] || exit 3\ncat "{report}"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    dat = fake_trace_dat(tmp_path)
    m = run_ingest([str(dat)], tmp_path / "ds", workers=1)
    (s,) = m["sources"]
    assert s["format"] == "trace.dat" and s["bytes"] == dat.stat().st_size
    assert s["lines_total"] == report.read_bytes().count(b"\n")
    assert s["lost_events"] == {"1": 7}
    assert pq.read_table(tmp_path / "ds" / "ftrace" / "tlb_flush.parquet").num_rows == 1


def test_trace_cmd_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_trace_cmd(tmp_path / "bin", 'echo "trace-cmd: bad file" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(InputError, match="trace-cmd: bad file"):
        run_ingest([str(fake_trace_dat(tmp_path))], tmp_path / "ds", workers=1)
    assert not (tmp_path / "ds").exists()


def test_missing_trace_cmd_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MissingFacilityError, match="apt-get install trace-cmd"):
        run_ingest([str(fake_trace_dat(tmp_path))], tmp_path / "ds", workers=1)


@pytest.mark.skipif(shutil.which("trace-cmd") is None, reason="trace-cmd is not installed")
def test_real_trace_cmd_rejects_a_corrupt_trace_dat(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        run_ingest([str(fake_trace_dat(tmp_path))], tmp_path / "ds", workers=1)
    assert "trace-cmd report" in str(err.value) and "\n" not in str(err.value)


REAL_DATS = sorted(REAL.glob("*.dat")) if REAL.is_dir() else []


@pytest.mark.skipif(shutil.which("trace-cmd") is None, reason="trace-cmd is not installed")
@pytest.mark.skipif(not REAL_DATS, reason="no real trace.dat under traces/real/")
@pytest.mark.parametrize("dat", REAL_DATS, ids=lambda p: p.name)
def test_real_trace_dat(tmp_path: Path, dat: Path) -> None:
    m = run_ingest([str(dat)], tmp_path / "ds")
    (s,) = m["sources"]
    assert s["parsed"] > 0
    assert s["lines_total"] == s["parsed"] + s["comments"] + s["quarantined"]
    # a real capture from this project's host: every event line has a grammar
    assert s["quarantined"] == 0
