"""Issue 16, "Why": unbounded work from a valid-looking spec (ADR 0205). A spec of 64 vCPUs x
4 KiB granules x 1e6 s passed validation and died of MemoryError; a 4 PiB VM was accepted.
Both are now refused before any work, one line with the estimate and the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.schema import read_manifest
from pipeline.synth.bounds import DEFAULT_MAX_ROWS, estimated_rows
from pipeline.synth.runner import run_synth
from pipeline.synth.spec import load_spec
from tests.robust.helpers import SPEC, tlbreplay, write_spec


def long_spec(path: Path) -> Path:
    text = SPEC.format(duration_s=1_000_000, seed=1)
    text = text.replace("vcpus = 4\nvcpu_nodes = [0, 0, 1, 1]", "vcpus = 64")
    path.write_text(text.replace('kind = "zipf"', 'kind = "zipf"\ngranule_kib = 4'))
    return path


def pib_spec(path: Path) -> Path:
    pib_gib = 4 << 20
    text = SPEC.format(duration_s=4, seed=1).replace(
        "node_mem_gib = [4, 4]", f"node_mem_gib = [{pib_gib}, {pib_gib}]"
    )
    text = text.replace("mem_gib = 1\n", f"mem_gib = {pib_gib}\n")
    path.write_text(text.replace("size_gib = 1\n", f"size_gib = {pib_gib}\n"))
    return path


def test_long_spec_is_refused_with_estimate_and_limit(tmp_path: Path) -> None:
    spec = long_spec(tmp_path / "long.toml")
    res = tlbreplay("synth", spec, "--out", tmp_path / "ds", "-q", check=False)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "about 3,276,800,000,000 access rows" in res.stderr  # 64 x 1e7 x 5,120 touches
    assert f"limit of {DEFAULT_MAX_ROWS:,}" in res.stderr
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == [spec]  # nothing left behind


def test_pib_vm_is_refused_with_its_reason(tmp_path: Path) -> None:
    spec = pib_spec(tmp_path / "pib.toml")
    res = tlbreplay("synth", spec, "--out", tmp_path / "ds", "-q", check=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "vm `vm0` spans 4,194,304.0 GiB of guest memory" in res.stderr
    assert "6,180.0 GiB of engine state" in res.stderr and "--max-memory" in res.stderr
    assert not (tmp_path / "ds").exists()


def test_estimate_bounds_the_rows_and_limits_are_options(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "small.toml")
    estimate = estimated_rows(load_spec(spec_path))
    rows = run_synth(spec_path, tmp_path / "ds").manifest["counts"]["accesses"]
    assert rows <= estimate * 1.05  # merged touches only lower it; the draws are Poisson
    assert estimate == 4 * 40 * 10  # 4 vCPUs x 40 epochs x (200 MiB/s x 0.1 s / 2 MiB)
    with pytest.raises(SpecError, match=f"about {estimate:,} access rows.*limit of 100;"):
        run_synth(spec_path, tmp_path / "ds2", max_rows=100)
    with pytest.raises(SpecError, match=r"over the limit of 0\.0 GiB"):
        run_synth(spec_path, tmp_path / "ds2", max_memory_bytes=1 << 20)
    assert not (tmp_path / "ds2").exists()
    res = tlbreplay("synth", spec_path, "--out", tmp_path / "ds3", "-q", "--max-rows", "100",
                    check=False)  # fmt: skip
    assert res.returncode == 1 and "raise `--max-rows`" in res.stderr
    assert read_manifest(tmp_path / "ds")["counts"]["accesses"] == rows
