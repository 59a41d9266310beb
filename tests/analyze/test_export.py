"""`tlbreplay export` (Perfetto trace-event JSON, heat map), `query --format
ndjson|parquet` and `tlbreplay shell`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from pipeline.analyze.shell import run_shell
from pipeline.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_trace_event_format(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules of the Trace Event Format (JSON Object Format) that Perfetto's JSON importer
    relies on: every event has name, ph, pid, tid and a numeric ts (µs); instants have a
    scope; counters carry numeric args; metadata names processes and threads. (The
    trace_processor Python package needs to download its shell binary, so it cannot run
    offline here: ADR 0433.)"""
    assert set(doc) >= {"traceEvents"}
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    last_ts = 0.0
    for e in events:
        assert isinstance(e["name"], str) and e["name"]
        assert e["ph"] in ("M", "i", "C"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "M":
            assert e["name"] in (
                "process_name",
                "thread_name",
                "process_sort_index",
                "thread_sort_index",
            )
            assert "name" in e["args"] or "sort_index" in e["args"]
            continue
        assert e["ts"] >= last_ts, "timed events are sorted"
        last_ts = e["ts"]
        if e["ph"] == "i":
            assert e["s"] in ("t", "p", "g")
        if e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values())
    return events


def test_perfetto_export(small_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    result = CliRunner().invoke(app, ["export", str(small_run), "--perfetto", str(out)])
    assert result.exit_code == 0, result.output
    events = check_trace_event_format(json.loads(out.read_text()))
    names = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name"}
    # one process per (policy, vm), named so
    assert {n for _, n in names} == {
        f"{p} / {v}" for p in ("linux-6.5", "linux-7.1", "oracle") for v in ("vm0", "vm1")
    }
    pid = next(p for p, n in names if n == "linux-6.5 / vm0")
    threads = [e["args"]["name"] for e in events if e["name"] == "thread_name" and e["pid"] == pid]
    assert threads[:2] == ["vCPU 0", "vCPU 1"]
    # the scans at 130 and 310 ms on vCPU 0's track, with their work as args
    scans = [e for e in events if e["name"] == "task_numa_work" and e["pid"] == pid]
    assert [(e["ts"], e["tid"], e["args"]["notifiers"]) for e in scans] == [
        (130_000.0, 1, 4),
        (310_000.0, 1, 2),
    ]
    # KVM shootdowns of epoch 1 (6) and 3 (4), each back to 0 at the epoch's end
    flushes = [
        (e["ts"], e["args"]["remote_tlb_flushes"])
        for e in events
        if e["name"] == "KVM shootdowns" and e["pid"] == pid
    ]
    assert flushes == [(100_000.0, 6), (200_000.0, 0), (300_000.0, 4), (400_000.0, 0)]
    ipis = [
        e["args"]["ipis"]
        for e in events
        if e["name"] == "vCPU 1 shootdown IPIs" and e["pid"] == pid
    ]
    assert ipis == [6, 0]
    again = tmp_path / "again.json"
    CliRunner().invoke(app, ["export", str(small_run), "--perfetto", str(again)])
    assert again.read_bytes() == out.read_bytes()


def test_heatmap_export_and_errors(small_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "heat.png"
    result = CliRunner().invoke(
        app, ["export", str(small_run), "--heatmap", str(png), "--vm", "vm0"]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes().startswith(PNG_MAGIC)
    bad = CliRunner().invoke(app, ["export", str(small_run), "--heatmap", str(png), "--vm", "x"])
    assert bad.exit_code == 1 and "no VM `x`; choose from: vm0, vm1" in bad.stderr
    none = CliRunner().invoke(app, ["export", str(small_run)])
    assert none.exit_code == 1 and "--perfetto FILE" in none.stderr
    nodir = CliRunner().invoke(
        app, ["export", str(small_run), "--perfetto", str(tmp_path / "no" / "t.json")]
    )
    assert nodir.exit_code == 1 and nodir.stderr.count("\n") == 1


def test_query_ndjson_and_parquet(small_run: Path, tmp_path: Path) -> None:
    sql = "SELECT policy, remote_tlb_flushes FROM savings_total ORDER BY policy"
    nd = CliRunner().invoke(app, ["query", str(small_run), sql, "--format", "ndjson"])
    assert nd.exit_code == 0, nd.output
    assert [json.loads(line) for line in nd.stdout.splitlines()] == [
        {"policy": "linux-6.5", "remote_tlb_flushes": 12},
        {"policy": "linux-7.1", "remote_tlb_flushes": 7},
        {"policy": "oracle", "remote_tlb_flushes": 1},
    ]
    out = tmp_path / "rows.parquet"
    pqr = CliRunner().invoke(
        app, ["query", str(small_run), sql, "--format", "parquet", "--output", str(out)]
    )
    assert pqr.exit_code == 0, pqr.output
    assert pq.read_table(out).to_pylist()[0] == {"policy": "linux-6.5", "remote_tlb_flushes": 12}


def test_shell_runs_statements_on_views_loaded_once(small_run: Path) -> None:
    lines = iter(
        [
            ".views",
            "SELECT policy, remote_tlb_flushes",
            "FROM savings_total ORDER BY policy;",
            ".format csv",
            "SELECT 41 + 1 AS answer",
            "",
            "COPY epochs TO 'x.csv';",
            ".nope",
            ".quit",
            "SELECT 'after_quit_marker'",
        ]
    )

    def prompt(_: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    buf = io.StringIO()
    run_shell(small_run, prompt=prompt, out=Console(file=buf, width=200), interactive=True)
    text = buf.getvalue()
    assert "savings_total" in text and "linux-7.1" in text
    assert "answer\n42\n" in text
    assert "error: the views are read-only" in text
    assert "error: unknown command `.nope`" in text
    assert "after_quit_marker" not in text


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_shell_reads_a_pipe(small_run: Path, fmt: str) -> None:
    result = CliRunner().invoke(
        app, ["shell", str(small_run)], input=f".format {fmt}\nSELECT 7 AS seven\n"
    )
    assert result.exit_code == 0, result.output
    assert "7" in result.stdout
