"""The VMM's other threads tick task_tick_numa() too (ADR 0363): the main loop and helpers
measured by capture.json ``thread_sched``."""

from __future__ import annotations

import polars as pl

from pipeline.model.hosting import (
    VmHosting,
    VmmThread,
    hosting_frame,
    hosting_from_frame,
    vmm_threads_from_sched,
)
from pipeline.replay.engine import VmmTicks
from pipeline.replay.params import ReplayParams
from pipeline.replay.runner import replay_frames
from tests.replay.conftest import MIB, accesses_frame, every_epoch, region, vm_row, vms_frame

RAM_HVA = 0x7F0000000000
GUEST_PAGES = (256 * MIB) >> 12


def test_threads_from_thread_sched_leave_out_vcpus_and_idle_threads() -> None:
    sched = {
        "100": {"cpu_s": 0.15, "nonvoluntary": 36.0, "runtime_start_ms": 1052.4},
        "101": {"cpu_s": 11.0, "nonvoluntary": 3642.0, "runtime_start_ms": 26.0},  # vCPU
        "103": {"cpu_s": 0.0, "nonvoluntary": 0.0, "runtime_start_ms": 0.5},  # never ran
        "102": {"cpu_s": 0.006, "nonvoluntary": 1.0, "runtime_start_ms": 8.7},
    }
    got = vmm_threads_from_sched(sched, 60.0, [101], tgid=100)
    assert got == (VmmThread(100, True, 1052.4, 0.0025), VmmThread(102, False, 8.7, 0.0001))
    assert vmm_threads_from_sched(sched, 0.0, [101], tgid=100) == ()
    # a lab capture.json spans the lab's own reads around the window: main thread unknown
    helpers = vmm_threads_from_sched(sched, 60.0, [101], tgid=100, main_known=False)
    assert helpers == (VmmThread(102, False, 8.7, 0.0001),)


def test_the_lab_in_window_record_wins_over_capture_json() -> None:
    from pathlib import Path

    import pytest

    from pipeline.errors import InputError
    from pipeline.ingest.capture_facts import LabFacts, vmm_threads

    vm = {"vcpu_tids": [101]}
    capture = {
        "seconds": 20.8,
        "thread_sched": {"100": {"cpu_s": 0.068, "runtime_start_ms": 5240.1}},
    }
    table = {"window_s": 20.0, "thread_tids": [100, 102], "thread_cpu_s": [0.01, 0.0],
             "thread_runtime_start_ms": [5239.0, 8.0]}  # fmt: skip
    lab = LabFacts.from_table(table, Path("x.toml"))
    assert vmm_threads(vm, lab, capture, 100) == (VmmThread(100, True, 5239.0, 0.0005),)
    # without it, a lab capture (window_s known) leaves the main thread out; a plain
    # `tlbreplay capture` (no [lab] window) uses capture.json
    assert vmm_threads(vm, LabFacts(window_s=20.0), capture, 100) == ()
    assert vmm_threads(vm, LabFacts(), capture, 100) == (VmmThread(100, True, 5240.1, 0.003269),)
    with pytest.raises(InputError, match="differ in length"):
        LabFacts.from_table({**table, "thread_cpu_s": [0.01]}, Path("x.toml"))


def test_vmm_threads_round_trip_through_the_hosting_table() -> None:
    h = VmHosting("vm0", vmm_threads=(VmmThread(7, True, 1000.5, 0.003),))
    assert hosting_from_frame(hosting_frame([h])) == (h,)


def test_a_tick_lands_on_a_thread_in_proportion_to_its_cpu_time() -> None:
    # 1 ms of CPU per 100 ms epoch: a quarter of a 4 ms tick per epoch, from half a tick:
    # the first tick lands in epoch 1 (0.5 + 2 x 0.25), then every 4th epoch
    ticks = VmmTicks([1.0])
    landed = [e for e in range(12) if ticks.lands(0)]
    assert landed == [1, 5, 9]
    # a thread busy for a whole epoch is ticked in every one
    busy = VmmTicks([100.0])
    assert all(busy.lands(0) for _ in range(5))


def _scans(hosting: VmHosting, epochs: int) -> pl.DataFrame:
    reg = region(size_bytes=256 * MIB, hva_start=RAM_HVA)
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0]))
    acc = accesses_frame(every_epoch("vm0", epochs, 0, 0, GUEST_PAGES))
    params = ReplayParams(hosting=(hosting,), vmm_thread=True)
    return replay_frames(vms, acc, ["linux-6.18"], params).scans


def test_the_vmm_main_thread_past_scan_delay_scans_on_its_first_tick() -> None:
    # kernel/sched/fair.c task_tick_numa() (v6.18): the main thread's node_stamp is 0, so with
    # 1052 ms of runtime it is past 0 + scan_delay (1000 ms) at its first tick. At 2.5 ms of
    # CPU per second (0.25 ms per epoch, 1/16 of a tick) that tick lands in epoch 7 (0.5 +
    # 8/16), at t = 800 ms; mm->numa_next_scan is already past (the mm is older than its
    # oldest thread's runtime). The vCPU, at 1% of a CPU from 0 ms, crosses 1008 ms only
    # after 100 s: without the main thread there is no scan in 2 s.
    slow = VmHosting("vm0", vcpu_cpu_share=(0.01,), vcpu_runtime_start_ms=(0.0,))
    assert _scans(slow, 20).height == 0
    main = VmmThread(4242, True, 1052.0, 0.0025)
    got = _scans(VmHosting("vm0", vcpu_cpu_share=(0.01,), vcpu_runtime_start_ms=(0.0,),
                           vmm_threads=(main,)), 20)  # fmt: skip
    assert (got["t_ms"][0], got["vcpu"][0]) == (800, -1)  # -1: a VMM thread, not a vCPU
    # the model is off by default (ADR 0363): the measured threads are then left out
    reg = region(size_bytes=256 * MIB, hva_start=RAM_HVA)
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0]))
    acc = accesses_frame(every_epoch("vm0", 20, 0, 0, GUEST_PAGES))
    off = VmHosting(
        "vm0", vcpu_cpu_share=(0.01,), vcpu_runtime_start_ms=(0.0,), vmm_threads=(main,)
    )
    assert replay_frames(vms, acc, ["linux-6.18"], ReplayParams(hosting=(off,))).scans.height == 0
    # a helper thread (CLONE_VM: node_stamp 8 ms) with 8.7 ms of runtime never crosses
    helper = VmmThread(4243, False, 8.7, 0.0025)
    none = _scans(VmHosting("vm0", vcpu_cpu_share=(0.01,), vcpu_runtime_start_ms=(0.0,),
                            vmm_threads=(helper,)), 20)  # fmt: skip
    assert none.height == 0
