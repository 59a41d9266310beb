"""calibrate's observed side on any capture: events never enabled are n/a with the reason,
first-touch SPTE installs are not zaps (ADR 0510)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.analyze import calibrate as cal
from pipeline.analyze import calibrate_input as cal_in
from pipeline.analyze import observed_events as oe
from pipeline.cli import app

REAL = Path(__file__).resolve().parents[2] / "traces" / "real"
CELL = "lab-anon-thp-nopin-nb1"


def _installs(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"ts_ns": [r[0] for r in rows], "gfn": [r[1] for r in rows], "level": [r[2] for r in rows]},
        schema={"ts_ns": pl.Int64, "gfn": pl.UInt64, "level": pl.Int32},
    )


def test_first_touch_installs_are_not_zaps() -> None:
    # gfn 5 first touched at 10, zapped and re-installed at 50; gfn 6 touched once; a 2 MiB
    # SPTE (level 2) at gfn 512 installed at 20 and again at 60
    installs = _installs([(10, 5, 1), (15, 6, 1), (20, 512, 2), (50, 5, 1), (60, 512, 2)])
    kept = oe.drop_first_touch(installs, installs)
    assert kept["ts_ns"].to_list() == [50, 60]
    # faults: the first touch of gfn 5 (before its install), a refault at 45 after the zap;
    # a 4 KiB gfn inside the 2 MiB SPTE keys to it
    requested = _installs([(9, 5, 1), (45, 5, 1), (19, 700, 2), (55, 700, 2), (70, 9, 1)])
    assert oe.drop_first_touch(installs, requested)["ts_ns"].to_list() == [45, 55]


def test_population_in_trace_from_the_first_notifier() -> None:
    installs = _installs([(10, 5, 1), (50, 5, 1)])
    assert oe.population_in_trace(installs, first_notifier_ns=None)  # a control: no notifier
    assert oe.population_in_trace(installs, first_notifier_ns=30)
    assert not oe.population_in_trace(installs, first_notifier_ns=5)  # warm: re-installs only
    assert not oe.population_in_trace(installs.head(0), first_notifier_ns=None)


def test_unavailable_names_the_missing_event_once() -> None:
    events = {oe.NOTIFIER, oe.SHADOW_REFAULT}
    out = oe.unavailable(
        mmu="shadow", events=events, source="capture.json", has_kvm_stats=False, has_vmstat=True
    )
    assert set(out) == {"remote_tlb_flushes", "spte_zapped"}
    assert "kvmmmu:kvm_mmu_set_spte" in out["spte_zapped"]
    assert "capture.json" in out["spte_zapped"]
    tdp = oe.unavailable(
        mmu="tdp", events=set(), source="the trace", has_kvm_stats=True, has_vmstat=False
    )
    assert "kvm:kvm_page_fault" in tdp["refaults"] and "scans" in tdp
    assert "vmstat" in tdp["numa_hint_faults"]


def test_enabled_events_trust_order() -> None:
    tables = {"kvm_mmu_set_spte": pl.DataFrame({"ts_ns": [1]})}
    capture = {"events": ["a:x", "b:y"], "missing_events": ["b:y"]}
    assert oe.enabled_events(capture, {}, tables) == (frozenset({"a:x"}), "capture.json")
    assert oe.enabled_events({}, {"events": ["c:z"]}, tables) == (
        frozenset({"c:z"}),
        "[lab].events",
    )
    assert oe.enabled_events({}, {}, tables) == (frozenset({oe.SHADOW_ZAP}), "the trace")


@pytest.mark.skipif(not (REAL / f"{CELL}.trace.zst").is_file(), reason="capture not committed")
def test_a_capture_without_an_event_reports_na(tmp_path: Path) -> None:
    """The committed THP cell with kvm_mmu_set_spte and the KVM stats withdrawn from its
    capture.json: zaps and flushes become n/a with the reason (never 0 and an infinite error),
    said once by the CLI; the other counters keep their values; --format json agrees."""
    from pipeline.ingest.runner import run_ingest

    for suffix in (".trace.zst", ".toml", ".vmstat.json", ".capture.json"):
        shutil.copy(REAL / f"{CELL}{suffix}", tmp_path / f"{CELL}{suffix}")
    meta = tmp_path / f"{CELL}.capture.json"
    doc = json.loads(meta.read_text())
    doc["events"] = [e for e in doc["events"] if e != oe.SHADOW_ZAP]
    doc["lab"].pop("kvm_stats_delta", None)
    meta.write_text(json.dumps(doc))
    dataset = tmp_path / "ds"
    run_ingest([str(tmp_path / f"{CELL}.trace.zst")], dataset, vm_config=tmp_path / f"{CELL}.toml")
    table = cal.calibrate(dataset)
    rows = {r["counter"]: r for r in table.iter_rows(named=True)}
    for name in ("spte_zapped", "spte_zapped_per_scan", "remote_tlb_flushes"):
        assert math.isnan(rows[name]["observed"]) and math.isnan(rows[name]["rel_error"])
        assert rows[name]["na_reason"]
    assert rows["notifier_calls"]["observed"] == 6 and rows["notifier_calls"]["na_reason"] is None
    result = CliRunner().invoke(app, ["calibrate", str(dataset)])
    assert result.exit_code == 0, result.output
    assert result.output.count("kvm_mmu_set_spte") == 1
    assert "inf" not in result.output
    result = CliRunner().invoke(app, ["calibrate", "--format", "json", str(dataset)])
    got = json.loads(result.output)["captures"][0]["counters"]
    assert got["spte_zapped"]["observed"] is None and "set_spte" in got["spte_zapped"]["na_reason"]
    assert got["refaults"]["observed"] == rows["refaults"]["observed"]


def test_populated_prefix_follows_the_first_installs() -> None:
    # vCPU range gfns [0, 8): pages 0-2 installed in epoch 0 (t 10-30), 3-4 in epoch 1,
    # page 0 re-installed later (not a first touch); a 2 MiB SPTE at gfn 512 covers the
    # second range [512, 1024) in epoch 2
    installs = _installs([(10, 0, 1), (20, 1, 1), (30, 2, 1), (150, 3, 1), (160, 4, 1)])
    installs = pl.concat([installs, _installs([(170, 0, 1), (250, 700, 2)])])
    got = oe.populated_prefix(installs, [(0, 8), (512, 1024)], 0, 100, 3)
    assert got == [[3, 5, 5], [0, 0, 512]]
    frame = cal.workload_accesses(
        {"vm": "lab"},
        cal_in.LabWorkload("split", (0, 512 * 4096), (8 * 4096, 1024 * 4096), (10.0, 10.0), 0.3),
        3,
        100,
        got,
    )
    # the first sweep touches each page once, in order: the pages first touched in the
    # epoch, and where none was, the page the guest is at (ADR 0362)
    assert frame.select("epoch", "vcpu", "gfn_start", "nr_pages").rows() == [
        (0, 0, 0, 3),
        (1, 0, 3, 2),
        (2, 0, 4, 1),
        (2, 1, 512, 512),
    ]


def test_lab_may_state_when_numa_balancing_took_effect_and_the_population(
    tmp_path: Path,
) -> None:
    from pipeline.errors import InputError
    from pipeline.ingest.capture_facts import trace_window

    table = {
        "pattern": "split",
        "touch_start_gpa": [0],
        "touch_end_gpa": [4096],
        "passes_per_s": [10.0],
        "window_s": 1.0,
        "numa_balancing_on_ns": 5_000_000_000,
        "ram_populated": "in_capture",
        "events": ["kvm:kvm_unmap_hva_range"],
    }
    lab = cal_in.LabWorkload.from_table(table, tmp_path / "x.toml")
    assert lab.numa_balancing_on_ns == 5_000_000_000 and lab.ram_populated == "in_capture"
    assert lab.events == ("kvm:kvm_unmap_hva_range",)
    marks = pl.DataFrame({"ts_ns": [7_000_000_000], "buf": ["tlbreplay lab: numa_balancing=1"]})
    tables = {"tracing_mark_write": marks}
    # [lab] wins over the trace marker; without either, the first event
    assert trace_window(tables, 1.0, 100, lab.numa_balancing_on_ns) == (5 * 10**9, 6 * 10**9)
    assert trace_window(tables, 1.0, 100)[0] == 7 * 10**9
    with pytest.raises(InputError, match="ram_populated"):
        cal_in.LabWorkload.from_table({**table, "ram_populated": "maybe"}, tmp_path / "x.toml")
