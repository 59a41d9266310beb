"""KVM specifics: the yield term, the shadow MMU (kvm_pvm) prefetch, page-size attribution."""

from __future__ import annotations

import polars as pl

from pipeline.replay.kvm import YieldModel
from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import ReplayParams, replay_frames
from tests.replay.conftest import MIB, accesses_frame, every_epoch, region, vm_row, vms_frame

FLUSH_COLS = ("remote_tlb_flushes", "shootdown_ipis", "mmu_notifier_invalidations", "spte_zapped")


def totals(frame: pl.DataFrame, *cols: str) -> dict[str, int]:
    return {c: int(frame[c].sum()) for c in cols}


def test_yield_factor_by_version_preempt_and_mmu() -> None:
    y = YieldModel()
    assert y.factor(POLICIES["linux-6.5"], "full") == 1.0
    assert y.factor(POLICIES["linux-6.5"], "voluntary") == 1.0  # PREEMPT_DYNAMIC, < c793a62823d1
    assert YieldModel(preempt_dynamic=False).factor(POLICIES["linux-6.5"], "voluntary") == 0.0
    assert y.factor(POLICIES["linux-6.18"], "voluntary") == 0.0  # after c793a62823d1
    assert y.factor(POLICIES["linux-6.18"], "full") == 0.0  # d02c357e5bfa: no lock-step retry
    assert y.factor(POLICIES["oracle"], "full") == 0.0
    # shadow MMU: v6.5 kvm_handle_gfn_range(kvm_zap_rmap) never yields (review finding 5)
    assert y.factor(POLICIES["linux-6.5"], "full", "shadow") == 0.0
    assert (
        YieldModel(d02c357e5bfa_factor=0.5).factor(POLICIES["linux-7.1"], "full", "shadow") == 0.5
    )


def test_extra_flushes_lock_step_model() -> None:
    y = YieldModel()
    assert y.extra_flushes(1, 7) == 0.0  # one-entry zap: nothing pending at a yield
    assert y.extra_flushes(2048, 0) == 0.0  # nobody contends
    assert y.extra_flushes(2048, 1) == 2047 / 2  # caught after half the zap on average
    assert y.extra_flushes(2048, 3) == 2047 * 3 / 4
    assert YieldModel(per_vcpu=64.0).extra_flushes(2048, 3) == 192.0  # cap per caught vCPU


def test_yields_need_other_vcpus_in_the_range() -> None:
    # P4 scenario (pinned 4K, 8 MiB) but both vCPUs touch it: the scan (by one vCPU, at the
    # end of epoch 10) zaps the 2048 present SPTEs while the other vCPU faults in the range:
    # n = 1, Y = (2048 - 1) * 1/2 = 1023.5 -> 1023 whole flushes (0.5 carried, never reached
    # again), F = 1 + 1023 on v6.5 with preempt=full (the expected-value mode)
    reg = region(size_bytes=8 * MIB, pinned="all")
    vms = vms_frame(vm_row(regions=[reg], preempt="full"))
    acc = accesses_frame(every_epoch("vm0", 12, 0, 0, 2048) + every_epoch("vm0", 12, 1, 0, 2048))
    expected = ReplayParams(yields=YieldModel(mode="expected"))
    out = replay_frames(vms, acc, ["linux-6.5", "rfc-v2", "linux-7.1"], expected)
    ep = out.epochs
    base = totals(ep.filter(pl.col("policy") == "linux-6.5"), *FLUSH_COLS)
    assert base["mmu_notifier_invalidations"] == 1
    assert base["spte_zapped"] == 2048
    assert base["remote_tlb_flushes"] == 1024
    assert base["shootdown_ipis"] == 1024  # the other vCPU was in guest mode
    # rfc-v2: pinned anon is skipped by patch 2, the NUMA range is not zapped: no flush
    assert totals(ep.filter(pl.col("policy") == "rfc-v2"), *FLUSH_COLS)["remote_tlb_flushes"] == 0
    # v7.1 (d02c357e5bfa): the caught vCPU retries before mmu_lock: F = 1
    assert (
        totals(ep.filter(pl.col("policy") == "linux-7.1"), *FLUSH_COLS)["remote_tlb_flushes"] == 1
    )
    capped = replay_frames(
        vms, acc, ["linux-6.5"], ReplayParams(yields=YieldModel(per_vcpu=0.0, mode="expected"))
    ).epochs
    assert int(capped["remote_tlb_flushes"].sum()) == 1
    # the same cap holds for the process (the default)
    capped = replay_frames(
        vms, acc, ["linux-6.5"], ReplayParams(yields=YieldModel(per_vcpu=0.0)), seed=3
    ).epochs
    assert int(capped["remote_tlb_flushes"].sum()) == 1
    # shadow MMU on v6.5: the rmap zap never yields, F = 1 (review finding 5)
    shadow = replay_frames(
        vms_frame(vm_row(regions=[reg], preempt="full", mmu="shadow")), acc, ["linux-6.5"]
    ).epochs
    assert int(shadow["spte_zapped"].sum()) == 2048
    assert int(shadow["remote_tlb_flushes"].sum()) == 1


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


def test_shadow_prefetch_breaks_at_the_first_unmappable_entry() -> None:
    """FNAME(pte_prefetch)(): the walk over the aligned block of 8 starts at the block start
    and breaks at the first entry prefetch_gpte() cannot map. Epoch 0, a 4K first-touch
    region on a shadow MMU: vCPU 0 touches gfns 0, 2, 4, 6. All four are populated by the
    touch; 1, 3, 5, 7 are not. Fault at 0: the walk skips 0 and breaks at 1 (not
    populated), so 2, 4 and 6 each take their own fault: 4 SPTE fault-ins. Touching all of
    0-7 instead: the fault at 0 prefetches 1-7: 1 fault-in."""
    reg = region(size_bytes=8 * MIB, placement="first-touch")
    vms = vms_frame(vm_row(regions=[reg], mmu="shadow"))
    sparse = accesses_frame([("vm0", 0, 0, g, 1) for g in (0, 2, 4, 6)])
    dense = accesses_frame([("vm0", 0, 0, 0, 8)])
    for acc, want in ((sparse, 4), (dense, 1)):
        out = replay_frames(vms, acc, ["linux-6.5"])
        assert int(out.vcpu_epochs["spte_faultins"].sum()) == want


def test_contention_process_is_seeded_and_bounded() -> None:
    # the scenario above with the default process (ADR 0370): one draw per zap, pinned per
    # seed; 1 <= F <= S; the same seed gives the same frames, other seeds other draws
    reg = region(size_bytes=8 * MIB, pinned="all")
    vms = vms_frame(vm_row(regions=[reg], preempt="full"))
    acc = accesses_frame(every_epoch("vm0", 12, 0, 0, 2048) + every_epoch("vm0", 12, 1, 0, 2048))

    def flushes(seed: int) -> int:
        ep = replay_frames(vms, acc, ["linux-6.5"], seed=seed).epochs
        return int(ep["remote_tlb_flushes"].sum())

    draws = [flushes(s) for s in range(6)]
    assert draws == [547, 2003, 509, 1632, 1110, 1349]  # pinned: seeds 0..5
    assert flushes(2) == draws[2]
    assert all(1 <= f <= 2048 for f in draws)
    assert len(set(draws)) > 1
    # v7.1 (d02c357e5bfa): no lock-step loop, whatever the seed
    ep = replay_frames(vms, acc, ["linux-7.1"], seed=4).epochs
    assert int(ep["remote_tlb_flushes"].sum()) == 1
