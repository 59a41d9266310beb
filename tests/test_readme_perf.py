"""The README's performance table comes from bench/last.json only (bench/readme_perf.py)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import readme_perf, record

ROOT = Path(__file__).resolve().parent.parent
BLOCK = "<!-- BEGIN generated: performance (x) -->\nold\n<!-- END generated: performance -->\n"


def test_readme_matches_the_recorded_bench_run() -> None:
    assert readme_perf.main([str(ROOT / "README.md"), "--check"]) == 0


def recorded(tmp_path: Path) -> Path:
    last = tmp_path / "last.json"
    runs = {
        "bench_ingest": {
            "figures": {
                "ingest real input (MB)": 1000,
                "ingest real (MB/s)": 251.26,
                "ingest real (M lines/s)": 2.31,
                "ingest real (CPU-s per GB)": 7.5,
                "ingest real peak RSS, process tree (MiB)": 640,
            },
            "load_start": "1.20 1.00 0.90",
            "load_end": "1.90 1.10 0.90",
            "utc": "2026-12-03 17:00 UTC",
            "commit": "abc1234",
        },
        "bench_replay": {
            "figures": {
                "1 TiB 10-min sample, 7 policies, workers=auto: wall (s)": 7.46,
                "1 TiB 10-min sample, 7 policies, workers=auto: cpu (s)": 12.9,
            },
            "load_start": "0.5 0 0",
            "load_end": "1.5 0 0",
            "utc": "2026-12-03 17:10 UTC",
            "commit": "abc1234",
        },
    }
    record.save(runs, {"cpu": "TestCPU", "cores": "2"}, path=last)
    return last


def test_rows_show_the_recorded_figures_with_units_load_and_run(tmp_path: Path) -> None:
    lines = readme_perf.table(record.load(recorded(tmp_path)))
    text = "\n".join(lines)
    assert "TestCPU, 2 cores" in lines[0]
    row = next(x for x in lines if x.startswith("| ingest, >= 1 GB of the real"))
    assert "| 251 MB/s; 2.31 M lines/s; 7.5 CPU-s per GB; 640 MiB |" in row
    assert "| 1.20 -> 1.90 | 2026-12-03 17:00 UTC, abc1234 |" in row
    replay = next(x for x in lines if x.startswith("| replay, 10 min of a 1 TiB VM"))
    assert "| 7.46 s wall; 12.9 s cpu | < 8 s |" in replay
    assert "| synth, 10 min of the 1 TiB spec | not in the last run |" in text


def test_check_fails_on_a_drifted_readme_and_the_rewrite_mends_it(tmp_path: Path) -> None:
    last = recorded(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n" + BLOCK)
    assert readme_perf.main([str(readme), "--last", str(last), "--check"]) == 1
    assert readme_perf.main([str(readme), "--last", str(last)]) == 0
    assert "251 MB/s" in readme.read_text()
    assert readme_perf.main([str(readme), "--last", str(last), "--check"]) == 0


def test_a_partial_run_replaces_only_its_modules(tmp_path: Path) -> None:
    last = recorded(tmp_path)
    entry = record.run_entry({"1 TiB / 16 GiB VM, same workload (cpu ratio)": 1.4}, "1", "1")
    record.save({"bench_replay": entry}, {"cpu": "TestCPU"}, path=last)
    data = json.loads(last.read_text())
    assert set(data["modules"]) == {"bench_ingest", "bench_replay"}
    assert data["modules"]["bench_ingest"]["figures"]["ingest real (MB/s)"] == 251.26
    assert list(data["modules"]["bench_replay"]["figures"]) == [
        "1 TiB / 16 GiB VM, same workload (cpu ratio)"
    ]
