"""`make pipeline` clean and warm, `query "SELECT 1"` and `report` alone (issue 13).

Runs ``make pipeline OUT=<new temporary dir>`` in the repository (so nothing is reused from
a previous run) and times it end to end; the Makefile runs the datasets in parallel
(``-j$(nproc)``). Then, on the same OUT: ``make pipeline`` again with nothing changed (warm),
``tlbreplay query RESULTS "SELECT 1"`` (the saved catalog, ADR 0420) and ``tlbreplay report``
over every RESULTS into a new directory. CPU seconds of the children are printed beside each
wall time, the load average beside each figure; the clean run's recipes are timed by
``bench/recipe_shell.sh`` (make's ``SHELL``) and summed per stage. Skipped, with the
reason, when the Makefile has no ``pipeline`` target.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def has_target(name: str) -> bool:
    makefile = ROOT / "Makefile"
    text = makefile.read_text() if makefile.is_file() else ""
    return re.search(rf"^{re.escape(name)}:", text, re.MULTILINE) is not None


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (children) of ``cmd`` run in the repository, and the load before."""
    load = loadavg()
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        msg = f"{' '.join(cmd[:3])} failed ({proc.returncode}): {' | '.join(tail)}"
        raise RuntimeError(msg)
    cpu = after.children_user - before.children_user
    cpu += after.children_system - before.children_system
    return wall, cpu, load


#: Stages of a clean `make pipeline`, told apart by their recipe line (bench/recipe_shell.sh).
STAGES = (
    ("synth", "tlbreplay synth "),
    ("ingest", "tlbreplay ingest "),
    ("replay", "tlbreplay replay "),
    ("report", "tlbreplay report "),
    ("README tables", "pipeline.analyze.readme_tables"),
)


def stage_cpu(log: Path) -> dict[str, float]:
    """CPU seconds (user + sys) per stage of :data:`STAGES` from a recipe_shell.sh log."""
    out = dict.fromkeys((name for name, _ in STAGES), 0.0)
    for line in log.read_text().splitlines() if log.is_file() else []:
        times, _, command = line.partition("\t")
        fields = times.split()
        if len(fields) < 3 or command.startswith(("make ", "$(MAKE)")) or " make " in command:
            continue
        for name, marker in STAGES:
            if marker in command:
                out[name] += float(fields[1]) + float(fields[2])
                break
    return out


def main() -> dict[str, Any] | None:
    if not has_target("pipeline") or shutil.which("make") is None:
        print("skipped: no `pipeline` target in the Makefile (or no make)")
        return None
    exe = str(Path(sys.executable).with_name("tlbreplay"))
    with tempfile.TemporaryDirectory(prefix="tlbreplay-bench-pipeline-") as tmp:
        out = Path(tmp) / "out"
        make = ["make", "--no-print-directory", "pipeline", f"OUT={out}"]
        log = Path(tmp) / "recipes.log"
        shell = [f"SHELL={ROOT / 'bench' / 'recipe_shell.sh'}", f"RECIPE_LOG={log}"]
        clean, clean_cpu, clean_load = timed([*make, *shell])
        stages = stage_cpu(log)
        # pathlib's glob matches dot names too: skip the hidden version directories behind each
        # RESULTS link (issue 16), or every result is counted and reported twice
        results = sorted(
            p.parent
            for p in (out / "results").glob("*/manifest.json")
            if not p.parent.name.startswith(".")
        )
        report = (out / "report" / "report.html").is_file()
        warm, warm_cpu, warm_load = timed(make)
        # the first query on a RESULTS builds its saved catalog (ADR 0420); the report no
        # longer does (ADR 0427), so both calls are timed: the first, then the saved one
        first, first_cpu, first_load = timed([exe, "query", str(results[0]), "SELECT 1"])
        query, query_cpu, query_load = timed([exe, "query", str(results[0]), "SELECT 1"])
        rep, rep_cpu, rep_load = timed(
            [exe, "report", *map(str, results), "--out", str(Path(tmp) / "report2"), "--quiet"]
        )
    names = ", ".join(r.name for r in results)
    print(
        f"make pipeline clean: {clean:.1f} s ({clean_cpu:.0f} CPU-s, load {clean_load}; "
        f"{len(results)} RESULTS: {names}; report {'written' if report else 'MISSING'})"
    )
    print("  CPU-s per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"make pipeline warm : {warm:.2f} s ({warm_cpu:.2f} CPU-s, load {warm_load})")
    print(
        f'query "SELECT 1"   : {query:.2f} s ({query_cpu:.2f} CPU-s, load {query_load}), '
        "saved catalog"
    )
    print(
        f'query "SELECT 1"   : {first:.2f} s ({first_cpu:.2f} CPU-s, load {first_load}), '
        "first call on the RESULTS, which builds the catalog"
    )
    print(f"report, {len(results)} RESULTS: {rep:.1f} s ({rep_cpu:.1f} CPU-s, load {rep_load})")
    return {
        "make pipeline wall, fresh OUT (s)": clean,
        "make pipeline CPU-s, fresh OUT": clean_cpu,
        **{f"make pipeline CPU-s, fresh OUT: {k}": v for k, v in stages.items()},
        "make pipeline RESULTS dirs": len(results),
        "make pipeline wall, warm (s)": warm,
        'tlbreplay query RESULTS "SELECT 1", saved catalog (s)': query,
        'tlbreplay query RESULTS "SELECT 1", first call, catalog built (s)': first,
        f"tlbreplay report, {len(results)} RESULTS (s)": rep,
        "load average at the clean run": float(clean_load),
    }


if __name__ == "__main__":
    main()
