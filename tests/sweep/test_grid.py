"""GRID.toml: validation messages, the cartesian product, applying a point to spec and params."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.model.vmmodel import read_source
from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import ReplayParams
from pipeline.schema import table_schema
from pipeline.sweep.grid import (
    ENGINE_KEYS,
    KEYS,
    WORKLOAD_KEYS,
    Point,
    apply_workload,
    load_grid,
    replay_params,
)
from pipeline.sweep.runner import plan_sweep, point_seed
from pipeline.synth.spec import parse_spec

SPEC = """\
duration_s = 1
epoch_ms = 100
seed = 5

[host]
nodes = 2
node_mem_gib = [1, 1]

[[vm]]
name = "vm0"
mem_mib = 64
vcpus = 2
vcpu_nodes = [0, 1]

[[vm.workload]]
vcpus = "all"
kind = "uniform"
rate_mib_per_s = 32
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def grid_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as err:
        load_grid(write(tmp_path, "grid.toml", text))
    return str(err.value)


def test_cartesian_product_last_key_fastest_and_fixed(tmp_path: Path) -> None:
    grid = load_grid(
        write(
            tmp_path,
            "g.toml",
            'seed = 3\n[grid]\npolicy = ["linux-6.5", "rfc-v2"]\nscan_size_mb = [64, 256, 1024]\n'
            "[fixed]\nthp = false\n",
        )
    )
    points = grid.points()
    assert [p.point for p in points] == list(range(6))
    assert [(p.values["policy"], p.values["scan_size_mb"]) for p in points] == [
        ("linux-6.5", 64),
        ("linux-6.5", 256),
        ("linux-6.5", 1024),
        ("rfc-v2", 64),
        ("rfc-v2", 256),
        ("rfc-v2", 1024),
    ]
    assert all(p.values["thp"] is False for p in points)
    assert grid.seed == 3
    assert grid.key_names() == ["policy", "scan_size_mb", "thp"]


def test_policy_defaults_to_every_policy(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, "g.toml", "[grid]\npinned = [0, 1]\n"))
    points = grid.points()
    assert len(points) == 2 * len(POLICIES)
    assert [p.values["policy"] for p in points[::2]] == list(POLICIES)


def test_pinned_words_are_fractions(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, "g.toml", '[grid]\npinned = ["none", 0.25, "all"]\n'))
    assert grid.axes["pinned"] == (0.0, 0.25, 1.0)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[grid]\nscan_size = [64]\n", ["unknown key `scan_size`", "did you mean `scan_size_mb`"]),
        ("[grid]\nscan_size_mb = [64, -1]\n", ["`scan_size_mb` = `-1`", "an integer >= 1", ":2"]),
        ("[grid]\nscan_size_mb = 64\n", ["`scan_size_mb` = `64`", "a non-empty list"]),
        ("[grid]\nscan_size_mb = []\n", ["a non-empty list"]),
        ("[grid]\nthp = [true, true]\n", ["without repeats"]),
        ('[grid]\npolicy = ["linux-6.6"]\n', ["`policy` = `linux-6.6`", "one of linux-6.5"]),
        ("[grid]\npinned = [1.5]\n", ["`pinned` = `1.5`", '"none", "all" or a fraction']),
        ("[grid]\nvcpus = [0]\n", ["`vcpus` = `0`", "[1, 4096]"]),
        ('[grid]\nmmu = ["ept"]\n', ["tdp or shadow"]),
        ("seed = 1\n", ["missing `[grid]`"]),
        ("[grid]\nthp = [true]\n[fixed]\nthp = false\n", ["both in [grid] and in [fixed]"]),
        ("[grid]\nthp = [true]\n[fixed]\nvcpus = 2.5\n", ["`vcpus` = `2.5`"]),
        ("[grid]\nthp = [true]\n[other]\n", ["unknown key `other`"]),
    ],
)
def test_bad_grids_name_key_value_and_allowed(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    message = grid_error(tmp_path, text)
    assert message.startswith(str(tmp_path / "grid.toml"))
    for needle in needles:
        assert needle in message


def test_too_many_points(tmp_path: Path) -> None:
    values = ", ".join(str(i) for i in range(1, 400))
    text = f"[grid]\nscan_size_mb = [{values}]\nscan_delay_ms = [{values}]\n"
    assert "more than 100000" in grid_error(tmp_path, text)


def test_every_key_is_a_points_column() -> None:
    names = table_schema("points").names
    assert set(KEYS) <= set(names)
    assert set(ENGINE_KEYS) | set(WORKLOAD_KEYS) == set(KEYS)


def test_replay_params_set_only_the_points_keys() -> None:
    point = Point(
        0,
        {
            "policy": "linux-6.5",
            "scan_size_mb": 64,
            "scan_period_min_ms": 500,
            "yield_per_vcpu": 8.0,
            "preempt_dynamic": False,
            "mmu": "shadow",
            "epoch_ms": 200,
        },
    )
    params = replay_params(point, ReplayParams(scan_delay_ms=7))
    assert params.scan_size_mb == 64
    assert params.scan_period_min_ms == 500
    assert params.scan_delay_ms == 7
    assert params.scan_period_max_ms is None
    assert params.yields.per_vcpu == 8.0
    assert params.yields.preempt_dynamic is False
    assert params.yields.d02c357e5bfa_factor == ReplayParams().yields.d02c357e5bfa_factor
    assert (params.mmu, params.epoch_ms) == ("shadow", 200)


def test_apply_workload_to_every_vm_and_region(tmp_path: Path) -> None:
    doc, source = read_source(write(tmp_path, "s.toml", SPEC))
    new = apply_workload(doc, (("pinned", 0.5), ("thp", False), ("vcpus", 5), ("synth_seed", 9)))
    assert doc["vm"][0]["vcpus"] == 2  # the original is untouched
    vm = new["vm"][0]
    assert vm["vcpus"] == 5
    assert vm["vcpu_nodes"] == [0, 0, 0, 1, 1]  # each node keeps its share
    assert vm["region"] == [{"name": "ram", "size_mib": 64, "pinned": 0.5, "thp": False}]
    assert new["seed"] == 9
    spec = parse_spec(new, source)
    region = spec.model.vms[0].regions[0]
    assert not region.thp
    pinned = sum(n for _, n in region.pinned)
    assert pinned == (64 << 8) // 2  # half of the 2 MiB granules of 64 MiB
    assert spec.model.vms[0].vcpus == 5
    assert spec.seed == 9
    assert apply_workload(doc, (("pinned", 1.0),))["vm"][0]["region"][0]["pinned"] == "all"
    assert apply_workload(doc, (("pinned", 0.0),))["vm"][0]["region"][0]["pinned"] == "none"


def test_thp_is_left_alone_on_hugetlbfs(tmp_path: Path) -> None:
    text = SPEC.replace(
        "vcpu_nodes = [0, 1]\n",
        'vcpu_nodes = [0, 1]\n[[vm.region]]\nname = "ram"\nsize_mib = 64\nbacking = "hugetlbfs"\n',
    ).replace("mem_mib = 64\n", "")
    doc, source = read_source(write(tmp_path, "s.toml", text))
    new = apply_workload(doc, (("thp", True),))
    assert "thp" not in new["vm"][0]["region"][0]
    parse_spec(new, source)


def test_plan_rejects_a_variant_the_spec_cannot_take(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", SPEC.replace('vcpus = "all"', "vcpus = [0, 1]"))
    grid = write(tmp_path, "g.toml", "[grid]\nvcpus = [2, 1]\n")
    with pytest.raises(SpecError) as err:
        plan_sweep(spec, grid)
    message = str(err.value)
    assert message.startswith(f"{grid}: grid: the spec with vcpus = 1 is not valid")
    assert "vcpus" in message


def test_plan_rejects_epoch_not_a_multiple(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", SPEC)
    grid = write(tmp_path, "g.toml", "[grid]\nepoch_ms = [100, 150]\n")
    with pytest.raises(SpecError, match="`epoch_ms` = `150`; expected a multiple"):
        plan_sweep(spec, grid)


def test_plan_shares_one_workload_between_engine_points(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", SPEC)
    grid = write(
        tmp_path,
        "g.toml",
        "[grid]\n"
        'policy = ["linux-6.5", "linux-7.1"]\nthp = [true, false]\nscan_size_mb = [8, 16]\n',
    )
    plan = plan_sweep(spec, grid, seed=4)
    assert len(plan.tasks) == 8
    assert len(plan.variants) == 2
    assert {t.variant.variant for t in plan.tasks if t.point in (0, 1, 4, 5)} == {0}
    assert plan.seed == 4
    assert all(v.doc["seed"] == 4 for v in plan.variants)
    assert len({t.seed for t in plan.tasks}) == 8
    assert plan.tasks[3].seed == point_seed(4, 3)


def test_point_seed_is_stable() -> None:
    assert point_seed(0, 0) == point_seed(0, 0)
    assert point_seed(0, 1) != point_seed(1, 0)
    assert 0 <= point_seed(2**62, 10**6) < 2**63


def test_rfc_boot_keys_apply() -> None:
    # issue 12: boot length, VM size, the SPTE mix and the contention mode as grid keys
    from pipeline.sweep.grid import Point, apply_workload, replay_params

    doc = {"duration_s": 40, "vm": [{"name": "a", "mem_gib": 8, "region": [{"size_gib": 8}]}]}
    out = apply_workload(doc, (("mem_gib", 16), ("duration_s", 90.0)))
    assert out["duration_s"] == 90.0
    assert out["vm"][0]["mem_gib"] == 16 and out["vm"][0]["region"][0] == {"size_gib": 16}
    assert doc["vm"][0]["mem_gib"] == 8  # the input is not changed
    p = replay_params(
        Point(0, {"spte_4k": 0.1, "thp_fault_fallback": 0.001, "yield_mode": "expected"})
    )
    assert (p.spte_4k, p.thp_fault_fallback, p.yields.mode) == (0.1, 0.001, "expected")
