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


def test_regime_sweep_is_the_cross_product_with_distinct_names() -> None:
    from pipeline.lab.matrix import parse_cells, parse_list, regime_configs

    cells = parse_cells("anon-4k-pin,shared-thp-nopin")
    assert cells == [("anon", False, True), ("shared", True, False)]
    configs = regime_configs(
        mem_mib=parse_list("--mem-mib", "256,1024,2048", int),
        vcpus=[1, 4],
        nb_from=["after-population", "before-guest"],
        vmm_threads=[0, 24],
        seconds=[20.0, 60.0],
        cells=cells,
    )
    assert len(configs) == 3 * 2 * 2 * 2 * 2 * 2
    names = [c.regime_name for c in configs]
    assert len(set(names)) == len(names)
    early = next(c for c in configs if c.nb_from == "before-guest" and c.vmm_threads == 24)
    assert "-early-t24-" in early.regime_name
    assert early.extra_vmas == 96  # 4 per helper thread unless --vmm-vmas
    argv = run_argv(early, Path("/tmp/x.trace.zst"))
    assert argv[argv.index("--nb-from") + 1] == "before-guest"
    assert argv[argv.index("--vmm-threads") + 1] == "24"
    with pytest.raises(InputError, match="--cells"):
        parse_cells("anon-2m-pin")
    with pytest.raises(InputError, match="--mem-mib"):
        parse_list("--mem-mib", "256,x", int)


def test_mempolicy_cells_are_named_and_checked() -> None:
    bind = config_from_options(256, 2, "anon", "off", "off", "split", 5.0, 1, mempolicy="bind")
    assert bind.name == "lab-anon-4k-nopin-nb1-bind"
    # the shared default (bind+numa_balancing) keeps the first matrix's names
    shared = config_from_options(
        256, 2, "shared", "off", "off", "split", 5.0, 1, mempolicy="bind+numa_balancing"
    )
    assert shared.name == "lab-shared-4k-nopin-nb1"
    with pytest.raises(InputError, match="--mempolicy"):
        config_from_options(256, 2, "anon", "off", "off", "split", 5.0, 1, mempolicy="local")
    with pytest.raises(InputError, match="--nb-from"):
        config_from_options(256, 2, "anon", "off", "off", "split", 5.0, 1, nb_from="later")


def test_numa_maps_policy_field_to_mempolicy() -> None:
    from pipeline.lab.capture import numa_maps_mempolicy

    assert numa_maps_mempolicy("default") == "default"
    assert numa_maps_mempolicy("bind:0") == "bind"
    assert numa_maps_mempolicy("bind=balancing:0") == "bind+numa_balancing"
    assert numa_maps_mempolicy("bind=static|balancing:0-1") == "bind+numa_balancing"
    assert numa_maps_mempolicy("prefer:1") == "preferred"
    assert numa_maps_mempolicy("interleave:0-1") == "interleave"


def test_the_committed_regime_plan_and_its_split() -> None:
    """traces/real/regimes/SPLIT.toml: decided before the captures; every cell a valid `lab
    run`, both sets present, names distinct, and the mempolicy cell held out."""
    from pipeline.lab.matrix import plan_configs

    plan = Path(__file__).resolve().parents[2] / "traces" / "real" / "regimes" / "SPLIT.toml"
    cells = plan_configs(plan)
    sets = {which for which, _ in cells}
    assert sets == {"fit", "held-out"}
    names = [c.regime_name for _, c in cells]
    assert len(set(names)) == len(names)
    held = [c for which, c in cells if which == "held-out"]
    assert any(c.mempolicy == "bind" and c.backing == "anon" for c in held)
    assert {c.mem_mib for _, c in cells} >= {256, 1024, 2048}
    assert {c.nb_from for c in held} == {"after-population", "before-guest"}
    assert all(20 <= c.seconds <= 60 for _, c in cells)


def test_the_second_held_out_plan_is_new_against_the_first() -> None:
    """traces/real/regimes2/SPLIT.toml (ADR 0512): every cell `held-out-2`, a valid `lab run`,
    and no cell's regime (name) is one of the first plan's."""
    from pipeline.lab.matrix import plan_configs

    real = Path(__file__).resolve().parents[2] / "traces" / "real"
    first = {c.regime_name for _, c in plan_configs(real / "regimes" / "SPLIT.toml")}
    cells = plan_configs(real / "regimes2" / "SPLIT.toml")
    assert {which for which, _ in cells} == {"held-out-2"}
    names = [c.regime_name for _, c in cells]
    assert len(set(names)) == len(names) == 5
    assert not set(names) & first
    assert {c.nb_from for _, c in cells} == {"after-population", "before-guest"}
    assert all(c.mem_mib <= 1024 for _, c in cells if not c.thp)


def test_a_plan_with_a_bad_cell_is_a_clear_error(tmp_path: Path) -> None:
    from pipeline.lab.matrix import plan_configs

    path = tmp_path / "plan.toml"
    path.write_text('[[cell]]\nset = "train"\n')
    with pytest.raises(InputError, match="held-out or held-out-2"):
        plan_configs(path)
    path.write_text('[[cell]]\nset = "fit"\nbacking = "anon"\n')
    with pytest.raises(InputError, match="lacks or mistypes"):
        plan_configs(path)
