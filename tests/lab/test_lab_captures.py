"""The committed real lab captures (traces/real/): format, sidecars, and what they show.

Facts asserted here are the kernel behaviour of KERNEL.md 10a as recorded on a Linux 6.18
kvm_pvm host; they hold for these files whatever machine runs the tests.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import zstandard

from pipeline.model.vmmodel import load_vm_file

REAL = Path(__file__).resolve().parents[2] / "traces" / "real"
TRACES = sorted(REAL.glob("*.trace.zst"))
MAX_BYTES = 5 << 20
UNMAP = re.compile(r"kvm_unmap_hva_range: mmu notifier unmap range: (0x[0-9a-f]+) -- (0x[0-9a-f]+)")

pytestmark = pytest.mark.skipif(not TRACES, reason="no committed captures in traces/real/")


def _stem(trace: Path) -> Path:
    return trace.with_name(trace.name.split(".")[0])


def _first_line(trace: Path) -> str:
    with trace.open("rb") as f:
        head = zstandard.ZstdDecompressor().stream_reader(f).read(4096)
    return head.decode().split("\n", 1)[0]


def _guest_unmaps(trace: Path, hva: int, size: int) -> int:
    with trace.open("rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    return sum(
        1
        for m in UNMAP.finditer(text)
        if int(m.group(1), 16) < hva + size and int(m.group(2), 16) > hva
    )


@pytest.mark.parametrize("trace", TRACES, ids=lambda p: p.name)
def test_capture_files_and_sidecar(trace: Path) -> None:
    assert trace.stat().st_size < MAX_BYTES
    first = _first_line(trace)
    assert first.startswith("# kernel ") and "captured by tlbreplay" in first
    stem = _stem(trace)
    sidecar = Path(f"{stem}.toml")
    vms = load_vm_file(sidecar)
    assert vms.height == 1
    row = vms.row(0, named=True)
    assert row["mmu"] in ("shadow", "tdp")
    assert row["kernel"] and row["kernel"] in first
    assert len(row["vcpu_tids"]) == row["vcpus"]
    doc = tomllib.loads(sidecar.read_text())
    lab = doc["lab"]
    assert len(lab["touch_start_gpa"]) == row["vcpus"]
    assert all(p > 0 for p in lab["passes"])  # the guest ran the whole window
    region = doc["vm"][0]["region"][0]
    assert region["hva_start"] % (2 << 20) == 0
    if region["backing"] == "shared":
        assert region["mof_policy"] is True
    if region["thp"]:
        assert lab["thp_mapped_kb"] > 0
    vmstat = json.loads(Path(f"{stem}.vmstat.json").read_text())
    assert vmstat["samples_columns"][0] == "ts_ns" and vmstat["samples"]
    meta = json.loads(Path(f"{stem}.capture.json").read_text())
    assert sum(int(v) for v in meta["lost_events"].values()) == 0
    assert "kvm:kvm_unmap_hva_range" in meta["events"]


@pytest.mark.parametrize("trace", TRACES, ids=lambda p: p.name)
def test_notifiers_reach_guest_ram_only_with_balancing_on(trace: Path) -> None:
    doc = tomllib.loads(Path(f"{_stem(trace)}.toml").read_text())
    region = doc["vm"][0]["region"][0]
    size = region["size_mib"] << 20
    count = _guest_unmaps(trace, region["hva_start"], size)
    if doc["host"]["numa_balancing"] == 0:
        assert count == 0, "the control run must not scan guest RAM"
    else:
        assert count > 0, "task_numa_work() must reach guest RAM within the window"


def test_live_lab_run_is_opt_in() -> None:
    """The live lab turns numa_balancing and tracing on: only with TLBREPLAY_LAB_LIVE=1."""
    if os.environ.get("TLBREPLAY_LAB_LIVE") != "1":
        pytest.skip("set TLBREPLAY_LAB_LIVE=1 (root, /dev/kvm, tracefs) to run the live lab")
    import tempfile

    from pipeline.lab.run import LabConfig, run_lab

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "live.trace.zst"
        lab = run_lab(LabConfig(mem_mib=64, seconds=3.0), out)
        assert min(lab["passes"]) > 0
        assert out.is_file() and out.with_name("live.toml").is_file()
    assert Path("/proc/sys/kernel/numa_balancing").read_text().strip() == "0"
