"""synth_runner: the DATASET directory (manifest, vms, accesses parts), bit-identical reruns."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SpecError
from pipeline.schema import read_parquet, table_schema
from pipeline.synth.runner import run_synth, write_dataset
from pipeline.synth.spec import load_spec

SPEC = """
duration_s = 12
epoch_ms = 100
seed = 11

[host]
nodes = 2

[[vm]]
name = "b"
mem_gib = 1
vcpus = 2
vcpu_nodes = [0, 1]

[[vm.workload]]
kind = "zipf"
hot_mib = 128
rate_mib_per_s = 100
write_fraction = 0.5

[[vm]]
name = "a"
mem_gib = 2
vcpus = 4

[[vm.region]]
size_gib = 2
pinned = 0.5

[[vm.workload]]
phase = [
  { kind = "sweep", duration_s = 4, rate_mib_per_s = 100, write_fraction = 1.0 },
  { kind = "moving", hot_mib = 64, move_every_s = 1, rate_mib_per_s = 40 },
]
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.parquet"))
    }


def accesses(out: Path) -> pl.DataFrame:
    return pl.concat([read_parquet(p, "accesses") for p in sorted((out / "accesses").glob("*"))])


def test_dataset_layout_and_manifest(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = run_synth(spec_file, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["kind"] == "dataset"
    assert manifest["epoch_ms"] == 100
    assert manifest["seed"] == 11
    assert manifest["sources"] == [
        {"path": str(spec_file), "sha256": hashlib.sha256(spec_file.read_bytes()).hexdigest()}
    ]
    assert manifest["version"]
    assert manifest["parameters"]["nr_epochs"] == 120
    vms = read_parquet(out / "vms.parquet", "vms")
    assert vms["vm"].to_list() == ["b", "a"]
    rows = accesses(out)
    assert manifest["counts"]["vms"] == 2
    assert manifest["counts"]["accesses"] == rows.height > 0
    assert manifest["counts"]["accesses_by_vm"] == {
        "a": rows.filter(pl.col("vm") == "a").height,
        "b": rows.filter(pl.col("vm") == "b").height,
    }
    assert rows.columns == table_schema("accesses").names
    assert rows.equals(rows.sort(["vm", "epoch", "vcpu", "gfn_start", "write"]))
    assert rows["epoch"].max() < 120
    meta = pq.read_schema(out / "accesses" / "part-00000.parquet").metadata
    assert json.loads(meta[b"tlbreplay.params"])["seed"] == 11
    assert not list(tmp_path.glob(".ds.*.tmp")), "temporary directory left behind"


def test_same_spec_and_seed_give_identical_bytes(spec_file: Path, tmp_path: Path) -> None:
    run_synth(spec_file, tmp_path / "one")
    run_synth(spec_file, tmp_path / "two")
    run_synth(spec_file, tmp_path / "other", seed=12)
    one, two, other = (digests(tmp_path / n) for n in ("one", "two", "other"))
    assert one == two
    assert one.keys() == other.keys()
    assert one["accesses/part-00000.parquet"] != other["accesses/part-00000.parquet"]


def test_parts_never_split_an_epoch_of_a_vm(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = write_dataset(load_spec(spec_file), out, rows_per_part=1)
    parts = sorted((out / "accesses").glob("part-*.parquet"))
    # one part per 50-epoch batch: 3 batches of 120 epochs for each of the 2 VMs
    assert len(parts) == result.manifest["counts"]["accesses_files"] == 6
    seen: set[tuple[str, int]] = set()
    for part in parts:
        keys = set(read_parquet(part, "accesses").select("vm", "epoch").iter_rows())
        assert not keys & seen
        seen |= keys
    whole = tmp_path / "whole"
    write_dataset(load_spec(spec_file), whole)
    assert accesses(out).equals(accesses(whole))


def test_all_idle_writes_one_empty_part(tmp_path: Path) -> None:
    spec = tmp_path / "idle.toml"
    spec.write_text(
        'duration_s = 1\n[[vm]]\nname = "v"\nmem_gib = 1\nvcpus = 1\n'
        '[[vm.workload]]\nkind = "idle"\n'
    )
    result = run_synth(spec, tmp_path / "ds")
    assert result.manifest["counts"]["accesses"] == 0
    part = tmp_path / "ds" / "accesses" / "part-00000.parquet"
    assert read_parquet(part, "accesses").height == 0


def test_bad_spec_leaves_previous_output_untouched(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    run_synth(spec_file, out)
    before = digests(out)
    spec_file.write_text(SPEC.replace('kind = "zipf"', 'kind = "zip"'))
    with pytest.raises(SpecError, match="`kind` = `zip`; expected one of uniform"):
        run_synth(spec_file, out)
    assert digests(out) == before
    # the output is a link to its version directory (.ds.v...; ADR 0003)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".ds.v")) == [
        "ds",
        "spec.toml",
    ]
