"""calibrate: kernel -> policy, vmstat attribution, the lab workload, and a committed capture."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.analyze import calibrate as cal
from pipeline.analyze import calibrate_input as cal_in
from pipeline.analyze import calibrate_observed as cal_obs
from pipeline.errors import InputError
from pipeline.ingest.capture_facts import LabFacts

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "traces" / "real"


def test_policy_for_kernel() -> None:
    assert cal_in.policy_for_kernel("6.18.44-fc-v657") == "linux-6.18"
    assert cal_in.policy_for_kernel("6.8.0-45-generic") == "linux-6.5"
    assert cal_in.policy_for_kernel("7.1.5") == "linux-7.1"
    assert cal_in.policy_for_kernel(None) == "linux-6.18"


def test_relative_error() -> None:
    assert cal.relative_error(110, 100) == pytest.approx(0.1)
    assert cal.relative_error(0, 0) == 0.0
    assert math.isinf(cal.relative_error(3, 0))
    assert math.isnan(cal.relative_error(float("nan"), 1))


def test_lab_table_is_validated(tmp_path: Path) -> None:
    table = {
        "pattern": "split",
        "touch_start_gpa": [0, 4096],
        "touch_end_gpa": [4096, 8192],
        "passes_per_s": [10.0, 20.0],
        "window_s": 2.0,
    }
    lab = cal_in.LabWorkload.from_table(table, tmp_path / "x.toml")
    assert lab.guest_page_bytes == 2 << 20
    with pytest.raises(InputError, match="lab"):
        cal_in.LabWorkload.from_table({**table, "passes_per_s": [1.0]}, tmp_path / "x.toml")
    with pytest.raises(InputError, match="window_s"):
        cal_in.LabWorkload.from_table({k: v for k, v in table.items() if k != "window_s"}, tmp_path)


def test_workload_accesses_sweep_each_range_every_epoch() -> None:
    lab = cal_in.LabWorkload("split", (0, 1 << 20), (1 << 20, 2 << 20), (100.0, 300.0), 1.0)
    frame = cal.workload_accesses({"vm": "lab"}, lab, n_epochs=3, epoch_ms=100)
    assert frame.height == 6
    assert frame["gfn_start"].to_list() == [0, 256] * 3
    assert frame["nr_pages"].to_list() == [256, 256] * 3
    assert frame["nr_accesses"].to_list() == [10, 30] * 3
    assert frame["write"].all()


def test_attribute_vmstat_credits_windows_and_subtracts_background() -> None:
    cols = ["ts_ns", "numa_pte_updates"]
    ms = 1_000_000
    # background: +10 at every 100 ms sample; our scan at 500..520 ms adds 1000, which the
    # 5 ms sampler sees at 530 ms
    rows, value = [], 0
    for t in (0, 100, 200, 300, 400, 500, 530, 600, 700, 800, 900):
        value += 1000 if t == 530 else 10
        rows.append([t * ms, value])
    got, background = cal_obs.attribute_vmstat(
        rows, cols, [(500 * ms, 520 * ms)], (0, 1000 * ms), "numa_pte_updates"
    )
    # credited: the rows at 500 (+10) and 530 (+1000, first after the window); background: the
    # other rows' +80 (the first row has no increment) over 970 ms, i.e. 80 / 970 * 30 here
    assert background == pytest.approx(80 / 970 * 30, rel=1e-9)
    assert got == pytest.approx(1010 - background, rel=1e-9)
    # a signal smaller than the background in its windows is not measurable
    noisy, _ = cal_obs.attribute_vmstat(rows, cols, [(100 * ms, 120 * ms)], (0, 1000 * ms), cols[1])
    assert math.isnan(noisy)
    assert math.isnan(cal_obs.attribute_vmstat([], cols, [], (0, 1), "numa_pte_updates")[0])


def test_host_runnable_from_the_vcpu_share() -> None:
    # a vCPU thread that always runs gets 1/(1+k) of its CPU: mean share 0.25 -> k = 3
    lab = cal_in.LabWorkload("all", (0,), (4096,), (1.0,), 1.0, facts=LabFacts((0.3, 0.2)))
    assert cal.host_runnable(lab) == pytest.approx(3.0)
    assert cal.host_runnable(cal_in.LabWorkload("all", (0,), (4096,), (1.0,), 1.0)) == 0.0
    full = cal_in.LabWorkload("all", (0,), (4096,), (1.0,), 1.0, facts=LabFacts((1.0,)))
    assert cal.host_runnable(full) == 0.0


def test_cadence() -> None:
    got = cal_obs.scan_cadence([3_000_000_000, 1_000_000_000, 6_000_000_000], 0)
    assert got == {"scans": 3.0, "first_scan_ms": 1000.0, "scan_interval_ms": 2500.0}
    assert math.isnan(cal_obs.scan_cadence([], 0)["first_scan_ms"])


def _ingest(trace: Path, out: Path) -> Path:
    from pipeline.ingest.runner import run_ingest

    run_ingest([str(trace)], out, vm_config=trace.with_name(trace.name.split(".")[0] + ".toml"))
    return out


# A committed idle-host capture (traces/real/, ADR 0350): it records the vCPUs' runtime at the
# window start, so the first scan is modelled at the right time (docs/lab.md); the loaded-host
# captures (traces/real/loaded/) lack it.
SMALL = REAL / "lab-anon-thp-nopin-nb1.trace.zst"


@pytest.mark.skipif(not SMALL.is_file(), reason=f"{SMALL} is not committed")
def test_calibrate_a_committed_lab_capture(tmp_path: Path) -> None:
    """THP anon guest: every scan zaps 2 MiB SPTEs and PROT_NONEs whole PMDs."""
    dataset = _ingest(SMALL, tmp_path / "ds")
    inp = cal_obs.load_input(dataset)
    assert inp.vm["mmu"] == "shadow"
    obs, background = cal_obs.observed(inp)
    assert background["notifier_calls"] == 0.0 and background["numa_hint_faults"] >= 0
    assert obs["scans"] >= 1
    assert obs["notifier_calls"] >= obs["scans"]
    assert obs["notifier_bytes"] % (2 << 20) == 0
    assert obs["refaults"] > 0
    bursts = cal_obs.scan_bursts(inp)
    assert all(b.start_ns >= inp.t_on_ns for b in bursts)
    table = cal.calibrate(dataset)
    names = table["counter"].to_list()
    assert set(cal_obs.COUNTERS) <= set(names)
    assert "refaults_per_scan" in names
    assert table["policy"][0] == "linux-6.18"
    sim = dict(zip(table["counter"], table["simulated"], strict=True))
    assert sim["scans"] >= 1 and sim["notifier_calls"] >= 1
    assert np.isfinite(table["observed"][0])
    # the capture's process and host facts reach the engine (ADR 0320)
    hosting = cal.lab_hosting(inp)
    assert hosting.vcpu_cpu_share == inp.lab.facts.vcpu_cpu_share
    # get_nr_threads(): every thread the capture saw in the VMM (the vCPUs, the lab process's
    # own threads, kvm-nx-lpage-recovery)
    capture = json.loads(SMALL.with_name("lab-anon-thp-nopin-nb1.capture.json").read_text())
    assert hosting.nr_threads == len(capture["threads"]) >= 3
    assert hosting.host_cpus == 2
    ram = [(lo, hi) for lo, hi, _ in cal_obs._regions(inp.vm)]
    assert all(a.hva_end <= lo or a.hva_start >= hi for a in hosting.vmm_areas for lo, hi in ram)
    assert any(a.kind == "anon" and a.active for a in hosting.vmm_areas)
    assert hosting.zap_ns_per_spte is not None and hosting.zap_ns_per_spte > 0
    # guest RAM is scanned 128 MiB per scan on average (the VMM's areas use the budget)
    assert dict(zip(table["counter"], table["rel_error"], strict=True))["notifier_bytes"] == 0.0
    assert cal.lab_hosting(inp, modelled=False).vmm_areas == ()


def test_calibrate_without_lab_table_is_a_clear_error(tmp_path: Path) -> None:
    if not SMALL.is_file():
        pytest.skip(f"{SMALL} is not committed")
    dataset = _ingest(SMALL, tmp_path / "ds")
    sidecar = tmp_path / "plain.toml"
    text = SMALL.with_name("lab-anon-thp-nopin-nb1.toml").read_text()
    sidecar.write_text(text.split("[lab]")[0])
    with pytest.raises(InputError, match=r"no \[lab\] table"):
        cal_obs.load_input(dataset, sidecar=sidecar)


def test_frames_are_polars() -> None:
    assert isinstance(
        cal.workload_accesses(
            {"vm": "v"}, cal_in.LabWorkload("all", (0,), (4096,), (1.0,), 0.1), 1, 100
        ),
        pl.DataFrame,
    )


def test_pooled_adds_up_the_counters_that_add_up() -> None:
    def table(flush_obs: float, flush_sim: float, hint_obs: float) -> pl.DataFrame:
        names = list(cal_obs.COUNTERS)
        obs = dict.fromkeys(names, 1.0) | {"remote_tlb_flushes": flush_obs}
        obs["numa_hint_faults"] = hint_obs
        sim = dict.fromkeys(names, 1.0) | {"remote_tlb_flushes": flush_sim}
        return pl.DataFrame(
            {"counter": names, "observed": [obs[c] for c in names],
             "simulated": [sim[c] for c in names]}
        )  # fmt: skip

    got = cal.pooled([table(9.0, 7.0, 5.0), table(6.0, 7.0, float("nan"))])
    rows = {r["counter"]: r for r in got.iter_rows(named=True)}
    # -22% and +17% per capture, 0% pooled: a Poisson count judged over all captures
    assert (rows["remote_tlb_flushes"]["observed"], rows["remote_tlb_flushes"]["simulated"]) == (
        15.0,
        14.0,
    )
    assert rows["remote_tlb_flushes"]["rel_error"] == pytest.approx(-1 / 15)
    assert rows["scans"]["observed"] == 2.0
    assert math.isnan(rows["numa_hint_faults"]["observed"])  # n/a in one capture: n/a
    assert "scan_interval_ms" not in rows and "first_scan_ms" not in rows  # do not add up


def test_a_work_item_split_by_preemption_is_one_scan() -> None:
    # kernel/sched/fair.c task_numa_work() walks up the address space on one thread and
    # mm->numa_scan_offset (printed by each sched_skip_vma_numa) changes only when the item
    # ends: a burst of the same thread that walks on from where the last one was, printing
    # the same offset, is the rest of that item (the regime fit cell 4K pinned 1 GiB: a vCPU
    # at 8% of a CPU paused 126 ms inside its second walk).
    item = cal_obs.Burst(0, 10, 1 << 30, pid=7, lo_hva=0x1000, hi_hva=0x9000, scan_offset=0)
    rest = cal_obs.Burst(200, 210, 1 << 20, pid=7, lo_hva=0x9000, hi_hva=0xA000, scan_offset=0)
    assert cal_obs.continues(item, rest)
    # the next item starts where the last stopped: its skips print that offset
    assert not cal_obs.continues(item, replace(rest, scan_offset=0x9000))
    # after a wrap it starts below; another thread is another item; no skips: the gap decides
    assert not cal_obs.continues(item, replace(rest, lo_hva=0x2000))
    assert not cal_obs.continues(item, replace(rest, pid=8))
    assert not cal_obs.continues(replace(item, scan_offset=None), replace(rest, scan_offset=None))
    # no skips: a chunk as long as the last one, where it ended, is the same unchanged budget
    # (a pinned walk); a new item would start with the whole 256 MiB
    mib, end = 1 << 20, 0x7F0000000000
    walk = replace(
        item, scan_offset=None, hi_hva=end - 242 * mib, last_chunk=(end - 242 * mib, end)
    )
    more = replace(rest, scan_offset=None, lo_hva=end, first_chunk=(end, end + 242 * mib))
    assert cal_obs.continues(walk, more)
    assert not cal_obs.continues(walk, replace(more, first_chunk=(end, end + 256 * mib)))
    assert not cal_obs.continues(walk, replace(more, first_chunk=(end + mib, end + 243 * mib)))


PINNED_FIT = REAL / "regimes" / "lab-anon-4k-pin-nb1-1024m-2v-20s.trace.zst"


@pytest.mark.skipif(not PINNED_FIT.is_file(), reason=f"{PINNED_FIT} is not committed")
def test_pinned_fit_cell_has_two_whole_walks(tmp_path: Path) -> None:
    # the kernel walked the whole 1 GiB pinned guest twice in 20 s (vCPU 1 at 62 ms, vCPU 0 at
    # 9.45 s), 5 notifiers each (232 MiB chunks: the VMM's VMAs below guest RAM spent 24 MiB
    # of the budget, pinned pages none)
    inp = cal_obs.load_input(_ingest(PINNED_FIT, tmp_path / "ds"))
    bursts = cal_obs.scan_bursts(inp)
    assert [b.guest_bytes for b in bursts] == [1 << 30, 1 << 30]
    assert (bursts[1].start_ns - bursts[0].start_ns) // 1_000_000 == 9392


def test_a_vcpu_slower_than_a_sweep_per_epoch_touches_only_what_it_reached() -> None:
    # 1,000 pages at 2.5 sweeps/s = 0.25 sweeps per 100 ms epoch: after the first epoch
    # (RAM populated before the window: every page mapped) it covers 250 pages an epoch, in
    # order from the range's start, wrapping (ADR 0362)
    got = cal.sweep_windows(1000, 0.25, 6)
    assert got == [
        [(0, 1000, 1)],
        [(0, 250, 1)],
        [(250, 250, 1)],
        [(500, 250, 1)],
        [(750, 250, 1)],
        [(0, 250, 1)],
    ]
    # a window crossing the range's end is cut in two
    assert cal.sweep_windows(1000, 0.4, 4)[3] == [(800, 200, 1), (0, 200, 1)]
    assert cal.sweep_windows(1000, 0.7, 3)[2] == [(700, 300, 1), (0, 400, 1)]
    # a sweep or more per epoch: the whole range, round(sweeps) times
    assert cal.sweep_windows(1000, 2.6, 2) == [[(0, 1000, 3)]] * 2
    # populating: the new pages of each epoch, then sweeps from the start
    assert cal.sweep_windows(1000, 0.5, 4, [400, 400, 1000, 1000]) == [
        [(0, 400, 1)],
        [(399, 1, 1)],
        [(400, 600, 1)],
        [(0, 500, 1)],
    ]


FLUSHES = REAL / "regimes" / "flushes"


@pytest.mark.skipif(not FLUSHES.is_dir(), reason=f"{FLUSHES} is not committed")
def test_kvm_flushes_multiply_with_a_second_vcpu_faulting_during_the_walk(tmp_path: Path) -> None:
    # the same pinned 4K 1 GiB guest, 20 s, 4 busy loops (docs/lab.md): one vCPU or two. Both
    # walk the guest twice (5 chunks of ~240 MiB a walk); the KVM flush requests are 7 a walk
    # with one vCPU and 72 with two, at a similar CPU share (0.066; 0.056)
    got = {}
    for vcpus in (1, 2):
        name = f"lab-anon-4k-pin-nb1-1024m-{vcpus}v-20s"
        inp = cal_obs.load_input(_ingest(FLUSHES / f"{name}.trace.zst", tmp_path / name))
        obs, _ = cal_obs.observed(inp)
        got[vcpus] = (obs["scans"], obs["notifier_calls"], obs["remote_tlb_flushes"])
    assert got == {1: (2.0, 10.0, 14.0), 2: (2.0, 10.0, 144.0)}
