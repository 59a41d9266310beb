"""task_numa_work model: budgets, chunks, VMA skips, PID filter, adaptive period (KERNEL.md §3)."""

from __future__ import annotations

import polars as pl

from pipeline.replay.runner import replay_frames
from pipeline.replay.scanner import hash_32
from tests.replay.conftest import (
    GIB,
    MIB,
    accesses_frame,
    empty_run,
    every_epoch,
    region,
    totals,
    vm_row,
    vms_frame,
)


def test_hash_32_matches_include_linux_hash_h() -> None:
    # hash_32(val, bits) = (val * GOLDEN_RATIO_32) >> (32 - bits), 32-bit arithmetic
    assert hash_32(1, 6) == 0x61C88647 >> 26
    assert hash_32(4242, 6) == ((4242 * 0x61C88647) & 0xFFFFFFFF) >> 26


def scans_of(
    reg: dict,
    policy: str,
    epochs: int,
    toucher: int = 0,
    nr_pages: int | None = None,
    **vm_kw: object,
) -> pl.DataFrame:
    nr = nr_pages if nr_pages is not None else reg["size_bytes"] >> 12
    vms = vms_frame(vm_row(regions=[reg], **vm_kw))  # type: ignore[arg-type]
    acc = accesses_frame(every_epoch("vm0", epochs, toucher, 0, nr))
    return replay_frames(vms, acc, [policy]).scans


def test_unproductive_chunks_walk_the_8x_virtual_budget() -> None:
    # 4 GiB fully pinned 4K under v7.1: no chunk changes a PTE, so the 256 MB page budget is
    # never used and one work item walks 8 chunks = 2 GiB (524288 pages), one notifier each.
    scans = scans_of(region(size_bytes=4 * GIB, pinned="all"), "linux-7.1", 12)
    first = scans.row(0, named=True)
    assert (first["chunks"], first["notifiers"], first["virt_pages"]) == (8, 8, 524288)
    assert first["nr_pte_updates"] == 0
    assert first["gfn_end"] - first["gfn_start"] == 524288


def test_productive_chunk_uses_the_page_budget() -> None:
    # pinned THPs get PROT_NONE in v6.5: the first 256 MB chunk changes 65536 pages and ends
    # the work item
    scans = scans_of(region(size_bytes=4 * GIB, thp=True, pinned="all"), "linux-6.5", 12)
    first = scans.row(0, named=True)
    assert (first["chunks"], first["virt_pages"], first["nr_pte_updates"]) == (1, 65536, 65536)


def test_v65_pid_filter_stops_scanning_a_vma_without_hinting_faults() -> None:
    # 512 MiB fully pinned 4K: no hinting fault ever sets a PID bit. v6.5 scans it while
    # numa_scan_seq < 2 (two passes), then skips it; v6.7+ keeps scanning (forced scans).
    reg = region(size_bytes=512 * MIB, pinned="all")
    v65 = scans_of(reg, "linux-6.5", 80)
    v71 = scans_of(reg, "linux-7.1", 80)
    assert v65["numa_scan_seq"].max() <= 2
    assert v65.height <= 2
    assert v71.height > v65.height


def test_hugetlbfs_and_shmem_without_mof_are_never_scanned() -> None:
    for backing, mof in (("hugetlbfs", False), ("shared", False)):
        reg = region(size_bytes=64 * MIB, backing=backing, mof_policy=mof)
        assert scans_of(reg, "linux-6.5", 30).height == 0
    reg = region(size_bytes=64 * MIB, backing="shared", mof_policy=True)
    assert scans_of(reg, "linux-6.5", 30).height > 0


def test_migration_failure_makes_the_period_stick_at_max() -> None:
    # Pinned THPs on node 0 touched from node 1: every hinting fault's migration fails
    # (TNF_MIGRATE_FAIL), so update_task_scan_period() doubles and stays at
    # numa_scan_period_max (RSS 64 MiB -> 1 window -> max = 60000 ms).
    reg = region(size_bytes=64 * MIB, thp=True, pinned="all")
    vms = vms_frame(vm_row(regions=[reg], scan_period_max_ms=8000))
    acc = accesses_frame(every_epoch("vm0", 400, 1, 0, 64 * 256))
    out = replay_frames(vms, acc, ["linux-6.5", "linux-7.1"])
    per = out.vcpu_epochs.filter(pl.col("vcpu") == 1).sort("epoch")
    base = per.filter(pl.col("policy") == "linux-6.5")["scan_period_ms"]
    assert base[-1] == 8000  # doubled to the max and stuck there
    new = per.filter(pl.col("policy") == "linux-7.1")["scan_period_ms"]
    assert new[-1] == 1000  # no faults: never adapts, stays at task_scan_start


def test_task_scan_bounds_follow_rss() -> None:
    # KERNEL.md §3.2 example: 64 GiB RSS -> 256 windows -> min 100 ms, max 60000/256 = 234 ms
    from pipeline.replay.scanner import Scanner

    class _Vm:
        rss_pages = 64 * GIB // 4096

    s = Scanner.__new__(Scanner)
    s.vm = _Vm()  # type: ignore[assignment]
    s.vmm_rss_pages = 0
    s.scan_size_mb, s.period_min, s.period_max = 256, 1000, 60000
    assert (s.task_scan_min(), s.task_scan_max()) == (100, 234)


def test_numa_balancing_off_means_no_scan_and_tiering_only_protects_nothing() -> None:
    reg = region(size_bytes=64 * MIB)
    row = vm_row(regions=[reg])
    acc = accesses_frame(every_epoch("vm0", 30, 1, 0, 64 * 256))
    off = replay_frames(vms_frame({**row, "numa_balancing": 0}), acc, ["linux-6.5"])
    assert off.scans.height == 0
    assert int(off.epochs["mmu_notifier_invalidations"].sum()) == 0
    # MEMORY_TIERING only (2): every node is toptier, change_pte_range() skips every page,
    # but the notifier is still sent before the checks
    tier = replay_frames(vms_frame({**row, "numa_balancing": 2}), acc, ["linux-6.5"])
    assert tier.scans.height > 0
    assert int(tier.epochs["numa_pte_updates"].sum()) == 0
    assert int(tier.epochs["mmu_notifier_invalidations"].sum()) > 0


def test_notifier_per_pud_range_in_v65_per_chunk_from_v612() -> None:
    # scan_size_mb = 2048: one chunk covers the 2 GiB VMA, i.e. two 1 GiB PUD ranges. v6.5
    # sends one notifier per populated PUD range (change_pmd_range), v6.12+ one for the chunk
    # (change_pud_range, P4D range). Unpinned 4K pages touched from node 1: everything changes.
    reg = region(size_bytes=2 * GIB)
    kw = {"scan_size_mb": 2048}
    v65 = scans_of(reg, "linux-6.5", 12, toucher=1, **kw).row(0, named=True)
    v618 = scans_of(reg, "linux-6.18", 12, toucher=1, **kw).row(0, named=True)
    assert (v65["chunks"], v65["notifiers"]) == (1, 2)
    assert (v618["chunks"], v618["notifiers"]) == (1, 1)
    # only the second GiB touched (populated): one notifier in v6.5 too, over that PUD only
    vms = vms_frame(vm_row(regions=[reg], scan_size_mb=2048))
    acc = accesses_frame(every_epoch("vm0", 12, 1, 262144, 262144))
    out = replay_frames(vms, acc, ["linux-6.5"])
    assert out.scans.row(0, named=True)["notifiers"] == 1
    assert int(out.epochs["notifier_bytes"].sum()) >= GIB
    first = out.epochs.filter(pl.col("mmu_notifier_invalidations") > 0).row(0, named=True)
    assert first["notifier_bytes"] == GIB


def test_real_host_observation_pinned_4k_walks_the_whole_guest() -> None:
    # KERNEL.md §10a (Linux 6.18 host, 1 GiB guest, pinned private 4K): nothing becomes
    # PROT_NONE, no chunk uses the page budget, so one work item walks the whole guest:
    # 4 chunks of 256 MB, one notifier each, and KVM zaps the touched SPTEs every time
    scans = scans_of(region(size_bytes=GIB, pinned="all"), "linux-6.18", 12)
    first = scans.row(0, named=True)
    assert (first["chunks"], first["notifiers"], first["nr_pte_updates"]) == (4, 4, 0)
    assert first["virt_pages"] == 262144


def test_v612_pud_populated_by_a_neighbour_region_sends_the_notifier() -> None:
    """Two 8 MiB 4K regions in one 1 GiB hva block: `a` (lower hva, never touched) and `b`
    (touched by vCPU 0 in every epoch). The scan at the end of epoch 10 walks `a` then `b`.
    v6.12+ change_pud_range(): the PUD's PMD table exists because `b` is populated, so `a`'s
    empty chunk still gets a notifier (nothing to zap, no flush): 2 notifiers, 1 flush.
    v6.5 change_pmd_range(): per PMD, `a` has no non-none PMD: 1 notifier."""
    a = region("a", size_bytes=8 * MIB, placement="first-touch")
    b = region(
        "b",
        size_bytes=8 * MIB,
        gpa_start=8 * MIB,
        hva_start=0x7F0000000000 + 8 * MIB,
        placement="first-touch",
    )
    vms = vms_frame(vm_row(regions=[a, b]))
    acc = accesses_frame(every_epoch("vm0", 12, 0, 2048, 2048))
    out = replay_frames(vms, acc, ["linux-6.5", "linux-7.1"]).epochs
    t = {
        p: totals(out, p, "mmu_notifier_invalidations", "remote_tlb_flushes", "spte_zapped")
        for p in ("linux-6.5", "linux-7.1")
    }
    assert t["linux-7.1"] == {
        "mmu_notifier_invalidations": 2,
        "remote_tlb_flushes": 1,
        "spte_zapped": 2048,
    }
    assert t["linux-6.5"]["mmu_notifier_invalidations"] == 1


def test_forced_scan_of_an_inactive_vma_counts_every_qemu_thread() -> None:
    """v6.12+ vma_is_accessed() condition (4): numa_scan_seq > prev_scan_seq +
    get_nr_threads(current). get_nr_threads() counts every QEMU thread: 2 vCPUs + 8 others
    (ReplayParams.vmm_threads) = 10. With seq 20, prev_scan_seq 10 and no PID hit: 20 > 20
    is false (counting only the 2 modelled vCPUs it was 20 > 12, true); seq 21 > 20 is true."""
    from pipeline.replay.scanner import VmaNumab
    from pipeline.replay.state import vm_config

    cfg = vm_config(vms_frame(vm_row(regions=[region(size_bytes=8 * MIB)])).to_dicts()[0])
    knobs = {
        "scan_delay_ms": 1000,
        "scan_period_min_ms": 1000,
        "scan_period_max_ms": 60000,
        "scan_size_mb": 256,
    }
    run = empty_run(cfg, "linux-7.1", knobs, 1)
    sc = run.scanner
    assert sc.nr_threads == 10
    numab = VmaNumab(
        next_scan_ms=0, pid_reset_ms=0, pids_active=[0, 0], start_scan_seq=0, prev_scan_seq=10
    )
    reg, task = cfg.regions[0], run.tasks[0]
    sc.numa_scan_seq = 20
    assert not sc._vma_is_accessed(reg, numab, task)
    sc.numa_scan_seq = 21
    assert sc._vma_is_accessed(reg, numab, task)


def test_mempolicy_decides_scanning_by_vma_policy_mof() -> None:
    """mm/mempolicy.c vma_policy_mof() (KERNEL.md §3.6): only MPOL_F_MOF is scanned: anon
    without a policy (the task's preferred_node_policy has it), and any VMA under
    MPOL_BIND|MPOL_F_NUMA_BALANCING; a plain bind, preferred or interleave VMA never is, anon
    or shared, and shmem without a policy never is."""
    scanned = {}
    for backing in ("anon", "shared"):
        for policy in ("default", "bind", "bind+numa_balancing", "preferred", "interleave"):
            reg = region(size_bytes=64 * MIB, backing=backing, mempolicy=policy)
            scanned[backing, policy] = scans_of(reg, "linux-6.18", 30).height > 0
    assert scanned == {
        ("anon", "default"): True,
        ("anon", "bind"): False,  # Sean Christopherson's workaround
        ("anon", "bind+numa_balancing"): True,
        ("anon", "preferred"): False,
        ("anon", "interleave"): False,
        ("shared", "default"): False,
        ("shared", "bind"): False,
        ("shared", "bind+numa_balancing"): True,
        ("shared", "preferred"): False,
        ("shared", "interleave"): False,
    }
    # mof_policy = true (the key before mempolicy) is bind+numa_balancing, for anon too
    assert scans_of(region(size_bytes=64 * MIB, mof_policy=True), "linux-6.18", 30).height > 0


def test_guest_larger_than_scan_size_walks_in_budget_sized_work_items() -> None:
    # kernel/sched/fair.c task_numa_work() (v6.18), a 4 GiB + 100 MiB guest at scan_size_mb
    # 256, every chunk productive (the vCPU touches all its RAM every epoch):
    # - the VMM's scanned VMA before guest RAM (24 MiB populated) spends 6144 of the 65536
    #   pages; its shared_ro VMA (file_ro) is skipped and spends nothing: the first guest chunk
    #   ends at ALIGN(start + 59392 pages, HPAGE_SIZE) = 232 MiB;
    # - numa_scan_offset is kept between work items: each later item starts where the last
    #   stopped and covers one full budget (256 MiB), until
    # - the partial chunk at the end of the VMA (min(end, vm_end): 124 MiB), after which the
    #   walk finds no VMA: reset_ptenuma_scan(), numa_scan_seq 0 -> 1, offset 0, and the item
    #   ends there (the next one starts again at the VMM's VMA and guest RAM's 0..232 MiB).
    from pipeline.model.hosting import VmHosting, VmmArea
    from pipeline.replay.params import ReplayParams

    ram = 0x7F0000000000
    size = 4 * GIB + 100 * MIB
    reg = region(size_bytes=size, hva_start=ram)
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0], host_nodes=1))
    acc = accesses_frame(every_epoch("vm0", 300, 0, 0, size >> 12))
    areas = (
        VmmArea(ram - 64 * MIB, 24 * MIB, 24 * MIB, "anon"),
        VmmArea(ram - 32 * MIB, 16 * MIB, 16 * MIB, "file_ro"),
    )
    params = ReplayParams(hosting=(VmHosting("vm0", vmm_areas=areas),))
    scans = replay_frames(vms, acc, ["linux-6.18"], params).scans
    mib = 256  # 4 KiB pages per MiB
    got = [
        (r["gfn_start"] // mib, r["gfn_end"] // mib, r["numa_scan_seq"], r["nr_pte_updates"])
        for r in scans.head(19).iter_rows(named=True)
    ]
    middle = [(232 + 256 * i, 488 + 256 * i, 0, 65536) for i in range(15)]
    assert got == [(0, 232, 0, 59392), *middle, (4072, 4196, 1, 124 * mib), (0, 232, 1, 59392),
                   (232, 488, 1, 65536)]  # fmt: skip
    assert (scans["chunks"].head(19) == 1).all()
