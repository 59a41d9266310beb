"""Issue 16, "Why": outputs nobody can lose or misread (each test failed on main before).

--out of another kind, ingest of junk, the read-only query, hybrid inputs, swaps, bounds.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import DatasetError
from pipeline.outdir import atomic_output_dir
from pipeline.replay.params import ReplayParams
from pipeline.replay.runner import replay_frames, run_replay
from pipeline.schema import read_manifest, write_manifest
from tests.replay.conftest import accesses_frame, region, vm_row, vms_frame
from tests.robust.helpers import leftovers, tlbreplay

DATA = Path(__file__).resolve().parents[1] / "data" / "ftrace"


def one_error_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("tlbreplay: error: ")
    return stderr


# -- --out silently destroys other outputs ---------------------------------------------------
def test_out_refuses_another_kind_unless_force(small: dict[str, Path], tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(small["ds"], ds, symlinks=False)
    before = read_manifest(ds)
    res = tlbreplay("report", small["res"], "--out", ds, "-q", check=False)
    assert res.returncode == 1
    assert "holds a tlbreplay dataset" in one_error_line(res.stderr)
    assert "--force" in res.stderr
    res = tlbreplay("replay", small["ds"], "--out", ds, "-q", "-p", "oracle", check=False)
    assert res.returncode == 1 and "not a tlbreplay results" in one_error_line(res.stderr)
    res = tlbreplay("synth", small["spec"], "--out", small["res"], "-q", check=False)
    assert res.returncode == 1 and "holds a tlbreplay results" in one_error_line(res.stderr)
    assert read_manifest(ds) == before
    assert read_manifest(small["res"])["kind"] == "results"
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    res = tlbreplay("synth", small["spec"], "--out", mine, "-q", check=False)
    assert res.returncode == 1 and "`thesis.tex`" in one_error_line(res.stderr)
    tlbreplay("synth", small["spec"], "--out", mine, "-q", "--force")
    assert read_manifest(mine)["kind"] == "dataset"


# -- ingest accepts junk ---------------------------------------------------------------------
def test_ingest_refuses_input_without_events(tmp_path: Path) -> None:
    junk = tmp_path / "passwd"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n")
    res = tlbreplay("ingest", junk, "--out", tmp_path / "ds", check=False)
    assert res.returncode == 1
    line = one_error_line(res.stderr)
    assert str(junk) in line and "no ftrace event" in line and "line 1:" in line
    assert "--allow-empty" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]
    tlbreplay("ingest", junk, "--out", tmp_path / "ds", "-q", "--allow-empty")
    assert read_manifest(tmp_path / "ds")["parsed"] == 0


def test_ingest_refuses_mostly_junk(tmp_path: Path) -> None:
    trace = (DATA / "v7_tracefs.txt").read_text().splitlines(keepends=True)
    events = [ln for ln in trace if not ln.startswith("#")]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("".join(events[:2]) + "garbage line\n" * (3 * len(events)))
    res = tlbreplay("ingest", mixed, "--out", tmp_path / "ds", check=False)
    assert res.returncode == 1 and "only 2 events" in one_error_line(res.stderr)


# -- the "read-only" query installs extensions ----------------------------------------------
REFUSED = {
    "copy": "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "attach": "ATTACH '{tmp}/x.db'",
    "install": "INSTALL httpfs",
    "load": "LOAD sqlite_scanner",
    "sqlite_scan": "SELECT * FROM sqlite_scan('{tmp}/x.db', 't')",
    "https": "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "outside": "SELECT * FROM read_csv('/etc/passwd')",
    "outside_glob": "SELECT * FROM glob('/etc/*')",
    "dotdot": "SELECT * FROM read_text('{res}/../../../../etc/passwd')",
    "set": "SET enable_external_access = true",
    "pragma": "PRAGMA enable_external_access",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_query_is_locked_down(
    small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    sql = REFUSED[name].format(tmp=tmp_path, res=small["res"].resolve())
    res = CliRunner().invoke(app, ["query", str(small["res"]), sql])
    assert res.exit_code == 1, res.stdout
    one_error_line(res.stderr)
    assert not (home / ".duckdb").exists(), "an extension directory was created"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_query_reads_its_own_results_and_dataset(small: dict[str, Path]) -> None:
    res = tlbreplay(
        "query", small["res"], "SELECT count(*) AS n FROM epochs, vms LIMIT 1", "--format", "csv"
    )
    assert int(res.stdout.splitlines()[1]) > 0


# -- hybrid inputs pass silently -------------------------------------------------------------
def test_replay_reads_one_version_and_query_sees_a_changed_dataset(
    small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.replay import runner
    from pipeline.synth.runner import run_synth
    from tests.robust.helpers import write_spec

    ds = tmp_path / "ds"
    run_synth(small["spec"], ds)
    want = run_replay(ds, tmp_path / "ref", ["oracle"])
    other = write_spec(tmp_path / "other.toml", seed=8)
    real = runner.replay_frames
    rewrites = {"n": 1}

    def rewriting(*args: object, **kw: object) -> object:
        for _ in range(rewrites["n"]):  # the DATASET is rewritten while the replay runs
            run_synth(other, ds)
        return real(*args, **kw)

    monkeypatch.setattr(runner, "replay_frames", rewriting)
    run_replay(ds, tmp_path / "res", ["oracle"])
    ref, got = read_manifest(want), read_manifest(tmp_path / "res")
    assert got["dataset_manifest_sha256"] == ref["dataset_manifest_sha256"]
    assert got["files"] == ref["files"]  # the same bytes as a replay of the first version
    res = tlbreplay("query", tmp_path / "res", "SELECT 1", check=False)
    assert res.returncode == 1 and "changed since the replay" in one_error_line(res.stderr)
    rewrites["n"] = 2  # the version read is superseded twice: it is gone
    run_synth(small["spec"], ds)
    with pytest.raises(DatasetError, match="changed during the replay"):
        run_replay(ds, tmp_path / "res2", ["oracle"])
    assert not (tmp_path / "res2").exists()


def test_query_refuses_results_changed_after_writing(
    small: dict[str, Path], tmp_path: Path
) -> None:
    res = tmp_path / "res"
    shutil.copytree(small["res"], res)
    victim = sorted((res / "epochs").rglob("*.parquet"))[0]
    victim.unlink()
    out = tlbreplay("query", res, "SELECT count(*) FROM epochs", check=False)
    assert out.returncode == 1 and "missing" in one_error_line(out.stderr)


# -- atomic output has gaps ------------------------------------------------------------------
def test_output_never_missing_during_swaps_and_query_keeps_reading(tmp_path: Path) -> None:
    out = tmp_path / "res"
    with atomic_output_dir(out, kind="results") as tmp:
        write_manifest(tmp, {"kind": "results", "n": -1})
    missing: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                json.loads((out / "manifest.json").read_text())
            except (OSError, ValueError):
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(30):
            with atomic_output_dir(out, kind="results") as tmp:
                write_manifest(tmp, {"kind": "results", "n": n})
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert read_manifest(out)["n"] == 29
    assert leftovers(tmp_path) == []


def test_swap_fsyncs_the_version_and_the_parent_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename that installs an output is durable only once its directory is fsync'd."""
    import os

    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    out = tmp_path / "res"
    with atomic_output_dir(out, kind="results") as tmp:
        write_manifest(tmp, {"kind": "results"})
    version = out.resolve()
    built = [p for p in synced if p.endswith(".tmp") and Path(p).parent == tmp_path]
    assert built and not version.name.endswith(".tmp")  # the version was synced as built
    assert synced[-1] == str(tmp_path)  # then the parent, after the link was renamed over it


@pytest.mark.parametrize("swaps", [1, 2])
def test_query_during_swaps_answers_from_a_whole_version(
    small: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swaps: int
) -> None:
    """`query` while the RESULTS it reads is replaced died with a raw DuckDB IOException. One
    swap during a query keeps the version it reads; two remove it (ADR 0003): the query then
    reads the newest version instead of failing or answering from a half-removed one."""
    from typer.testing import CliRunner

    from pipeline.analyze import query as q
    from pipeline.cli import app

    out = tmp_path / "res"

    def install() -> None:
        with atomic_output_dir(out, kind="results") as tmp:
            shutil.copytree(small["res"].resolve(), tmp, dirs_exist_ok=True)

    install()
    real = q.fetch_rows  # the path of every text format
    calls: list[Path] = []

    def swapping(*args: Any, **kwargs: Any) -> object:
        if not calls:
            for _ in range(swaps):
                install()  # finishes while the views of the first attempt are open
        calls.append(out.resolve())
        return real(*args, **kwargs)

    monkeypatch.setattr(q, "fetch_rows", swapping)
    sql = "SELECT policy, sum(remote_tlb_flushes) AS n FROM epochs GROUP BY 1 ORDER BY 1"
    got = CliRunner().invoke(app, ["query", str(out), sql, "--format", "csv"])
    assert got.exit_code == 0, got.output
    assert (
        got.stdout.splitlines()[1:]
        == (tlbreplay("query", small["res"], sql, "--format", "csv").stdout.splitlines()[1:])
    )
    assert len(calls) == swaps  # one attempt after one swap, a second after two
    assert leftovers(tmp_path) == []


def test_query_error_on_a_current_version_is_not_retried(
    small: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.analyze import query as q
    from pipeline.errors import QueryError

    real = q.run_query
    calls: list[int] = []

    def counting(con: object, sql: str, views: list[q.ViewDoc]) -> object:
        calls.append(1)
        return real(con, sql, views)  # type: ignore[arg-type]

    monkeypatch.setattr(q, "run_query", counting)
    with pytest.raises(QueryError, match="query failed"):
        q.query_results(small["res"], "SELECT nope FROM epochs")
    assert calls == [1]


# -- unbounded work from valid-looking input -------------------------------------------------
def _last_event(path: Path) -> str:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")][-1] + "\n"


def _with_far_lines(tmp_path: Path, *stamps: str) -> Path:
    """v7_tracefs.txt (events at 200 s) with its last event repeated at each of ``stamps``."""
    text = (DATA / "v7_tracefs.txt").read_text()
    last = [ln for ln in text.splitlines() if ln and not ln.startswith("#")][-1]
    ts = last.split(":", 1)[0].split()[-1]
    trace = tmp_path / "far.txt"
    trace.write_text(text + "".join(last.replace(ts, s, 1) + "\n" for s in stamps))
    return trace


@pytest.mark.parametrize("parser", ["c", "polars"])
def test_far_timestamps_are_quarantined_at_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    """One line at t = 9e9 s made replay allocate 671 GiB, one 1e6 s ahead ran for minutes:
    both are quarantined as timestamp outliers (ADR 0011), in both parse paths, and the
    replay covers the trace's 3 ms."""
    import polars as pl

    from pipeline.ingest import fastscan

    if parser == "c" and not fastscan.available():
        pytest.skip("the compiled scanner is not built")
    monkeypatch.setenv("TLBREPLAY_INGEST_PARSER", parser)
    trace = _with_far_lines(tmp_path, "9000000000.000000", "1000200.000000")
    tlbreplay("ingest", trace, "--out", tmp_path / "ds", "-q")
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["sources"][0]["parser"] == parser
    assert manifest["timestamp_outliers"] == 2
    assert manifest["sources"][0]["timestamp_outliers"] == {"count": 2, "first": f"{trace}:23"}
    assert manifest["span_ns"] == [200_000_001_000, 200_000_029_000]
    assert manifest["lines_total"] == manifest["parsed"] + manifest["comments"] + 2
    q = pl.read_parquet(tmp_path / "ds" / "quarantine.parquet")
    assert q["lineno"].to_list() == [23, 24]
    assert all(r.startswith("timestamp outlier: ") for r in q["reason"].to_list())
    assert "9000000000.000000 s is more than 3600 s from the trace's bulk" in q["reason"][0]
    assert "9000000000.000000" in q["line"][0]
    res = tlbreplay("replay", tmp_path / "ds", "--out", tmp_path / "res", "-q", "-p", "oracle")
    assert res.returncode == 0
    assert read_manifest(tmp_path / "res")["n_epochs"] == 1


@pytest.mark.parametrize("parser", ["c", "polars"])
def test_outlier_alone_in_a_later_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    """Blocks are parsed apart; the bulk carries over from the blocks before, so an outlier
    alone in its block (or first in the second source) is still one."""
    from pipeline.ingest import fastscan, reader
    from pipeline.ingest.runner import run_ingest

    if parser == "c" and not fastscan.available():
        pytest.skip("the compiled scanner is not built")
    monkeypatch.setenv("TLBREPLAY_INGEST_PARSER", parser)
    monkeypatch.setattr(reader, "CHUNK_BYTES", 600)  # about 3 lines per block
    trace = _with_far_lines(tmp_path, "9000000000.000000")
    second = tmp_path / "second.txt"
    far, near = (
        trace.read_text().splitlines(keepends=True)[-1],
        _last_event(DATA / "v7_tracefs.txt"),
    )
    second.write_text(far + near + near)
    trace.write_text(trace.read_text() + (DATA / "v7_tracefs.txt").read_text())
    manifest = run_ingest([str(trace), str(second)], tmp_path / "ds", workers=1)
    got = [s["timestamp_outliers"] for s in manifest["sources"]]
    assert got == [{"count": 1, "first": f"{trace}:23"}, {"count": 1, "first": f"{second}:1"}]
    assert manifest["span_ns"] == [200_000_001_000, 200_000_029_000]


def test_outlier_rule_keeps_a_resumed_trace_and_a_first_line_outlier() -> None:
    """The rule's cases (ADR 0011): a pause of over an hour followed by more than 16 lines is
    kept; a near line is kept; a far first line is dropped though it came first."""
    import numpy as np

    from pipeline.ingest.outliers import GAP_NS, OutlierRule, TimeCluster, time_clusters

    def clusters(ts: list[int]) -> list[TimeCluster]:
        arr = np.asarray(ts, np.int64)
        return time_clusters(np.arange(arr.size), arr, lambda r: f"line {r}")

    s = 1_000_000_000
    rule = OutlierRule()
    bulk = [9_000_000_000 * s, *range(100 * s, 130 * s, s)]  # the first line far ahead
    bad = rule.outliers(clusters(bulk))
    assert [(c.lo_ns, c.members[0][0]) for c in bad] == [(9_000_000_000 * s, 0)]
    resumed = list(range(100 * s + 2 * GAP_NS, 100 * s + 2 * GAP_NS + 17 * s, s))
    assert rule.outliers(clusters(resumed)) == []
    assert rule.hi_ns == resumed[-1]
    near = [rule.hi_ns + GAP_NS - s]
    assert rule.outliers(clusters(near)) == []
    far = [rule.hi_ns + GAP_NS + s]
    assert len(rule.outliers(clusters(far))) == 1


def test_replay_memory_bound_still_refuses_a_long_span(tmp_path: Path) -> None:
    """A span under the outlier gap but over --max-memory is refused with the estimate."""
    trace = _with_far_lines(tmp_path, "3700.000000", "7300.000000", "10900.000000")
    tlbreplay("ingest", trace, "--out", tmp_path / "ds", "-q")
    assert read_manifest(tmp_path / "ds")["timestamp_outliers"] == 0  # each within an hour
    res = tlbreplay(
        "replay", tmp_path / "ds", "--out", tmp_path / "res", "-q", "--max-memory", "1M",
        check=False,
    )  # fmt: skip
    assert res.returncode == 1
    line = one_error_line(res.stderr)
    assert "GiB of memory" in line and "over the limit" in line and "107,000 epochs" in line
    assert not (tmp_path / "res").exists()


def test_huge_vm_is_refused_before_allocation() -> None:
    vms = vms_frame(vm_row("big", regions=[region(size_bytes=4 << 50)]))
    acc = accesses_frame([("big", 0, 0, 0, 1)])
    with pytest.raises(DatasetError, match=r"vm `big` of 4,194,304.0 GiB"):
        replay_frames(vms, acc, ["oracle"], ReplayParams())


def test_max_memory_is_the_limit() -> None:
    vms = vms_frame(vm_row("vm0", regions=[region(size_bytes=1 << 30)]))
    acc = accesses_frame([("vm0", 0, 0, 0, 1)])
    with pytest.raises(DatasetError, match=r"over the limit of 0\.0 GiB"):
        replay_frames(vms, acc, ["oracle"], ReplayParams(max_memory_bytes=1000))


def test_region_checks_scale(tmp_path: Path) -> None:
    """100k regions were > 120 s (O(R^2)); now refused at once above the documented cap,
    and the cap itself is checked in O(R log R)."""
    from pipeline.errors import SpecError
    from pipeline.model.vmmodel import MAX_REGIONS

    lines = ["[[vm]]", 'name = "v"', f"mem_mib = {2 * (MAX_REGIONS + 1)}", "vcpus = 1"]
    for i in range(MAX_REGIONS + 1):
        lines += ["[[vm.region]]", f'name = "r{i}"', "size_mib = 2"]
    sidecar = tmp_path / "vm.toml"
    sidecar.write_text("\n".join(lines) + "\n")
    from pipeline.model.vmmodel import load_vm_file

    with pytest.raises(SpecError, match=f"at most {MAX_REGIONS} per VM"):
        load_vm_file(sidecar)
