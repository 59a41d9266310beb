"""Issue 16, "Why": real captures were replayed short (ADR 0380, ADR 0381).

``replay`` stopped at the last epoch with accesses; in ``real-lab-shared-4k-pin-nb1`` the
refaults stop at 7.4 s of a 30 s window. It now covers the span ingest recorded (the
sidecar's lab window here), and observed-vs-simulated lists every simulated counter. A DATASET
whose sidecar states the lab workload is replayed with that workload, as ``calibrate`` does,
so ``make pipeline``'s totals equal calibrate's simulated ones.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.analyze import calibrate as cal
from pipeline.analyze.views import connect
from pipeline.cli import app
from pipeline.errors import DatasetError
from pipeline.ingest.runner import run_ingest
from pipeline.replay.runner import run_replay
from pipeline.replay.workload import LAB_WORKLOAD, TRACE_REFAULTS
from pipeline.schema import read_manifest

REAL = Path(__file__).resolve().parents[2] / "traces" / "real"
CELL = REAL / "lab-shared-4k-pin-nb1.trace.zst"

pytestmark = pytest.mark.skipif(not CELL.is_file(), reason="lab capture not committed")


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("span")
    ds = root / "ds"
    run_ingest([str(CELL)], ds, vm_config=CELL.with_name("lab-shared-4k-pin-nb1.toml"))
    res = run_replay(ds, root / "res", ["linux-6.18"], workload_choice="trace")
    return ds, res


@pytest.fixture(scope="module")
def pipeline_res(cell: tuple[Path, Path]) -> Path:
    """The RESULTS `make pipeline` writes: `tlbreplay replay DATASET --out RES` (the CLI)."""
    ds, res = cell
    out = res.parent / "pipeline-res"
    got = CliRunner().invoke(
        app, ["replay", str(ds), "--out", str(out), "-p", "linux-6.18", "--quiet"]
    )
    assert got.exit_code == 0, got.output
    return out


def test_ingest_records_the_window_and_replay_covers_it(cell: tuple[Path, Path]) -> None:
    ds, res = cell
    manifest = read_manifest(ds)
    start, end = manifest["window_ns"]
    assert end - start == 300 * 100_000_000  # [lab] window_s 30.008 cut to whole epochs
    assert manifest["n_epochs"] == 301  # t0 is 0.6 ms before the marker
    assert read_manifest(res)["n_epochs"] == 301
    assert read_manifest(res)["workload"] == {"name": TRACE_REFAULTS, "why": "--workload trace"}
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


def test_pipeline_linux_6_18_totals_equal_calibrate(
    cell: tuple[Path, Path], pipeline_res: Path
) -> None:
    ds, _ = cell
    table = cal.calibrate(ds)
    sim = dict(zip(table["counter"], table["simulated"], strict=True))
    con, _ = connect(pipeline_res)
    try:
        got = con.sql(
            "SELECT sum(remote_tlb_flushes), sum(spte_zapped), sum(mmu_notifier_invalidations), "
            "sum(numa_pte_updates), sum(numa_hint_faults), sum(ept_violations) "
            "FROM epochs WHERE policy = 'linux-6.18'"
        ).fetchall()[0]
    finally:
        con.close()
    want = ("remote_tlb_flushes", "spte_zapped", "notifier_calls", "numa_pte_updates")
    assert got[:4] == tuple(sim[c] for c in want)
    assert got[4:] == (sim["numa_hint_faults"], sim["refaults"])
    assert got[:2] == (7, 196_608)  # the trace's refaults alone gave 4 / 124,932
    manifest = read_manifest(pipeline_res)
    assert manifest["workload"]["name"] == LAB_WORKLOAD
    assert manifest["workload"]["source"].endswith("lab-shared-4k-pin-nb1.toml")
    assert manifest["n_epochs"] == 300  # calibrate's window: 30 s of 100 ms epochs


def test_trace_refaults_alone_fall_short(res_trace: tuple[int, int]) -> None:
    """Why the workload matters: the refaults the trace shows miss the pages the guest kept
    touching without faulting (ADR 0381)."""
    assert res_trace == (4, 124_932)


@pytest.fixture(scope="module")
def res_trace(cell: tuple[Path, Path]) -> tuple[int, int]:
    _, res = cell
    con, _ = connect(res)
    try:
        row = con.sql("SELECT sum(remote_tlb_flushes), sum(spte_zapped) FROM epochs").fetchall()
    finally:
        con.close()
    return int(row[0][0]), int(row[0][1])


def test_workload_lab_requires_a_stated_workload(tmp_path: Path) -> None:
    from pipeline.synth.runner import run_synth

    spec = Path(__file__).resolve().parents[2] / "traces" / "vfio-pinned.toml"
    run_synth(spec, tmp_path / "ds")
    ds = tmp_path / "ds"
    with pytest.raises(DatasetError, match="--workload lab: no sidecar recorded"):
        run_replay(ds, tmp_path / "res", ["linux-6.18"], workload_choice="lab",
                   workload=cal.dataset_workload)  # fmt: skip
    with pytest.raises(DatasetError, match="unknown workload `lob`"):
        run_replay(ds, tmp_path / "res", ["linux-6.18"], workload_choice="lob")


def test_verdict_names_the_stated_workload(pipeline_res: Path, cell: tuple[Path, Path]) -> None:
    """The sentence says what was replayed, so a [lab] workload is not read as the trace."""
    from pipeline.analyze.verdict import load_verdict

    lab = load_verdict(pipeline_res).sentence()
    assert lab.startswith("pipeline-res (1 VM, 30 s of its [lab] workload replayed): ")
    trace = load_verdict(cell[1]).sentence()
    assert trace.startswith("res (1 VM, 30.1 s replayed): ")
