"""The VMM process and the host around a VM (ADR 0320): the VMM's non-RAM VMAs in
task_numa_work(), vCPU CPU share in task_tick_numa(), need_resched() yields of the zap walk."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.model.hosting import VmHosting, VmmArea, area_kind, areas_from_smaps
from pipeline.replay.kvm import TICK_NS, ReschedModel, sched_slice_ns
from pipeline.replay.params import ReplayParams
from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import replay_frames
from pipeline.replay.workcost import NumaWorkCost
from tests.replay.conftest import MIB, accesses_frame, every_epoch, region, vm_row, vms_frame

RAM_HVA = 0x7F0000000000
GUEST_PAGES = (256 * MIB) >> 12  # 65536


def test_area_kind_follows_task_numa_work_skips() -> None:
    assert area_kind("rw-p", "") == "anon"
    assert area_kind("rw-p", "[heap]") == "anon"
    assert area_kind("rw-p", "/usr/lib/libc.so.6") == "file_rw"
    assert area_kind("r-xp", "/usr/lib/libc.so.6") == "file_ro"  # shared_ro
    assert area_kind("rw-s", "/memfd:ctl (deleted)") == "shared"  # no MOF policy
    assert area_kind("---p", "") == "inaccessible"
    assert area_kind("rw-p", "", ["rd", "wr", "pf"]) == "special"  # VM_PFNMAP
    assert VmmArea(0, 4096, 4096, "anon").scanned
    assert not VmmArea(0, 4096, 4096, "file_ro").scanned


def test_areas_from_smaps_leave_out_guest_ram() -> None:
    rows = [
        {"start": "1000", "end": "3000", "perms": "rw-p", "path": "[heap]",
         "smaps_kb": {"Rss": 4}, "vm_flags": ["rd", "wr"]},
        {"start": hex(RAM_HVA)[2:], "end": hex(RAM_HVA + 2 * MIB)[2:], "perms": "rw-p",
         "path": "", "smaps_kb": {"Rss": 2048}, "vm_flags": []},
    ]  # fmt: skip
    areas = areas_from_smaps(rows, [(RAM_HVA, RAM_HVA + 2 * MIB)])
    assert areas == (VmmArea(0x1000, 0x2000, 4096, "anon"),)
    assert VmHosting("vm0", vmm_areas=areas).vmm_rss_pages == 1


def _scans(hosting: VmHosting | None, epochs: int = 40, **vm_kw: object) -> pl.DataFrame:
    reg = region(size_bytes=256 * MIB, hva_start=RAM_HVA, **vm_kw)  # type: ignore[arg-type]
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0]))
    acc = accesses_frame(every_epoch("vm0", epochs, 0, 0, GUEST_PAGES))
    params = ReplayParams(hosting=(hosting,) if hosting else ())
    return replay_frames(vms, acc, ["linux-6.18"], params).scans


def test_vmm_areas_use_the_scan_budget_before_guest_ram() -> None:
    # kernel/sched/fair.c task_numa_work(): a 24 MiB anon VMA of the VMM below guest RAM has
    # PTEs to change, so it takes 6144 of the 65536 pages of budget; the guest chunk is then
    # ALIGN(start + 59392 pages, 2 MiB) = 232 MiB. The next work item finishes the guest
    # (24 MiB = 6144 pages), reaches the last VMA and wraps (numa_scan_seq++).
    area = VmmArea(RAM_HVA - 64 * MIB, 24 * MIB, 1 * MIB, "anon")
    scans = _scans(VmHosting("vm0", vmm_areas=(area,)))
    sizes = (scans["gfn_end"] - scans["gfn_start"]).to_list()
    assert sizes[:3] == [59392, 6144, 59392]
    # guest RAM alone: every work item covers all 256 MiB
    plain = _scans(None)
    assert (plain["gfn_end"] - plain["gfn_start"]).to_list()[:2] == [GUEST_PAGES] * 2
    # an unpopulated or skipped VMM area changes nothing and costs no budget
    for idle in (VmmArea(RAM_HVA - 64 * MIB, 24 * MIB, 0, "anon"),
                 VmmArea(RAM_HVA - 64 * MIB, 24 * MIB, MIB, "file_ro")):  # fmt: skip
        got = _scans(VmHosting("vm0", vmm_areas=(idle,)))
        assert (got["gfn_end"] - got["gfn_start"]).to_list()[0] == GUEST_PAGES


def test_scan_windows_count_the_whole_mm_rss() -> None:
    # task_nr_scan_windows(): get_mm_rss() = 256 MiB guest + 40 MiB of the VMM -> 2 windows
    # of 256 MB: task_scan_min = max(1000 / (2560/256), 1000 / 2) = 500 ms,
    # task_scan_max = max(500, 60000 / 2) = 30000 ms (guest alone: 1 window, 1000 / 60000)
    from pipeline.replay.scanner import Scanner

    class _Vm:
        rss_pages = GUEST_PAGES

    s = Scanner.__new__(Scanner)
    s.vm = _Vm()  # type: ignore[assignment]
    s.scan_size_mb, s.period_min, s.period_max = 256, 1000, 60000
    s.vmm_rss_pages = 0
    assert (s.task_scan_min(), s.task_scan_max()) == (1000, 60000)
    s.vmm_rss_pages = (40 * MIB) >> 12
    assert (s.task_scan_min(), s.task_scan_max()) == (500, 30000)


def test_vcpu_runtime_is_its_cpu_share_of_the_epoch() -> None:
    # task_tick_numa(): se.sum_exec_runtime > node_stamp (2 ticks = 8 ms) + period (1000 ms).
    # Share 1.0: 100 ms per epoch -> 1100 > 1008 after 11 epochs: first scan at t = 1100 ms.
    # Share 0.25: 25 ms per epoch -> 1025 > 1008 after 41 epochs: t = 4100 ms.
    assert _scans(None, epochs=12)["t_ms"].to_list()[0] == 1100
    quarter = _scans(VmHosting("vm0", vcpu_cpu_share=(0.25,)), epochs=45)
    assert quarter["t_ms"].to_list()[0] == 4100


def test_resched_yields_from_zap_length_and_host_load() -> None:
    # EEVDF base slice 0.75 ms x (1 + ilog2(2 CPUs)) = 1.5 ms, but need_resched() is set at a
    # tick (4 ms at HZ=250), so a slice lasts 4 ms. The work starts at a fresh slice (the
    # tick that queued it also ended the slice), so a zap of 65536 SPTEs at 100 ns (6.5536 ms
    # of walk) yields (6.5536 - 4) / 4 = 0.6384 times with a competitor always there.
    assert sched_slice_ns(2) == 1_500_000
    assert sched_slice_ns(64) == 3_000_000  # the factor stops at 8 CPUs
    busy = ReschedModel(zap_ns_per_spte=100.0, host_runnable=2.0, host_cpus=2)
    assert busy.slice_ns == TICK_NS == 4_000_000
    assert busy.extra_flushes(65536) == pytest.approx((6.5536e6 - 4e6) / 4e6)
    assert busy.extra_flushes(32768) == 0.0  # a walk shorter than a slice does not yield
    assert busy.extra_flushes(1) == 0.0
    half = ReschedModel(zap_ns_per_spte=100.0, host_runnable=0.5, host_cpus=2)
    assert half.extra_flushes(65536) == pytest.approx(0.5 * (6.5536e6 - 4e6) / 4e6)
    assert ReschedModel(host_runnable=0.0).extra_flushes(65536) == 0.0  # idle host
    # the walk that yields: shadow rmap zap from v6.12, TDP always; never the oracle
    assert busy.applies(POLICIES["linux-6.18"], "shadow")
    assert not busy.applies(POLICIES["linux-6.5"], "shadow")
    assert busy.applies(POLICIES["linux-6.5"], "tdp")
    oracle = next(p for p in POLICIES.values() if p.migrate_filter == "oracle")
    assert not busy.applies(oracle, "tdp")


def test_resched_yields_at_the_measured_preemption_rate() -> None:
    # ADR 0350: an idle host (host_runnable 0.05: 0.05 x 250 = 12.5 slice ends/s) whose vCPUs
    # are switched out 125 times per CPU second: 112.5/s are wake-ups, which can come at any
    # moment. A zap of 32768 SPTEs at 100 ns walks 3.2768 ms: 112.5 x 3.2768e-3 yields.
    idle = ReschedModel(zap_ns_per_spte=100.0, host_runnable=0.05, preempt_per_s=125.0)
    assert idle.wakeups_per_s == pytest.approx(112.5)
    assert idle.extra_flushes(32768) == pytest.approx(112.5 * 3.2768e-3)
    assert idle.applies(POLICIES["linux-6.18"], "shadow")
    # a loaded host (share 0.33: host_runnable 2): 300/s are mostly slice ends at ticks (250/s);
    # a walk shorter than a tick yields only to the 50/s of wake-ups
    loaded = ReschedModel(zap_ns_per_spte=55.0, host_runnable=2.0, preempt_per_s=300.0)
    assert loaded.wakeups_per_s == pytest.approx(50.0)
    assert loaded.extra_flushes(32768) == pytest.approx(50 * 32768 * 55e-9)
    assert not ReschedModel(preempt_per_s=0.0).applies(POLICIES["linux-6.18"], "tdp")
    # VmHosting carries it into the model
    host = VmHosting("vm0", preempt_per_s=125.0, zap_ns_per_spte=80.0)
    model = ReschedModel().for_host(host)
    assert model.preempt_per_s == 125.0 and model.zap_ns_per_spte == 80.0
    assert ReschedModel().for_host(VmHosting("vm0")).preempt_per_s is None


def test_resched_yields_flush_in_the_engine_under_preempt_none() -> None:
    # pinned 4K anon RAM on the shadow MMU, v6.18, preempt=none (no contention term): the
    # first scan (t = 1100 ms) zaps all 65536 SPTEs. At 200 ns per SPTE the walk takes
    # 13.1 ms: (13.1072 - 4) / 4 = 2.28 slice-end yields -> 1 + floor(2.28) = 3 flushes
    reg = region(size_bytes=256 * MIB, hva_start=RAM_HVA, pinned="all")
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0], mmu="shadow", preempt="none"))
    acc = accesses_frame(every_epoch("vm0", 12, 0, 0, GUEST_PAGES))
    host = VmHosting("vm0", host_runnable=2.0, zap_ns_per_spte=200.0, host_cpus=2)
    for hosting, flushes in (((), 1), ((host,), 3)):
        ep = replay_frames(vms, acc, ["linux-6.18"], ReplayParams(hosting=hosting)).epochs
        assert int(ep["spte_zapped"].sum()) == GUEST_PAGES
        assert int(ep["remote_tlb_flushes"].sum()) == flushes


def test_runtime_before_the_replay_brings_the_first_scan_forward() -> None:
    # vCPU runtime 600 ms when numa_balancing goes on: 600 + 100 k > 1008 after k = 5 epochs
    # (t = 500 ms); mm->numa_next_scan = 1000 - 600 = 400 ms is already past then
    got = _scans(VmHosting("vm0", vcpu_runtime_start_ms=(600.0,)), epochs=8)
    assert got["t_ms"].to_list()[0] == 500
    # a thread that ran for longer than scan_delay: first tick at once (t = 100 ms)
    early = _scans(VmHosting("vm0", vcpu_runtime_start_ms=(5000.0,)), epochs=3)
    assert early["t_ms"].to_list()[0] == 100


def test_node_stamp_pays_32_times_the_scan_cpu_time() -> None:
    # kernel/sched/fair.c task_numa_work() (ADR 0350): the winner's node_stamp += 2 ticks at
    # the cmpxchg and += 32 x the work's CPU time at the end. One vCPU (share 1.0, CLONE_VM
    # node_stamp 8 ms) scans 65536 4K SPTEs at t = 1100 ms: node_stamp = 1008 + 8 + 32 x
    # 65536 x 180 ns = 1393.5 ms, so the next crossing of node_stamp + 1000 ms of runtime is
    # in the epoch ending at 2400 ms; without the cost term it is 2016 ms -> 2100 ms.
    reg = region(size_bytes=256 * MIB, hva_start=RAM_HVA)
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0]))
    acc = accesses_frame(every_epoch("vm0", 30, 0, 0, GUEST_PAGES))
    assert NumaWorkCost().node_stamp_delay_ms(65536, 0, 0) == pytest.approx(377.487, abs=1e-3)
    times = {}
    for name, cost in (("free", NumaWorkCost(0.0, 0.0, 0.0)), ("lab", NumaWorkCost())):
        scans = replay_frames(vms, acc, ["linux-6.18"], ReplayParams(work_cost=cost)).scans
        times[name] = scans["t_ms"].to_list()[:2]
    assert times == {"free": [1100, 2100], "lab": [1100, 2400]}
    # a capture's own measurement replaces the default
    host = VmHosting("vm0", scan_ns_per_spte_4k=90.0, scan_ns_per_spte_2m=700.0)
    assert NumaWorkCost().for_host(host) == NumaWorkCost(90.0, 700.0, 100.0)


def test_the_thread_that_crossed_first_in_the_epoch_scans() -> None:
    # kernel/sched/fair.c task_tick_numa(): each thread queues its work when its runtime
    # passes node_stamp + period, at its next tick; the first one wins the cmpxchg on
    # numa_next_scan. Both vCPUs (node_stamp 8 ms, period 1000 ms) pass 1008 ms of runtime
    # in the epoch [1000, 1100) ms: vCPU 1, which had run 5 ms before the replay, at 1003 ms,
    # vCPU 0 at 1008 ms. vCPU 1 scans although the rotating order puts vCPU 0 first there.
    from pipeline.replay.engine import _crossing_ms
    from pipeline.replay.scanner import TaskNuma

    half = GUEST_PAGES // 2
    reg = region(size_bytes=256 * MIB, hva_start=RAM_HVA)
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0, 0]))
    acc = accesses_frame(every_epoch("vm0", 20, 0, 0, half) + every_epoch("vm0", 20, 1, half, half))
    host = VmHosting("vm0", vcpu_runtime_start_ms=(0.0, 5.0))
    scans = replay_frames(vms, acc, ["linux-6.18"], ReplayParams(hosting=(host,))).scans
    assert (scans["t_ms"][0], scans["vcpu"][0]) == (1100, 1)
    task = TaskNuma(index=0, pid=1, node=0, nodes=1, runtime_ms=1050.0, node_stamp_ms=8.0)
    task.numa_scan_period = 1000
    assert _crossing_ms(task, 100.0, 100) == pytest.approx(58.0)  # 950 + 58 = 1008
    task.runtime_ms = 1200.0
    assert _crossing_ms(task, 100.0, 100) == 0.0  # already past at the epoch start
    task.runtime_ms = 1000.0
    assert _crossing_ms(task, 100.0, 100) == float("inf")


def test_other_vcpus_rseq_fault_before_the_wrap_leaves_their_period() -> None:
    # 1 GiB pinned 4K, two vCPUs at 8.5% of a CPU, their stacks below guest RAM. vCPU 0 wins
    # the first task_numa_work() and walks the whole mm (~50 ms of CPU, ~550 ms of wall time
    # at its share), wrapping at the end (numa_scan_seq 0 -> 1). vCPU 1's rseq write faults on
    # its PROT_NONE stack at its next return to guest mode (1000 / (400 x 0.085) = 29 ms):
    # before the wrap, so task_numa_placement() still sees p->numa_scan_seq ==
    # mm->numa_scan_seq and update_task_scan_period() does not run (kernel/sched/fair.c,
    # v6.18). Its numa_scan_period stays scan_delay (1000). Without a measured preemption
    # rate the fault is taken after the item, as on an idle host: the period doubles (no
    # local faults yet), 2000. The scanning thread's own fault is after its item either way.
    ram = RAM_HVA
    reg = region(size_bytes=1 << 30, hva_start=ram, pinned="all")
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0, 0], host_nodes=1))
    half = 1 << 17
    acc = accesses_frame(every_epoch("vm0", 10, 0, 0, half) + every_epoch("vm0", 10, 1, half, half))
    stacks = (
        VmmArea(ram - 64 * MIB, 8 * MIB, 64 * 1024, "anon", tls_vcpu=0),
        VmmArea(ram - 32 * MIB, 8 * MIB, 64 * 1024, "anon", tls_vcpu=1),
    )
    periods = {}
    for rate in (None, 400.0):
        hosting = VmHosting(
            "vm0",
            vcpu_cpu_share=(0.085, 0.085),
            vmm_areas=stacks,
            preempt_per_s=rate,
            vcpu_runtime_start_ms=(2191.0, 1774.0),
        )
        out = replay_frames(vms, acc, ["linux-6.18"], ReplayParams(hosting=(hosting,)))
        assert out.scans.row(0, named=True)["vcpu"] == 0
        first = out.vcpu_epochs.filter(pl.col("epoch") == 0).sort("vcpu")
        periods[rate] = first["scan_period_ms"].to_list()
    assert periods == {None: [2000, 2000], 400.0: [2000, 1000]}
