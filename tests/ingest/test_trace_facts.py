"""What a plain trace shows of its VMM, and the facts inferred from it (ADR 0365), on the
committed fit captures of traces/real/regimes (SPLIT.toml: the fit set only)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import polars as pl
import pytest

from pipeline.analyze import calibrate as cal
from pipeline.analyze import calibrate_observed as cal_obs
from pipeline.ingest import trace_facts as tf
from pipeline.ingest.capture_facts import ram_ranges
from pipeline.ingest.runner import run_ingest
from pipeline.model.hosting import area_kind
from pipeline.model.vmmprofile import MAIN_THREAD_SHARE, PROFILE_ORIGIN, VmmProfile
from pipeline.replay.params import ReplayParams
from pipeline.replay.runner import run_replay
from pipeline.schema import read_manifest

REGIMES = Path(__file__).resolve().parents[2] / "traces" / "real" / "regimes"
PIN_4K = REGIMES / "lab-anon-4k-pin-nb1-1024m-2v-20s"  # fit cell
EARLY = REGIMES / "lab-anon-4k-nopin-nb1-early-256m-1v-60s"  # fit cell
needs = pytest.mark.skipif(
    not Path(f"{PIN_4K}.trace.zst").is_file() or not Path(f"{EARLY}.trace.zst").is_file(),
    reason="the regime fit captures are not committed",
)
# the [lab] keys a hand-written sidecar gives: the guest's workload, no measurement
WORKLOAD_KEYS = (
    "pattern",
    "stride_bytes",
    "touch_start_gpa",
    "touch_end_gpa",
    "passes_per_s",
    "window_s",
    "guest_page_bytes",
)


@pytest.fixture(scope="module")
def pin_4k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pin4k") / "ds"
    run_ingest([f"{PIN_4K}.trace.zst"], out, vm_config=Path(f"{PIN_4K}.toml"))
    return out


@needs
def test_trace_shows_vcpus_vmm_threads_skips_and_the_first_scan(pin_4k: Path) -> None:
    inp = cal_obs.load_input(pin_4k)
    facts = tf.infer_trace_facts(inp.ftrace, ram_ranges(inp.vm))
    # the sidecar's vcpu_tids, found from the trace alone (kvm_mmu_spte_requested's pids)
    assert facts.vcpu_tids == (22606, 22607) == tuple(inp.vm["vcpu_tids"])
    assert facts.vmm_pids == (22606, 22607)
    shown = facts.manifest()
    assert shown["skipped_vmas_by_reason"] == {"inaccessible": 5, "shared_ro": 185, "unsuitable": 3}
    assert shown["numa_balancing_on_from"] == "trace marker numa_balancing=1"
    assert facts.numa_balancing_on_ns == 1_368_314_083_000
    assert facts.first_scan_delay_ms == pytest.approx(62.013)
    assert facts.first_scan_pid == 22607 and shown["first_scan_thread"] == "vcpu"
    # every skipped VMA is one of /proc/PID/maps, with the kind of its skip reason
    cap = json.loads(Path(f"{PIN_4K}.capture.json").read_text())
    kinds = {
        (int(r["start"], 16), int(r["end"], 16)): area_kind(
            r["perms"], r.get("path") or "", r.get("vm_flags") or []
        )
        for r in cap["vmas_before"]
    }
    by_reason = {
        "shared_ro": {"file_ro", "shared"},
        "inaccessible": {"inaccessible"},
        "unsuitable": {"special", "shared"},
    }
    for start, end, reason in facts.skipped_vmas:
        assert kinds[(start, end)] in by_reason[reason]


@needs
def test_other_processes_and_the_scanning_main_thread(tmp_path: Path) -> None:
    run_ingest([f"{EARLY}.trace.zst"], tmp_path / "ds", vm_config=Path(f"{EARLY}.toml"))
    inp = cal_obs.load_input(tmp_path / "ds")
    tables = dict(inp.ftrace)
    facts = tf.infer_trace_facts(tables, ram_ranges(inp.vm))
    # the VMM's main thread (python, 25805) ran task_numa_work: its notifiers reach RAM
    assert facts.vcpu_tids == (25881,) and facts.vmm_pids == (25805, 25881)
    assert facts.manifest()["skipped_vmas_by_reason"]["pid_inactive"] == 68
    assert facts.first_scan_delay_ms == pytest.approx(622.587)
    # the main thread ran the first task_numa_work() (ADR 0366), not the vCPU
    assert facts.first_scan_pid == 25805 and facts.first_scan_by_vcpu is False
    assert facts.manifest()["first_scan_thread"] == "vmm"
    # another process's skip events in the trace are not the VMM's VMAs
    skip = tables["sched_skip_vma_numa"]
    other = skip.head(3).with_columns(
        pl.lit(1).cast(skip["pid"].dtype).alias("pid"),
        pl.lit(4096).cast(skip["vm_start"].dtype).alias("vm_start"),
    )
    tables["sched_skip_vma_numa"] = pl.concat([skip, other])
    again = tf.infer_trace_facts(tables, ram_ranges(inp.vm))
    assert again.skipped_vmas == facts.skipped_vmas and 1 not in again.vmm_pids
    # no marker and no [lab].numa_balancing_on_ns: the VMM's first scan event is the start
    tables["tracing_mark_write"] = pl.DataFrame()
    plain = tf.infer_trace_facts(tables, ram_ranges(inp.vm))
    assert plain.on_source == "the VMM's first scan event" and plain.first_scan_delay_ms == 0
    assert plain.numa_balancing_on_ns == facts.first_scan_ns


def test_share_from_work_and_runtime_rule() -> None:
    # the fit cell anon-4k-pin 1 GiB: measured 0.085, 0.08 ([lab] schedstat)
    assert tf.share_from_work([11.516, 9.721], [131072, 131072], False) == (0.086, 0.072)
    # anon-thp-nopin 2 GiB: measured 0.151 each
    assert tf.share_from_work([33.316, 33.366], [262144, 262144], True) == (0.145, 0.145)
    assert tf.share_from_work([1000.0], [262144], False) == (1.0,)  # at most a CPU
    # runtime at numa_balancing=1: scan_delay - share x delay (+1 ms), at least 1 ms
    assert tf.runtime_at_start_ms(62.013, (0.086, 0.072), 1000) == 995.7
    assert tf.runtime_at_start_ms(0.0, (0.1,), 1000) == 1001.0
    assert tf.runtime_at_start_ms(60_000.0, (0.1,), 1000) == 1.0
    assert tf.runtime_at_start_ms(None, (0.1,), 1000) == 0.0


CONTROL = REGIMES / "control" / "lab-anon-4k-nopin-nb0-early-1024m-2v-20s"  # outside the split


@pytest.mark.skipif(
    not Path(f"{CONTROL}.trace.zst").is_file(), reason="the regime control is not committed"
)
def test_first_touches_price_a_guest_populating_its_ram(tmp_path: Path) -> None:
    """The numa_balancing=0 control: the guest faults 1 GiB of 4K RAM in for the whole 20 s
    window and completes no sweep. The sweeps alone say a share of 0; the first touches
    the trace shows say 0.074 / 0.075, measured 0.076 / 0.074 (ADR 0367)."""
    run_ingest([f"{CONTROL}.trace.zst"], tmp_path / "ds", vm_config=Path(f"{CONTROL}.toml"))
    inp = cal_obs.load_input(tmp_path / "ds")
    span = (inp.t_on_ns, inp.t_on_ns + int(inp.lab.window_s * 1e9))
    tids = tuple(inp.vm["vcpu_tids"])
    # (the fit counted 50,837 and 51,703 in calibrate's window, cut to whole epochs)
    assert tf.first_touches(inp.ftrace, inp.vm, tids, span) == (50_996, 51_829)
    assert tf.share_from_work([0.0, 0.0], [131072, 131072], False) == (0.0, 0.0)
    assert cal.lab_hosting(inp, modelled=False).vcpu_cpu_share == (0.074, 0.075)
    # a trace whose first install of guest RAM follows a notifier holds no population:
    # its first installs are refaults, not first touches
    tables = dict(inp.ftrace)
    sets = tables["kvm_mmu_set_spte"]
    first = int(sets["ts_ns"].min())  # type: ignore[arg-type]
    unmap = tables["kvm_unmap_hva_range"]
    ram = ram_ranges(inp.vm)[0]
    row = {"ts_ns": [first - 1], "cpu": [0], "pid": [1], "comm": ["x"], "flags": [""]}
    row |= {"hva_start": [ram[0]], "hva_end": [ram[0] + 4096]}
    tables["kvm_unmap_hva_range"] = pl.concat([pl.DataFrame(row, schema=unmap.schema), unmap])
    assert tf.first_touches(tables, inp.vm, tids, span) == (0, 0)


@needs
def test_calibrate_without_capture_uses_profile_and_inferred_facts(pin_4k: Path) -> None:
    inp = cal_obs.load_input(pin_4k)
    h = cal.lab_hosting(inp, modelled=False)
    assert h.vcpu_cpu_share == (0.086, 0.072)  # within 10% of the measured 0.085, 0.08
    assert h.vcpu_runtime_start_ms == (995.7, 995.7)
    assert h.nr_threads == VmmProfile(2).nr_threads == 10
    assert h.vmm_areas == VmmProfile(2).areas(*ram_ranges(inp.vm)[0])
    assert h.host_cpus == 2 and h.preempt_per_s is None and h.zap_ns_per_spte is None
    assert h.main_thread_share is None  # a vCPU scanned first (ADR 0366)
    table = cal.calibrate(pin_4k, hosting=False)
    got = dict(zip(table["counter"], table["simulated"], strict=True))
    # the 1 GiB of pinned 4K RAM zapped twice in 20 s, as in the kernel (524,288 SPTEs)
    assert got["spte_zapped"] == 524_288 and got["notifier_bytes"] == 2 << 30


@needs
def test_a_main_thread_first_scan_gives_it_the_runtime_not_the_vcpus(tmp_path: Path) -> None:
    """The fit cell started before the guest (ADR 0366): the VMM's main thread scanned
    first, 623 ms after numa_balancing=1, so its runtime was past scan_delay and the
    vCPUs' (whose guest had not run; [lab] measured 26 ms) was not."""
    run_ingest([f"{EARLY}.trace.zst"], tmp_path / "ds", vm_config=Path(f"{EARLY}.toml"))
    inp = cal_obs.load_input(tmp_path / "ds")
    h = cal.lab_hosting(inp, modelled=False)
    assert h.main_thread_share == MAIN_THREAD_SHARE == 0.003
    # scan_delay - 0.003 x 622.587 ms + 1 ms
    assert h.main_thread_runtime_start_ms == 999.1
    # the sweeps and the 65,536 first touches the trace shows (ADR 0367); measured 0.183
    assert h.vcpu_runtime_start_ms == () and h.vcpu_cpu_share == (0.198,)
    table = cal.calibrate(tmp_path / "ds", hosting=False)
    got = dict(zip(table["counter"], table["simulated"], strict=True))
    # the main thread's scan comes in the epoch after its 0.9 ms of runtime (300 ms), the
    # vCPU's own first crossing only after 1 s of its runtime (~5.6 s of wall time)
    assert got["first_scan_ms"] == 400 and got["scans"] == 6


@needs
def test_plain_trace_ingest_records_provenance_and_replay_reports_it(tmp_path: Path) -> None:
    """No capture.json, a [lab] table with the workload only: the DATASET records what the
    trace showed and where each fact came from; the RESULTS manifest repeats it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "cell.trace.zst").symlink_to(Path(f"{PIN_4K}.trace.zst"))
    doc = tomllib.loads(Path(f"{PIN_4K}.toml").read_text())
    text = Path(f"{PIN_4K}.toml").read_text().split("[lab]")[0]
    lab = {k: doc["lab"][k] for k in WORKLOAD_KEYS}
    text += "[lab]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in lab.items())
    (src / "cell.toml").write_text(text)
    ds = tmp_path / "ds"
    run_ingest([str(src / "cell.trace.zst")], ds, vm_config=src / "cell.toml")
    manifest = read_manifest(ds)
    origin = manifest["hosting_provenance"]["lab"]
    assert origin["vcpu_cpu_share"].startswith("inferred ([lab] sweeps")
    assert origin["vcpu_runtime_start_ms"].startswith("inferred (first scan 62 ms after")
    assert origin["vmm_areas"] == origin["nr_threads"] == PROFILE_ORIGIN
    assert origin["host_cpus"] == "inferred (CPUs seen)"
    assert origin["zap_ns_per_spte"] == origin["preempt_per_s"] == "defaulted"
    assert manifest["trace_facts"]["lab"]["vmm_pids"] == [22606, 22607]
    out = run_replay(ds, tmp_path / "res", ["linux-6.18"])
    results = read_manifest(out)
    assert results["hosting"]["from"] == "dataset hosting.parquet"
    assert results["hosting"]["provenance"]["lab"] == origin


def test_a_synth_dataset_replays_on_the_profile(tmp_path: Path) -> None:
    """A DATASET without hosting.parquet (a synth spec): the replay puts the default VMM
    profile around each VM's guest RAM and says so; ``--no-hosting`` replays RAM alone."""
    from pipeline.synth.runner import run_synth

    spec = Path(__file__).resolve().parents[2] / "traces" / "no-device.toml"
    run_synth(spec, tmp_path / "ds", seed=1)
    assert not (tmp_path / "ds" / "hosting.parquet").exists()
    out = run_replay(tmp_path / "ds", tmp_path / "res", ["linux-6.18"])
    hosting = read_manifest(out)["hosting"]
    assert hosting["from"] == "default VMM profile"
    for vm, origin in hosting["provenance"].items():
        assert origin["vmm_areas"] == origin["nr_threads"] == PROFILE_ORIGIN, vm
        assert origin["vcpu_cpu_share"] == "defaulted"
        assert "vmm_areas" in hosting["facts"][vm]
    bare = run_replay(
        tmp_path / "ds", tmp_path / "bare", ["linux-6.18"], ReplayParams(dataset_hosting=False)
    )
    assert read_manifest(bare)["hosting"]["from"] == "none (--no-hosting)"


def test_a_spec_can_replay_guest_ram_alone(tmp_path: Path) -> None:
    from pipeline.errors import SpecError
    from pipeline.synth.runner import run_synth

    text = (Path(__file__).resolve().parents[2] / "traces" / "no-device.toml").read_text()
    spec = tmp_path / "bare.toml"
    spec.write_text('vmm_profile = "none"\n' + text)
    run_synth(spec, tmp_path / "ds", seed=1)
    out = run_replay(tmp_path / "ds", tmp_path / "res", ["linux-6.18"])
    assert read_manifest(out)["hosting"]["from"] == "none (the spec's vmm_profile = none)"
    spec.write_text('vmm_profile = "kvmtool"\n' + text)
    with pytest.raises(SpecError, match="vmm_profile"):
        run_synth(spec, tmp_path / "ds2", seed=1)
