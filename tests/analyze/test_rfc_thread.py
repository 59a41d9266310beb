"""The report's "RFC thread" part (issue 12): Yan Zhao's tables beside the engine's totals."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline.analyze import rfc_thread
from pipeline.analyze.report import write_report
from pipeline.analyze.views import connect
from pipeline.schema import write_manifest
from tests.analyze.results_builder import ep, make_dataset, make_results, vm_row


def synth_manifest(ds: Path, spec: str) -> None:
    """The DATASET manifest of `tlbreplay synth <spec>` (its sources name the spec)."""
    write_manifest(
        ds,
        {"kind": "dataset", "epoch_ms": 100, "seed": 4, "sources": [{"path": spec, "sha256": "0"}]},
    )


@pytest.fixture
def plain_run(tmp_path: Path) -> Path:
    ds = make_dataset(tmp_path / "ds", [vm_row("vm0", mem_gib=8, vcpus=8, thp=True)])
    synth_manifest(ds, "/somewhere/traces/rfc-boot.toml")
    return make_results(
        tmp_path / "res",
        ds,
        policies=["linux-6.5", "rfc-v2", "oracle"],
        epochs=[
            ep("linux-6.5", "vm0", 3, numa_unmap_gfn_range_calls=20, numa_remote_tlb_flushes=900),
            ep("linux-6.5", "vm0", 9, numa_unmap_gfn_range_calls=15, numa_remote_tlb_flushes=7000),
            # a migration's CLEAR: in kvm_unmap_gfn_range_calls, not in Yan's column
            ep("linux-6.5", "vm0", 9, page_size="2M", kvm_unmap_gfn_range_calls=4),
            ep("rfc-v2", "vm0", 3, numa_unmap_gfn_range_calls=9000, numa_remote_tlb_flushes=4000),
        ],
    )


def test_query_and_checks_of_a_plain_run(plain_run: Path) -> None:
    con, run = connect(plain_run)
    try:
        totals = rfc_thread.query(con, run)
    finally:
        con.close()
    assert isinstance(totals, list)
    got = {(t.case, t.policy): (t.unmap, t.flushes) for t in totals}
    assert got == {
        ("no device", "linux-6.5"): ((35,), (7900,)),
        ("no device", "rfc-v2"): ((9000,), (4000,)),
    }
    checks = dict(rfc_thread.checks(totals))
    assert checks["linux-6.5 unmap: mean 35 within 2x of 35"]
    assert checks["flushes rfc-v2 / linux-6.5 = 0.51 < 1 (hers: 0.53)"]
    assert checks["rfc-v2 flushes: mean 4,000 within 2x of 4,610"]
    # one seed: no spread check; a failing condition is shown as FAIL
    assert not any(text.startswith("linux-6.5 flushes max/min") for text in checks)
    worse = [rfc_thread.Totals("no device", "linux-6.5", (35,), (100,))]
    assert not dict(rfc_thread.checks(worse))["linux-6.5 flushes: mean 100 within 2x of 8,625"]


def test_no_part_for_other_datasets(plain_run: Path) -> None:
    synth_manifest(Path(plain_run).parent / "ds", "/somewhere/traces/no-device.toml")
    con, run = connect(plain_run)
    try:
        assert rfc_thread.query(con, run) is None
    finally:
        con.close()
    assert rfc_thread.render(None) == []


def test_report_shows_the_part_in_headless_chromium(plain_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    write_report([plain_run], out, quiet=True)
    page = (out / "report.html").read_text()
    assert 'data-part="rfc-thread"' in page and "43,920" in page and "9,000+" not in page
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (make system-deps)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--dump-dom",
                (out / "report.html").resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    part = dom[dom.index('data-part="rfc-thread"') :]
    part = part[: part.index("</section>")]
    assert part.count("<tr>") == 1 + 4  # header + 2 policies x 2 counters
    assert "7,900" in part and "10,037" in part and "FAIL" not in part.split("<h4>")[0]
