"""The README's performance table, rendered from ``bench/last.json`` (never typed).

``python -m bench.readme_perf README.md`` rewrites the README's ``performance`` block (the
same marked-block mechanism as the results tables, ADR 0431); ``--check`` exits 1 when the
README differs from what ``last.json`` gives (the test suite runs it). `make bench` ends with
the rewrite. Each row names the module run it comes from (UTC time, commit, load average at
the module's start and end), because modules may be re-run one at a time
(`python -m bench bench_replay`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from bench.record import LAST, format_value, load
from pipeline.analyze.readme_tables import rewrite, settle
from pipeline.errors import InputError

#: (row label, module, figure-name patterns shown in the row, the issue's target).
#: A pattern (a regular expression matched at the start of the name) takes the first figure
#: of that module it matches, so a figure that carries a count in its name ("report, 12
#: RESULTS (s)") still matches.
ROWS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        "ingest, >= 1 GB of the real captures concatenated (whole process)",
        "bench_ingest",
        (
            r"ingest real \(MB/s\)",
            r"ingest real \(M lines/s\)",
            r"ingest real \(CPU-s per GB\)",
            "ingest real peak RSS",
        ),
        ">= 250 MB/s, <= 1 GiB",
    ),
    (
        "same run: ingest / polars one-column read, ingest / Python `re` loop",
        "bench_ingest",
        ("ingest real / polars one-column read", "ingest real / python re loop"),
        ">= 0.5, >= 3",
    ),
    (
        "ingest, >= 1 GB generated with the real captures' event mix",
        "bench_ingest",
        (r"ingest generated \(MB/s\)", "ingest generated peak RSS"),
        "",
    ),
    (
        "replay, 10 min of a 1 TiB VM, all policies, workers=auto",
        "bench_replay",
        (
            r"1 TiB 10-min sample, \d+ policies, workers=auto: wall",
            r"1 TiB 10-min sample, \d+ policies, workers=auto: cpu",
        ),
        "< 8 s",
    ),
    (
        "replay, 1 TiB vs 16 GiB VM, same workload",
        "bench_replay",
        ("1 TiB / 16 GiB VM",),
        "<= 1.5",
    ),
    (
        "synth, 10 min of the 1 TiB spec",
        "bench_synth",
        ("synth 1 TiB VM, 10 min: time", "synth 1 TiB VM: peak RSS"),
        "",
    ),
    (
        "sweep on a Dask LocalCluster of 2 workers",
        "bench_sweep",
        (r"sweep, LocalCluster 2x1, .*\(points/min\)",),
        "",
    ),
    (
        "fleet of generated hosts, -j 1: ingest, replay",
        "bench_fleet",
        (r"fleet ingest, \d+ hosts, -j 1", r"fleet replay, .* -j 1"),
        "",
    ),
    (
        "`make pipeline`, fresh OUT / warm (nothing changed)",
        "bench_pipeline",
        ("make pipeline wall, fresh OUT", "make pipeline wall, warm"),
        "< 45 s / < 3 s",
    ),
    (
        '`tlbreplay query RESULTS "SELECT 1"`: saved catalog / first call on a new RESULTS',
        "bench_pipeline",
        (
            r'tlbreplay query RESULTS "SELECT 1", saved',
            r'tlbreplay query RESULTS "SELECT 1", first',
        ),
        "< 0.5 s",
    ),
    ("`tlbreplay report` over every RESULTS", "bench_pipeline", ("tlbreplay report",), ""),
)

UNIT_RE = re.compile(r"\(([^()]*)\)\s*$")


def shown(name: str, value: Any) -> str:
    """``value`` with the unit its figure name ends with (``"... (MB/s)"`` -> ``"113 MB/s"``)."""
    tag = name.rsplit(":", 1)[1].strip() if ":" in name else ""
    m = UNIT_RE.search(name)
    unit = m.group(1) if m else tag
    tag = UNIT_RE.sub("", tag).strip() if m else ""
    return " ".join(x for x in (format_value(value), unit, tag) if x)


def pick(figures: dict[str, Any], pattern: str) -> tuple[str, Any] | None:
    for name, value in figures.items():
        if re.match(pattern, name):
            return name, value
    return None


def table(data: dict[str, Any]) -> list[str]:
    """The block's lines: the machine, then one row per :data:`ROWS` entry."""
    machine = data.get("machine", {})
    modules = data.get("modules", {})
    lines = [
        f"`make bench` on {machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} "
        f"cores, {machine.get('memory', '?')}, kernel {machine.get('kernel', '?')}, "
        f"Python {machine.get('python', '?')}; every figure from `bench/last.json`, "
        "with the 1-min load average at the start and end of its module's run:",
        "",
        "| figure | measured | target | load | run |",
        "|---|---|---|---|---|",
    ]
    for label, module, prefixes, target in ROWS:
        run = modules.get(module)
        if run is None:
            lines.append(f"| {label} | not in the last run | {target} | | |")
            continue
        parts = []
        used: set[str] = set()
        for prefix in prefixes:
            hit = pick({k: v for k, v in run["figures"].items() if k not in used}, prefix)
            if hit is not None:
                used.add(hit[0])
                parts.append(shown(*hit))
        value = "; ".join(parts) if parts else "not in the last run"
        load_1m = f"{run['load_start'].split()[0]} -> {run['load_end'].split()[0]}"
        lines.append(
            f"| {label} | {value} | {target} | {load_1m} | {run['utc']}, {run['commit']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme_perf")
    parser.add_argument("readme", type=Path)
    parser.add_argument("--last", type=Path, default=LAST, help="the recorded bench runs")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README drifted")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text()
        new = rewrite(text, {"performance": table(load(args.last))})
    except (InputError, OSError, ValueError, KeyError) as exc:
        print(f"tlbreplay: error: {args.readme}: {exc}", file=sys.stderr)
        return 1
    return settle(args.readme, text, new, check=args.check, what="performance table")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
