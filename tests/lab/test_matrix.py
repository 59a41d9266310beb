"""The lab matrix's cells and their command lines (no KVM needed)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.lab.matrix import config_from_options, matrix_configs, run_argv
from pipeline.lab.run import busy_loops


def test_matrix_is_backing_x_thp_x_pin_plus_a_control() -> None:
    cells = matrix_configs(256, 2, 30.0, busy_loops=4)
    assert len(cells) == 9
    assert [c.name for c in cells][-1] == "lab-anon-4k-nopin-nb0"
    assert {c.name for c in cells[:-1]} == {
        f"lab-{b}-{t}-{p}-nb1"
        for b in ("anon", "shared")
        for t in ("4k", "thp")
        for p in ("pin", "nopin")
    }
    # every cell, the control too, runs under the same load (traces/real/loaded/)
    assert {c.busy_loops for c in cells} == {4}
    argv = run_argv(cells[0], Path("/tmp/x.trace.zst"))
    assert argv[argv.index("--busy-loops") + 1] == "4"
    assert argv[argv.index("--seconds") + 1] == "30.0"


def test_options_are_checked() -> None:
    cfg = config_from_options(256, 2, "shared", "on", "off", "split", 5.0, 1, 2)
    assert (cfg.backing, cfg.thp, cfg.pin, cfg.busy_loops) == ("shared", True, False, 2)
    with pytest.raises(InputError, match="--mem-mib"):
        config_from_options(255, 2, "anon", "off", "off", "split", 5.0, 1)
    with pytest.raises(InputError, match="--backing"):
        config_from_options(256, 2, "file", "off", "off", "split", 5.0, 1)


def test_busy_loops_run_for_the_block_and_are_killed() -> None:
    marker = "while True: pass"

    def count() -> int:
        ps = subprocess.run(["ps", "-eo", "args"], check=True, capture_output=True, text=True)
        out = ps.stdout
        return sum(1 for line in out.splitlines() if line.endswith(marker))

    before = count()
    with busy_loops(2):
        time.sleep(0.2)
        assert count() == before + 2
    assert count() == before
