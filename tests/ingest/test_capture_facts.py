"""Hosting facts of a captured VM (table hosting, ADR 0330): one builder for ingest and
calibrate, the hosting.parquet of `tlbreplay ingest`, and no file without facts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.analyze import calibrate as cal
from pipeline.analyze import calibrate_observed as cal_obs
from pipeline.ingest.capture_facts import (
    LabFacts,
    dataset_hosting,
    vcpu_tls_hva,
    with_capture_sched,
)
from pipeline.ingest.runner import run_ingest
from pipeline.model.hosting import (
    VmHosting,
    VmmArea,
    areas_from_smaps,
    has_facts,
    hosting_frame,
    hosting_from_frame,
    preempt_per_s,
)
from pipeline.model.vmmprofile import PROFILE_ORIGIN
from pipeline.schema import read_manifest, read_parquet

REAL = Path(__file__).resolve().parents[2] / "traces" / "real"
SMALL = REAL / "lab-anon-thp-nopin-nb1"
needs_capture = pytest.mark.skipif(
    not Path(f"{SMALL}.trace.zst").is_file(), reason=f"{SMALL}.trace.zst is not committed"
)


def _ingest(stem: Path, out: Path, sidecar: Path | None = None) -> Path:
    run_ingest([f"{stem}.trace.zst"], out, vm_config=sidecar or Path(f"{stem}.toml"))
    return out


def test_table_round_trips_every_field() -> None:
    rows = [
        VmHosting(
            "a",
            vcpu_cpu_share=(0.25, 0.5),
            vmm_areas=(
                VmmArea(0x1000, 8192, 4096, "anon"),
                VmmArea(0xFFFFFFFFFF600000, 4096, 0, "anon"),
                VmmArea(0x7F0000000000, 8 << 20, 12288, "anon", tls_vcpu=1),
            ),
            nr_threads=4,
            host_runnable=3.0,
            zap_ns_per_spte=52.5,
            host_cpus=2,
            vcpu_runtime_start_ms=(1200.0, 800.5),
            preempt_per_s=124.9,
        ),
        VmHosting("b", host_runnable=0.0),
    ]
    frame = hosting_frame(rows)
    assert frame["nr_threads"].to_list() == [4, None]
    assert hosting_from_frame(frame) == tuple(rows)
    assert has_facts(rows[0]) and not has_facts(rows[1])


def test_vcpu_stack_areas_from_the_lab_or_the_thread_sp() -> None:
    # ADR 0350: the VMA holding a vCPU thread's pthread_self() (the lab) or user stack
    # pointer (capture.json thread_sp) is that vCPU's TLS / rseq area
    vmas = [
        {"start": "7f0000000000", "end": "7f0000800000", "perms": "rw-p", "path": "",
         "smaps_kb": {"Rss": 12}, "vm_flags": ["rd", "wr"]},
        {"start": "7f0000801000", "end": "7f0001001000", "perms": "rw-p", "path": "",
         "smaps_kb": {"Rss": 8}, "vm_flags": ["rd", "wr"]},
    ]  # fmt: skip
    vm = {"vm": "lab", "vcpu_tids": [101, 102], "regions": []}
    lab = LabFacts(vcpu_pthread_hva=(0x7F0001000700, 0x7F00007FF700))
    areas = areas_from_smaps(vmas, [], vcpu_tls_hva(vm, lab, {}))
    assert [a.tls_vcpu for a in areas] == [1, 0]
    # no lab record: the stack pointers the capture read (None: the thread stayed on a CPU)
    capture = {"thread_sp": {"101": 0x7F00007FE000, "102": None}}
    assert vcpu_tls_hva(vm, LabFacts(), capture) == [0x7F00007FE000, None]
    areas = areas_from_smaps(vmas, [], vcpu_tls_hva(vm, LabFacts(), capture))
    assert [a.tls_vcpu for a in areas] == [0, -1]
    assert [a.tls_vcpu for a in areas_from_smaps(vmas, [])] == [-1, -1]


def test_capture_sched_fills_what_the_lab_table_lacks() -> None:
    # `tlbreplay capture` of any VMM records each thread's CPU seconds and involuntary
    # switches over the capture (capture.json thread_sched); [lab] values win when present
    vm = {"vm": "q", "vcpu_tids": [11, 12], "regions": []}
    capture = {
        "seconds": 10.0,
        "thread_sched": {
            "11": {"cpu_s": 9.0, "nonvoluntary": 900.0, "runtime_start_ms": 5.0},
            "12": {"cpu_s": 5.0, "nonvoluntary": 1000.0, "runtime_start_ms": 7.0},
            "13": {"cpu_s": 0.1, "nonvoluntary": 3.0, "runtime_start_ms": 1.0},
        },
    }
    got = with_capture_sched(vm, LabFacts(), capture)
    assert got.vcpu_cpu_share == (0.9, 0.5) and got.vcpu_preempt_per_s == (100.0, 200.0)
    assert got.vcpu_runtime_start_ms == ()  # numa_balancing was not turned on at the start
    lab = LabFacts(vcpu_cpu_share=(1.0, 1.0))
    assert with_capture_sched(vm, lab, capture).vcpu_cpu_share == (1.0, 1.0)
    # a vCPU the capture did not see: nothing is guessed
    assert with_capture_sched({**vm, "vcpu_tids": [11, 99]}, LabFacts(), capture) == LabFacts()


def test_preempt_rate_is_the_vcpus_mean() -> None:
    assert preempt_per_s((120.0, 130.0)) == 125.0
    assert preempt_per_s(()) is None
    lab = LabFacts.from_table({"vcpu_preempt_per_s": [100, 150.5]}, Path("s.toml"))
    assert lab.vcpu_preempt_per_s == (100.0, 150.5)


def test_lab_facts_reject_a_mistyped_share(tmp_path: Path) -> None:
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="hosting fact"):
        LabFacts.from_table({"vcpu_cpu_share": ["x"]}, tmp_path / "s.toml")


@needs_capture
def test_ingest_writes_the_hosting_calibrate_builds(tmp_path: Path) -> None:
    ds = _ingest(SMALL, tmp_path / "ds")
    assert read_manifest(ds)["tables"]["hosting"] == 1
    written = hosting_from_frame(read_parquet(ds / "hosting.parquet", "hosting"))
    # the same builder: calibrate's lab_hosting() gives the same facts, to the bit
    assert written == (cal.lab_hosting(cal_obs.load_input(ds)),)
    (h,) = written
    assert h.vm == read_parquet(ds / "vms.parquet", "vms")["vm"][0]
    assert h.nr_threads == 4  # python, CPU 0/KVM, CPU 1/KVM, kvm-nx-lpage-recovery
    assert h.host_cpus == 2 and len(h.vcpu_cpu_share) == 2
    assert h.host_runnable < 0.1  # the committed cells ran on an idle host (share ~0.98)
    assert h.preempt_per_s is not None and h.preempt_per_s > 0  # ADR 0350
    # a THP-backed guest: the scan cost is measured per 2 MiB SPTE; the lab's mprotect()
    # probe needs 4 KiB SPTEs, so the zap cost is the trace's upper bound
    assert h.scan_ns_per_spte_2m is not None and h.scan_ns_per_spte_4k is None
    assert h.zap_ns_per_spte == h.scan_ns_per_spte_2m
    assert any(a.kind == "anon" and a.active for a in h.vmm_areas)
    # each vCPU thread's stack mapping (pthread_self() from [lab]) is found among the VMAs
    assert {a.tls_vcpu for a in h.vmm_areas} == {-1, 0, 1}


@needs_capture
def test_no_hosting_file_without_facts(tmp_path: Path) -> None:
    # a sidecar without [lab] and no capture.json beside it or the trace: what the trace
    # shows and the default VMM profile (ADR 0365), the share left at its default
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(f"{SMALL}.trace.zst", src / "cell.trace.zst")
    text = Path(f"{SMALL}.toml").read_text()
    (src / "cell.toml").write_text(text[: text.index("[lab]")])
    ds = _ingest(src / "cell", tmp_path / "ds")
    assert read_manifest(ds)["tables"]["hosting"] == 1
    origin = read_manifest(ds)["hosting_provenance"]["lab"]
    assert origin["vcpu_cpu_share"] == "defaulted" and origin["vmm_areas"] == PROFILE_ORIGIN
    # capture.json alone (a `tlbreplay capture` without the lab) gives the VMM's areas
    shutil.copy(f"{SMALL}.capture.json", src / "cell.capture.json")
    vms = read_parquet(ds / "vms.parquet", "vms")
    (h,) = dataset_hosting(ds, vms, src / "cell.toml", [str(src / "cell.trace.zst")])
    assert h.vmm_areas and h.nr_threads == 4
    assert h.vcpu_cpu_share == () and h.zap_ns_per_spte is None and h.host_runnable == 0.0
