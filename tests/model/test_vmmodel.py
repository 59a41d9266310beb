"""The VM description format: [host] / [[vm]] / [[vm.region]] -> table vms."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import SpecError
from pipeline.model.tomlsource import GIB
from pipeline.model.vmmodel import (
    DEFAULT_HVA_BASE,
    HPAGE_PMD_NR,
    load_vm_file,
    merge_ranges,
    parse_vm_model,
    parse_vm_tables,
)
from pipeline.schema import table_schema

SIDECAR = """
[host]
nodes = 2
node_mem_gib = [64, 64]
numa_balancing = 1
scan_delay_ms = 1000
scan_period_min_ms = 1000
scan_period_max_ms = 60000
scan_size_mb = 256
preempt = "voluntary"
mmu = "tdp"
kernel = "6.18.44-fc-v657"

[[vm]]
name = "vm0"
mem_gib = 16
vcpus = 4
vcpu_nodes = [0, 0, 1, 1]
vcpu_tids = [4242, 4243, 4244, 4245]
vmm_pid = 4240

[[vm.region]]
name = "ram"
size_gib = 16
gpa_start = 0
hva_start = 0x7f0000000000
backing = "anon"
thp = true
mof_policy = false
placement = "first-touch"
pinned = "all"
"""


def doc(text: str = SIDECAR) -> dict[str, Any]:
    return tomllib.loads(text)


def minimal(**region: Any) -> dict[str, Any]:
    size = {} if any(k.startswith("size_") for k in region) else {"size_gib": 4}
    return {
        "host": {"nodes": 2},
        "vm": [{"name": "v", "vcpus": 2, "region": [{**size, **region}]}],
    }


def error(d: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_vm_tables(d, "x.toml")
    return str(info.value)


def test_sidecar_example_gives_one_vms_row(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text(SIDECAR)
    frame = load_vm_file(path)
    assert frame.columns == table_schema("vms").names
    row = frame.row(0, named=True)
    assert row["vm"] == "vm0"
    assert row["mem_bytes"] == 16 * GIB
    assert row["vcpu_nodes"] == [0, 0, 1, 1]
    assert row["vcpu_tids"] == [4242, 4243, 4244, 4245]
    assert row["host_node_mem_bytes"] == [64 * GIB, 64 * GIB]
    assert row["kernel"] == "6.18.44-fc-v657"
    assert row["inferred"] is False
    (region,) = row["regions"]
    assert region["hva_start"] == 0x7F0000000000
    assert region["pinned"] == [{"gfn_start": 0, "nr_pages": 16 * GIB // 4096}]


def test_defaults_are_the_kernels() -> None:
    row = parse_vm_tables({"vm": [{"name": "a", "mem_gib": 1, "vcpus": 1}]}, "x").row(0, named=True)
    assert row["host_nodes"] == 1
    assert (row["scan_delay_ms"], row["scan_period_min_ms"], row["scan_period_max_ms"]) == (
        1000,
        1000,
        60000,
    )
    assert row["scan_size_mb"] == 256
    assert row["numa_balancing"] == 1
    assert row["preempt"] == "voluntary"
    assert row["mmu"] == "tdp"
    assert row["kernel"] is None
    (region,) = row["regions"]
    assert region["name"] == "ram"
    assert region["backing"] == "anon"
    assert region["thp"] is True
    assert region["placement"] == "first-touch"
    assert region["pinned"] == []
    assert region["hva_start"] == DEFAULT_HVA_BASE


def test_regions_are_contiguous_and_hva_1gib_aligned() -> None:
    d = {
        "host": {"nodes": 2},
        "vm": [
            {
                "name": "v",
                "vcpus": 4,
                "region": [
                    {"name": "lo", "size_mib": 1536},
                    {"name": "hi", "size_mib": 512, "backing": "shared"},
                ],
            }
        ],
    }
    model = parse_vm_model(d, "x")
    _, hi = model.vms[0].regions
    assert hi.gpa_start == 1536 << 20
    assert hi.hva_start == DEFAULT_HVA_BASE + 2 * GIB
    assert hi.thp is False  # shmem THP is off by default (shmem_enabled=never)
    assert model.vms[0].mem_bytes == 2 * GIB
    assert model.vms[0].vcpu_nodes == (0, 0, 1, 1)  # spread over the nodes in blocks


def test_vcpu_nodes_int_applies_to_all() -> None:
    d = {"host": {"nodes": 2}, "vm": [{"name": "v", "mem_gib": 1, "vcpus": 3, "vcpu_nodes": 1}]}
    assert parse_vm_model(d, "x").vms[0].vcpu_nodes == (1, 1, 1)


def test_pinned_fraction_is_seeded_granules() -> None:
    a = parse_vm_model(minimal(pinned=0.25), "x", seed=7).vms[0].regions[0].pinned
    b = parse_vm_model(minimal(pinned=0.25), "x", seed=7).vms[0].regions[0].pinned
    c = parse_vm_model(minimal(pinned=0.25), "x", seed=8).vms[0].regions[0].pinned
    assert a == b
    assert a != c
    assert sum(n for _, n in a) == 4 * GIB // 4096 // 4
    assert all(s % HPAGE_PMD_NR == 0 and n % HPAGE_PMD_NR == 0 for s, n in a)


def test_pinned_ranges_are_merged_and_checked() -> None:
    region = parse_vm_model(minimal(pinned=[[512, 512], [0, 600], [2000, 1]]), "x")
    assert region.vms[0].regions[0].pinned == ((0, 1024), (2000, 1))
    assert "outside the region" in error(minimal(pinned=[[1 << 20, 1]]))
    assert "[gfn_start, nr_pages]" in error(minimal(pinned=[[1, 0]]))
    assert "expected" in error(minimal(pinned=1.5))
    assert "expected" in error(minimal(pinned="some"))


def test_merge_ranges() -> None:
    assert merge_ranges([(10, 5), (0, 10), (20, 1)]) == ((0, 15), (20, 1))


@pytest.mark.parametrize(
    ("region", "fragment"),
    [
        (
            {"backing": "tmpfs"},
            "vm `v`: region 1: `backing` = `tmpfs`; expected one of anon, shared, hugetlbfs",
        ),
        ({"backng": "anon"}, "unknown key `backng`; did you mean `backing`?"),
        ({"thp": "yes"}, "`thp` = `yes`; expected true or false"),
        ({"backing": "hugetlbfs", "thp": True}, "hugetlbfs pages are not THP"),
        ({"mof_policy": True, "mempolicy": "bind"}, "`mof_policy` = true means `mempolicy`"),
        ({"mempolicy": "bound"}, "expected one of default, bind, bind+numa_balancing, preferred"),
        ({"placement": "node:2"}, "node:N with N in [0, 1]"),
        ({"placement": "random"}, "expected one of first-touch, interleave, node:N"),
        ({"size_gib": 1, "size_mib": 1024}, "give only one of"),
        ({"size": 1}, "unknown key `size`; did you mean `size_"),
        ({"size_gib": -1}, "a size > 0"),
        ({"size_bytes": 1000}, "a whole number of 4 KiB pages"),
        ({"backing": "hugetlbfs", "size_mib": 3, "thp": False}, "multiple of 2048 KiB"),
    ],
)
def test_region_errors(region: dict[str, Any], fragment: str) -> None:
    assert fragment in error(minimal(**region))


def test_vm_errors() -> None:
    d = minimal()
    d["vm"][0]["vcpu_nodes"] = [0, 1, 2]
    assert "vcpu_nodes" in error(d)
    d["vm"][0]["vcpu_nodes"] = []
    assert "`vcpu_nodes` = `[]`" in error(d)
    del d["vm"][0]["vcpus"]
    assert "`vcpu_nodes` = `[]`" in error(d)
    d["vm"][0]["vcpus"] = 2
    d["vm"][0]["vcpu_nodes"] = [0, 5]
    assert "`vcpu_nodes` = `5`; expected an integer in [0, 1]" in error(d)
    d = minimal()
    d["vm"][0]["mem_gib"] = 8
    assert "regions must tile guest RAM" in error(d)
    d = minimal()
    d["vm"].append(d["vm"][0])
    assert "two VMs have this name" in error(d)
    d = minimal()
    d["vm"][0]["name"] = "a b"
    assert "`name` = `a b`" in error(d)
    assert "describe at least one VM" in error({"host": {}})
    assert "missing guest RAM size" in error({"vm": [{"name": "a", "vcpus": 1}]})
    assert "missing `vcpus`" in error({"vm": [{"name": "a", "mem_gib": 1}]})
    assert "unknown key `vms`" in error({"vms": []})
    d = minimal()
    d["vm"][0]["region"].append({"name": "ram2", "size_gib": 1, "gpa_start": 0})
    assert "overlaps the previous region" in error(d)


def test_host_errors() -> None:
    d = minimal()
    d["host"] = {"nodes": 2, "node_mem_gib": [1, 1]}
    assert "the VMs need 4 GiB" in error(d)
    d["host"] = {"nodes": 2, "node_mem_gib": [8]}
    assert "one per node" in error(d)
    d["host"] = {"nodes": 2, "scan_period_min_ms": 5, "scan_period_max_ms": 4}
    assert "exceeds" in error(d)
    d["host"] = {"nodes": 2, "preempt": "rt"}
    assert "`preempt` = `rt`; expected one of none, voluntary, full" in error(d)
    d["host"] = {"nodes": 2, "scan_size": 256}
    assert "did you mean `scan_size_mb`?" in error(d)
    d["host"] = {"nodes": 2, "numa_balancing": True}
    assert "`numa_balancing` = `true`; expected an integer" in error(d)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_vm_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[host]\nnodes = \n")
    with pytest.raises(SpecError, match=r"not valid TOML: .*line 2"):
        load_vm_file(bad)
    vm_not_array = tmp_path / "t.toml"
    vm_not_array.write_text('[vm]\nname = "a"\n')
    with pytest.raises(SpecError, match=r"\[\[vm\]\]"):
        load_vm_file(vm_not_array)


def test_sidecar_may_carry_a_lab_table(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(SIDECAR + '\n[lab]\npattern = "touch-all"\nmem_mib = 1024\n')
    assert load_vm_file(path).height == 1
    path.write_text("lab = 3\n" + SIDECAR)
    with pytest.raises(SpecError, match=r"`lab` must be a table"):
        load_vm_file(path)


def test_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    lines = SIDECAR.splitlines()
    text = SIDECAR + '\n[[vm.region]]\nname = "hi"\nsize_gib = 1\n\nbacking = "tmpfs"\n'
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_vm_file(path)
    bad_line = text.splitlines().index('backing = "tmpfs"') + 1
    assert str(info.value).startswith(f"{path}:{bad_line}: vm `vm0`: region 2: `backing`")
    path.write_text(SIDECAR.replace('preempt = "voluntary"', 'preempt = "rt"'))
    preempt_line = lines.index('preempt = "voluntary"') + 1
    with pytest.raises(SpecError, match=rf"vm.toml:{preempt_line}: host: `preempt`"):
        load_vm_file(path)
    path.write_text(SIDECAR.replace("[[vm.region]]", "[[vm.region]]\nsize = 1"))
    with pytest.raises(SpecError) as info:
        load_vm_file(path)
    assert f"vm.toml:{lines.index('[[vm.region]]') + 2}: vm `vm0`: region 1: unknown key" in str(
        info.value
    )


def test_region_mempolicy_and_the_mof_policy_alias(tmp_path: Path) -> None:
    text = """
[[vm]]
name = "v"
vcpus = 1
[[vm.region]]
name = "a"
size_mib = 64
mempolicy = "bind"
[[vm.region]]
name = "b"
size_mib = 64
backing = "shared"
mof_policy = true
[[vm.region]]
name = "c"
size_mib = 64
"""
    path = tmp_path / "v.toml"
    path.write_text(text)
    model = parse_vm_model(tomllib.loads(text), path)
    regions = model.vms[0].regions
    assert [r.mempolicy for r in regions] == ["bind", "bind+numa_balancing", "default"]
    assert [r.mof_policy for r in regions] == [False, True, False]
    rows = load_vm_file(path).to_dicts()
    assert [r["mof_policy"] for r in rows[0]["regions"]] == [False, True, False]
    assert [r["mempolicy"] for r in rows[0]["regions"]] == [
        "bind",
        "bind+numa_balancing",
        "default",
    ]
