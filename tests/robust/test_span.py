"""Issue 16, "Why": real captures were replayed short (ADR 0380).

``replay`` stopped at the last epoch with accesses; in ``real-lab-shared-4k-pin-nb1`` the
refaults stop at 7.4 s of a 30 s window. It now covers the span ingest recorded (the
sidecar's lab window here), and observed-vs-simulated lists every simulated counter.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.analyze import calibrate as cal
from pipeline.analyze.views import connect
from pipeline.ingest.runner import run_ingest
from pipeline.replay.runner import run_replay
from pipeline.schema import read_manifest

REAL = Path(__file__).resolve().parents[2] / "traces" / "real"
CELL = REAL / "lab-shared-4k-pin-nb1.trace.zst"

pytestmark = pytest.mark.skipif(not CELL.is_file(), reason="lab capture not committed")


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("span")
    ds = root / "ds"
    run_ingest([str(CELL)], ds, vm_config=CELL.with_name("lab-shared-4k-pin-nb1.toml"))
    res = run_replay(ds, root / "res", ["linux-6.18"])
    return ds, res


def test_ingest_records_the_window_and_replay_covers_it(cell: tuple[Path, Path]) -> None:
    ds, res = cell
    manifest = read_manifest(ds)
    start, end = manifest["window_ns"]
    assert end - start == 300 * 100_000_000  # [lab] window_s 30.008 cut to whole epochs
    assert manifest["n_epochs"] == 301  # t0 is 0.6 ms before the marker
    assert read_manifest(res)["n_epochs"] == 301
    con, _ = connect(res)
    try:
        last_access = con.sql("SELECT max(epoch) FROM accesses").fetchall()[0]
        last_tick = con.sql("SELECT max(epoch) FROM vcpu_epochs").fetchall()[0]
    finally:
        con.close()
    assert last_access[0] < 80  # refaults stop at 7.4 s
    assert last_tick[0] > 250  # the scanner still ran after


def test_observed_vs_simulated_shows_every_counter(cell: tuple[Path, Path]) -> None:
    _, res = cell
    con, _ = connect(res)
    try:
        rows = pl.from_arrow(
            con.sql(
                "SELECT counter, observed, observed_from FROM observed_vs_simulated"
            ).to_arrow_table()
        )
    finally:
        con.close()
    counters = set(rows["counter"].to_list())  # type: ignore[union-attr]
    assert {"remote_tlb_flushes", "spte_zapped", "mmu_notifier_invalidations"} <= counters


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="replay of the trace's derived accesses (refaults only) differs from calibrate's "
    "replay of the lab workload (every page swept every epoch): 4 flushes / 124,932 zaps "
    "against 7 / 196,608 over the same 30 s; the window is no longer the cause (issue 16 "
    "report, issue 11)",
)
def test_pipeline_linux_6_18_totals_equal_calibrate(cell: tuple[Path, Path]) -> None:
    ds, res = cell
    table = cal.calibrate(ds)
    sim = dict(zip(table["counter"], table["simulated"], strict=True))
    con, _ = connect(res)
    try:
        got = con.sql(
            "SELECT sum(remote_tlb_flushes), sum(spte_zapped), sum(mmu_notifier_invalidations) "
            "FROM epochs WHERE policy = 'linux-6.18'"
        ).fetchall()[0]
    finally:
        con.close()
    assert got == (sim["remote_tlb_flushes"], sim["spte_zapped"], sim["notifier_calls"])
