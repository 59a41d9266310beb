"""Issue 16, "Why": process hygiene. Workers die with their parent, SIGTERM behaves like
Ctrl-C, a killed run's temporary output is swept by the next one (ADR 0006, ADR 0003)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.schema import read_manifest
from tests.robust.helpers import EXE, alive, children, leftovers, tlbreplay, wait_until, write_spec


@pytest.fixture(scope="module")
def long_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATASET whose replay of every policy takes long enough to be killed mid-way."""
    root = tmp_path_factory.mktemp("long")
    spec = write_spec(root / "long.toml", duration_s=20)
    tlbreplay("synth", spec, "--out", root / "ds", "-q")
    return root / "ds"


def _start(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXE), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _workers_of(proc: subprocess.Popen[str], n: int) -> list[int]:
    """Wait until ``proc`` has ``n`` worker processes (spawned pool) and return their pids."""
    found: list[int] = []

    def enough() -> bool:
        found[:] = [c for c in children(proc.pid) if alive(c)]
        return len(found) >= n or proc.poll() is not None

    assert wait_until(enough, 300), "the replay never started its workers"
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return found


def test_replay_workers_die_with_a_killed_parent(long_ds: Path, tmp_path: Path) -> None:
    proc = _start("replay", long_ds, "--out", tmp_path / "res", "-q", "-j", "2")
    workers = _workers_of(proc, 2)
    proc.kill()  # kill -9: no handler runs in the parent
    proc.communicate()
    # PR_SET_PDEATHSIG kills them at once; without it they compute on for their whole job
    assert wait_until(lambda: not any(alive(w) for w in workers), 15), "orphaned workers"
    assert not (tmp_path / "res").exists()


def test_sigterm_is_like_ctrl_c(long_ds: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    tlbreplay("replay", long_ds, "--out", out, "-q", "-p", "oracle")
    before = read_manifest(out)
    proc = _start("replay", long_ds, "--out", out, "-q", "-j", "2")
    workers = _workers_of(proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err == "tlbreplay: terminated\n"
    # the workers are gone; multiprocessing's resource tracker (also a child) ends at EOF
    assert wait_until(lambda: not any(alive(w) for w in workers), 60), "orphaned workers"
    assert read_manifest(out) == before  # the old output is intact
    assert leftovers(tmp_path) == []


def test_stale_tmp_of_a_killed_ingest_is_swept(tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[1] / "data" / "ftrace" / "v7_tracefs.txt"
    big = tmp_path / "big.txt"
    text = data.read_text()
    body = "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("#"))
    big.write_text(text + body * 4000)
    out = tmp_path / "ds"
    proc = _start("ingest", big, "--out", out, "-q")
    assert wait_until(lambda: leftovers(tmp_path) or proc.poll() is not None, 300)
    proc.kill()
    proc.communicate()
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if not stale:
        pytest.skip("the ingest finished before it could be killed")
    tlbreplay("ingest", data, "--out", out, "-q")
    assert leftovers(tmp_path) == []
    assert read_manifest(out)["kind"] == "dataset"


def _probe_app(body: Any) -> Any:
    """A typer app with one command, ``probe``, registered through clikit.command."""
    import typer

    from pipeline.clikit import command

    app = typer.Typer()

    @command(app, "probe")
    def probe() -> None:
        body()

    @app.callback()
    def root() -> None:
        """(a group, so that `probe` is a subcommand)"""

    return app


def test_sigterm_inside_a_duckdb_query_is_terminated_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The soak's 200 kills found `report` dying with a traceback and exit 1: a SIGTERM that
    lands inside a DuckDB query runs our handler there, and DuckDB turns its exception into
    `RuntimeError: Query interrupted`. It is a termination: one line, exit 143."""
    import threading

    import duckdb
    from typer.testing import CliRunner

    from pipeline import clikit

    monkeypatch.setattr(clikit, "_RECEIVED", [])
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def long_query() -> None:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        duckdb.connect().sql("SELECT sum(i) FROM range(100000000000) t(i)").fetchall()

    try:
        got = CliRunner().invoke(_probe_app(long_query), ["probe"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert got.exit_code == 143, (got.output, got.exception)
    assert got.stderr == "tlbreplay: terminated\n"


def test_an_error_without_a_signal_is_not_taken_for_an_interruption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from pipeline import clikit

    monkeypatch.setattr(clikit, "_RECEIVED", [])
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def broken() -> None:
        raise RuntimeError("a real bug")

    try:
        got = CliRunner().invoke(_probe_app(broken), ["probe"])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert isinstance(got.exception, RuntimeError)
    assert str(got.exception) == "a real bug"
