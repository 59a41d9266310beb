"""KVM specifics: the yield term, the shadow MMU (kvm_pvm) prefetch, page-size attribution."""

from __future__ import annotations

import polars as pl

from pipeline.replay.kvm import YieldModel
from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import ReplayParams, replay_frames
from tests.replay.conftest import MIB, accesses_frame, every_epoch, region, vm_row, vms_frame


def totals(frame: pl.DataFrame, *cols: str) -> dict[str, int]:
    return {c: int(frame[c].sum()) for c in cols}


def test_yield_rate_by_version_and_preempt() -> None:
    y = YieldModel()
    assert y.rate(POLICIES["linux-6.5"], "full") == 64.0
    assert y.rate(POLICIES["linux-6.5"], "voluntary") == 64.0  # PREEMPT_DYNAMIC before c793a62823d1
    assert YieldModel(preempt_dynamic=False).rate(POLICIES["linux-6.5"], "voluntary") == 0.0
    assert y.rate(POLICIES["linux-6.18"], "voluntary") == 0.0  # after c793a62823d1
    assert y.rate(POLICIES["linux-6.18"], "full") == 64.0 * 0.02  # d02c357e5bfa
    assert y.rate(POLICIES["oracle"], "full") == 0.0


def test_yields_need_other_vcpus_in_the_range() -> None:
    # P4 scenario (pinned 4K, 8 MiB) but both vCPUs touch it: the scan by one vCPU zaps the
    # range while the other faults in it -> F = 1 + Y = 1 + 64 on v6.5 with preempt=full
    reg = region(size_bytes=8 * MIB, pinned="all")
    vms = vms_frame(vm_row(regions=[reg], preempt="full"))
    acc = accesses_frame(every_epoch("vm0", 12, 0, 0, 2048) + every_epoch("vm0", 12, 1, 0, 2048))
    out = replay_frames(vms, acc, ["linux-6.5"])
    t = totals(out.epochs, "remote_tlb_flushes", "shootdown_ipis", "mmu_notifier_invalidations")
    assert t["mmu_notifier_invalidations"] == 1
    assert t["remote_tlb_flushes"] == 65
    assert t["shootdown_ipis"] == 65  # the other vCPU was in guest mode
    quiet = replay_frames(
        vms, acc, ["linux-6.5"], ReplayParams(yields=YieldModel(per_vcpu=0.0))
    ).epochs
    assert int(quiet["remote_tlb_flushes"].sum()) == 1


def test_shadow_mmu_prefetches_eight_sptes_per_refault() -> None:
    # pinned 4K, the notifier zaps all 2048 SPTEs; on a shadow MMU one refault maps the
    # aligned block of 8 (direct_pte_prefetch), so 2048 / 8 = 256 refaults
    reg = region(size_bytes=8 * MIB, pinned="all")
    acc = accesses_frame(every_epoch("vm0", 12, 0, 0, 2048))
    tdp = replay_frames(vms_frame(vm_row(regions=[reg])), acc, ["linux-6.5"]).epochs
    shadow = replay_frames(
        vms_frame(vm_row(regions=[reg], mmu="shadow")), acc, ["linux-6.5"]
    ).epochs
    assert totals(tdp, "ept_violations")["ept_violations"] == 2048
    assert totals(shadow, "ept_violations")["ept_violations"] == 256
    assert totals(shadow, "spte_zapped")["spte_zapped"] == 2048


def test_shadow_mmu_maps_thp_with_4k_sptes() -> None:
    reg = region(size_bytes=8 * MIB, thp=True, pinned="all")
    acc = accesses_frame(every_epoch("vm0", 12, 0, 0, 2048))
    out = replay_frames(vms_frame(vm_row(regions=[reg], mmu="shadow")), acc, ["linux-7.1"])
    by = dict(out.epochs.group_by("page_size").agg(pl.col("spte_zapped").sum()).iter_rows())
    assert by.get("4K") == 2048
    assert by.get("2M", 0) == 0
    # range-level events go to the region's page size (THP region: 2M)
    inv = dict(
        out.epochs.group_by("page_size").agg(pl.col("mmu_notifier_invalidations").sum()).iter_rows()
    )
    assert inv.get("2M") == 1


def test_first_touch_is_not_an_ept_violation() -> None:
    reg = region(size_bytes=8 * MIB, placement="first-touch")
    acc = accesses_frame(every_epoch("vm0", 3, 0, 0, 2048))
    out = replay_frames(vms_frame(vm_row(regions=[reg])), acc, ["linux-6.5"])
    assert int(out.epochs["ept_violations"].sum()) == 0
    assert int(out.vcpu_epochs["spte_faultins"].sum()) == 2048
