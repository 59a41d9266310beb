"""Real captures from this machine (traces/real/, written by `tlbreplay lab`): every line of a
real Linux 6.18 tracefs capture parses, and the shadow-MMU accesses come out per vCPU."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path

import polars as pl
import pytest

from pipeline.ingest.runner import run_ingest

REAL = Path(
    os.environ.get("TLBREPLAY_REAL_TRACES", Path(__file__).resolve().parents[2] / "traces" / "real")
)
CAPTURES = sorted(REAL.glob("*.trace.zst")) if REAL.is_dir() else []


def sidecar(trace: Path) -> Path:
    return trace.with_name(trace.name.removesuffix(".trace.zst") + ".toml")


@pytest.mark.skipif(not CAPTURES, reason="no real capture under traces/real/ yet")
@pytest.mark.parametrize("trace", CAPTURES, ids=lambda p: p.name)
def test_real_capture_parses_completely(tmp_path: Path, trace: Path) -> None:
    side = sidecar(trace)
    m = run_ingest([str(trace)], tmp_path / "ds", vm_config=side if side.is_file() else None)
    (s,) = m["sources"]
    assert s["sha256"] == hashlib.sha256(trace.read_bytes()).hexdigest()
    assert s["lines_total"] == s["parsed"] + s["comments"] + s["quarantined"]
    assert s["quarantined"] == 0, pl.read_parquet(tmp_path / "ds" / "quarantine.parquet").head()
    assert s["parsed"] > 0
    vms = pl.read_parquet(tmp_path / "ds" / "vms.parquet")
    acc = pl.read_parquet(tmp_path / "ds" / "accesses")
    if side.is_file():
        doc = tomllib.loads(side.read_text())
        assert not vms["inferred"].any()
        spte_requested = m["tables"]["ftrace/kvm_mmu_spte_requested"]
        if doc.get("host", {}).get("mmu") == "shadow" and spte_requested:
            assert m["accesses_from"] == "kvm_mmu_spte_requested"
            # every refault is one access, none lost or invented
            touches = (acc["nr_pages"] * acc["nr_accesses"]).sum()
            dropped = m["accesses_unassigned"] + m["accesses_outside_ram"]
            assert touches + dropped == spte_requested
    if acc.height:
        vcpus = int(vms["vcpus"][0])
        assert acc["vcpu"].min() >= 0 and acc["vcpu"].max() < vcpus  # type: ignore[operator]
        mem_pages = int(vms["mem_bytes"][0]) // 4096
        assert acc["gfn_start"].min() >= 0  # type: ignore[operator]
        assert (acc["gfn_start"] + acc["nr_pages"]).max() <= mem_pages  # type: ignore[operator]
        assert acc["epoch"].min() >= 0  # type: ignore[operator]
