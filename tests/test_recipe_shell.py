"""bench/recipe_shell.sh (make's SHELL timing each recipe line) and bench_pipeline's sum of
its log per stage (ADR 0428)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.bench_pipeline import stage_cpu

ROOT = Path(__file__).resolve().parent.parent
SHELL = ROOT / "bench" / "recipe_shell.sh"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_recipe_shell_times_each_line_and_keeps_output_and_status(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        "all: a b\n"
        "a:\n\t@echo out-a; echo err-a >&2\n"
        "b:\n\t@busy=0; for i in $$(seq 20000); do busy=$$((busy+i)); done; echo $$busy\n"
        "fail:\n\t@exit 3\n"
    )
    log = tmp_path / "recipes.log"
    args = ["make", "-s", "-C", str(tmp_path), f"SHELL={SHELL}", f"RECIPE_LOG={log}"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert done.stdout.split() == ["out-a", str(sum(range(20001)))]
    assert done.stderr.strip() == "err-a"
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    for line, command in zip(lines, ("echo out-a; echo err-a >&2", "busy=0;"), strict=True):
        times, _, text = line.partition("\t")
        wall, user, system, load = (float(x) for x in times.split())
        assert wall >= 0 and user >= 0 and system >= 0 and load >= 0
        assert text.startswith(command)
    failed = subprocess.run([*args, "fail"], capture_output=True, text=True, check=False)
    assert failed.returncode != 0  # the recipe's status reaches make
    assert len(log.read_text().splitlines()) == 3


def test_stage_cpu_sums_user_and_sys_per_stage(tmp_path: Path) -> None:
    log = tmp_path / "recipes.log"
    log.write_text(
        "1.0 0.5 0.25 1.2\t.venv/bin/tlbreplay replay out/datasets/a --out out/results/a\n"
        "2.0 1.0 0.5 1.2\t.venv/bin/tlbreplay replay out/datasets/b --out out/results/b\n"
        "9.0 4.0 1.0 1.3\t.venv/bin/tlbreplay report out/results/a out/results/b --out r\n"
        "3.0 2.0 0.0 1.3\t.venv/bin/python -m pipeline.analyze.readme_tables README.md --out o\n"
        "20.0 9.0 2.0 1.3\tmake --no-print-directory -j2 out/readme.json\n"
        "0.0 0.0 0.0 1.3\tfind pipeline -name '*.py'\n"
    )
    got = stage_cpu(log)
    assert got == {"synth": 0.0, "ingest": 0.0, "replay": 2.25, "report": 5.0, "README tables": 2.0}
