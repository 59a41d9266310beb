"""KERNEL.md §7, cell by cell: tiny hand-computed scenarios for every policy.

Every scenario: one VM, two vCPUs (vCPU 0 on node 0, vCPU 1 on node 1), one 8 MiB region
(4 PMDs, 2048 pages) placed on node 0, default knobs (scan_delay 1000 ms), epochs of 100 ms,
12 epochs, preempt=none. One vCPU touches every page in every epoch.

Timeline (same for all): epoch 0 first touch (SPTE fault-ins, not counted as EPT violations).
A vCPU thread starts with node_stamp = 2 ticks = 8 ms (init_numa_balancing() staggers CLONE_VM
threads) and numa_scan_period = scan_delay = 1000 ms. The toucher's runtime passes
node_stamp + period at the end of epoch 10 (1100 > 1008 ms) and now (1100) >= numa_next_scan
(1000), so it runs task_numa_work once: one 256 MB chunk clipped to the 8 MiB VMA. The next
scan would need runtime > 2008 ms (epoch 20): none. Epoch 11 refaults
what the scan zapped or protected. The scanning vCPU is the only one running, so no yields
(Y = 0: no other vCPU faults in the range) and no IPIs (shootdown_ipis = host_tlb_flush_ipis
= 0).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import replay_frames
from tests.replay.conftest import MIB, accesses_frame, every_epoch, region, vm_row, vms_frame

COLS = (
    "numa_pte_updates",
    "numa_huge_pte_updates",
    "numa_hint_faults",
    "numa_hint_faults_local",
    "numa_pages_migrated",
    "numa_migrate_failed",
    "mmu_notifier_invalidations",
    "kvm_unmap_gfn_range_calls",
    "spte_zapped",
    "remote_tlb_flushes",
    "host_tlb_flushes",
    "ept_violations",
)
NPAGES = 2048
ZERO = dict.fromkeys(COLS, 0)


def run(reg: dict[str, Any], toucher: int) -> pl.DataFrame:
    vms = vms_frame(vm_row(regions=[reg]))
    acc = accesses_frame(every_epoch("vm0", 12, toucher, 0, NPAGES))
    return replay_frames(vms, acc).epochs


def got(frame: pl.DataFrame, policy: str) -> dict[str, int]:
    sub = frame.filter(pl.col("policy") == policy)
    return {c: int(sub[c].sum()) for c in COLS}


def cell(**kw: int) -> dict[str, int]:
    return {**ZERO, **kw}


# -- P4: pinned, private anon, 4K ----------------------------------------------------------
# Scan: the notifier covers the populated chunk before the checks -> 1 invalidation, KVM zaps
# the 2048 present 4K SPTEs, 1 flush. change_pte_range(): COW + pinned -> skipped, nothing
# becomes PROT_NONE (no host flush). Epoch 11: 2048 plain refaults (GUP-fast), no hinting.
P4_ZAP = cell(
    mmu_notifier_invalidations=1,
    kvm_unmap_gfn_range_calls=1,
    spte_zapped=NPAGES,
    remote_tlb_flushes=1,
    ept_violations=NPAGES,
)
P4 = {
    "linux-6.5": P4_ZAP,
    "skip-pinned": P4_ZAP,
    "linux-6.18": P4_ZAP,
    "linux-7.1": P4_ZAP,
    # RFC v2: kvm_unmap_hva_range still fires, but the NUMA range is not zapped; nothing is
    # protected, so numa_protect is never called: no zap, no flush, no refault.
    "rfc-v2": cell(mmu_notifier_invalidations=1),
    # nothing will migrate / change: no notifier at all
    "oracle": ZERO,
    "notify-changed": ZERO,
}

# -- PT: pinned, private anon, PMD-mapped THP, touched from node 1 (misplaced) ------------
# Scan: 1 invalidation zaps 4 2M SPTEs, 1 flush. v6.5/v6.18: change_huge_pmd() has no pin
# check -> 4 PMDs PROT_NONE (2048 base pages, 4 huge), 1 host flush. Epoch 11: 4 EPT
# violations (2M) -> 4 hinting faults (remote); first fault (last_cpupid unset) -> misplaced
# -> pinned: migration fails after 10 passes, each a 2 MiB MMU_NOTIFY_CLEAR (40 invalidations,
# nothing left to zap) and a pmdp_invalidate() host flush (40). TNF_MIGRATE_FAIL: 2048 pages.
PT_BASE = cell(
    numa_pte_updates=NPAGES,
    numa_huge_pte_updates=4,
    numa_hint_faults=4,
    numa_migrate_failed=NPAGES,
    mmu_notifier_invalidations=41,
    kvm_unmap_gfn_range_calls=41,
    spte_zapped=4,
    remote_tlb_flushes=1,
    host_tlb_flushes=41,
    ept_violations=4,
)
# skip-pinned / v7.1: the PMD is skipped, but the notifier still zaps: 4 refaults, no hinting.
PT_SKIP = cell(
    mmu_notifier_invalidations=1,
    kvm_unmap_gfn_range_calls=1,
    spte_zapped=4,
    remote_tlb_flushes=1,
    ept_violations=4,
)
PT = {
    "linux-6.5": PT_BASE,
    "linux-6.18": PT_BASE,
    "skip-pinned": PT_SKIP,
    "linux-7.1": PT_SKIP,
    "rfc-v2": cell(mmu_notifier_invalidations=1),  # patch 2 skips anon pinned THPs
    "oracle": ZERO,
    "notify-changed": ZERO,
}

# -- S: pinned MAP_SHARED memfd, no MOF policy: vma_policy_mof() false, never scanned ------
S = dict.fromkeys(POLICIES, ZERO)

# -- S': pinned shared 4K with an MPOL_F_NUMA_BALANCING policy (scanned), from node 1 -----
# v6.5 / skip-pinned (COW-only) / v6.18: not a COW mapping -> all 2048 PTEs PROT_NONE, 1 host
# flush; notifier zaps 2048, 1 flush. Epoch 11: 2048 EPT violations + hinting faults, all
# misplaced, pinned. migrate_pages_batch(): a shared folio is not anon-exclusive, so
# try_to_migrate() unmaps it in the first unmap pass (ONE 4K CLEAR notifier, nothing left to
# zap); the move phase then fails at folio_migrate_mapping()'s refcount freeze (-EAGAIN) and
# only migrate_folio_move() is retried, without try_to_migrate(): 2048 notifiers, not 20480.
# No host flush (the PTE is PROT_NONE, not pte_accessible(): no deferred flush).
SP_BASE = cell(
    numa_pte_updates=NPAGES,
    numa_hint_faults=NPAGES,
    numa_migrate_failed=NPAGES,
    mmu_notifier_invalidations=1 + NPAGES,
    kvm_unmap_gfn_range_calls=1 + NPAGES,
    spte_zapped=NPAGES,
    remote_tlb_flushes=1,
    host_tlb_flushes=1,
    ept_violations=NPAGES,
)
SP = {
    "linux-6.5": SP_BASE,
    "skip-pinned": SP_BASE,
    "linux-6.18": SP_BASE,
    # RFC v2: shared is not anon -> protected; start handler null; numa_protect per protected
    # PTE: 2048 kvm_unmap_gfn_range calls, 2048 zaps, 2048 flushes (F_p). Faults as baseline.
    "rfc-v2": cell(
        numa_pte_updates=NPAGES,
        numa_hint_faults=NPAGES,
        numa_migrate_failed=NPAGES,
        mmu_notifier_invalidations=1 + NPAGES,
        kvm_unmap_gfn_range_calls=NPAGES + NPAGES,
        spte_zapped=NPAGES,
        remote_tlb_flushes=NPAGES,
        host_tlb_flushes=1,
        ept_violations=NPAGES,
    ),
    # v7.1: folio_maybe_dma_pinned() for any mapping -> skipped; the notifier still zaps.
    "linux-7.1": P4_ZAP,
    "oracle": ZERO,
    "notify-changed": ZERO,
}

# -- U: unpinned private anon 4K, touched from node 1 (misplaced) ------------------------
# Baseline: notifier zaps 2048 + 1 flush, 2048 PROT_NONE + 1 host flush. Epoch 11: 2048 EPT
# violations + hinting faults; first faults migrate (numa_scan_seq <= 4, last_cpupid unset):
# 2048 pages migrated, one 4K CLEAR notifier each (nothing to zap), no host flush.
U_BASE = cell(
    numa_pte_updates=NPAGES,
    numa_hint_faults=NPAGES,
    numa_pages_migrated=NPAGES,
    mmu_notifier_invalidations=1 + NPAGES,
    kvm_unmap_gfn_range_calls=1 + NPAGES,
    spte_zapped=NPAGES,
    remote_tlb_flushes=1,
    host_tlb_flushes=1,
    ept_violations=NPAGES,
)
U = {
    "linux-6.5": U_BASE,
    "skip-pinned": U_BASE,
    "linux-6.18": U_BASE,
    "linux-7.1": U_BASE,
    # the oracle and notify-changed send one batched notifier for the one changed sub-range
    "oracle": U_BASE,
    "notify-changed": U_BASE,
    # RFC v2: start is a null handler; numa_protect zaps each protected PTE and flushes each.
    "rfc-v2": {
        **U_BASE,
        "kvm_unmap_gfn_range_calls": NPAGES + NPAGES,
        "remote_tlb_flushes": NPAGES,
    },
}

SCENARIOS = {
    "P4": (region(size_bytes=8 * MIB, pinned="all"), 0, P4),
    "PT": (region(size_bytes=8 * MIB, thp=True, pinned="all"), 1, PT),
    "S": (region(size_bytes=8 * MIB, backing="shared", pinned="all"), 1, S),
    # S': first-touch, so the MPOL_BIND|MPOL_F_NUMA_BALANCING mask is both nodes (ADR 0310);
    # pinned at t=0, the pages land on vCPU 0's node (0), as node:0 would place them
    "S'": (
        region(
            size_bytes=8 * MIB,
            backing="shared",
            mof_policy=True,
            placement="first-touch",
            pinned="all",
        ),
        1,
        SP,
    ),
    "U": (region(size_bytes=8 * MIB), 1, U),
}


@pytest.fixture(scope="module")
def results() -> dict[str, pl.DataFrame]:
    return {name: run(reg, toucher) for name, (reg, toucher, _) in SCENARIOS.items()}


@pytest.mark.parametrize("column", list(SCENARIOS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_cell(results: dict[str, pl.DataFrame], column: str, policy: str) -> None:
    expected = SCENARIOS[column][2][policy]
    assert got(results[column], policy) == expected


def test_every_policy_has_every_cell() -> None:
    for _, _, table in SCENARIOS.values():
        assert set(table) == set(POLICIES)


def test_thp_spte_counts_go_to_2m(results: dict[str, pl.DataFrame]) -> None:
    frame = results["PT"].filter(pl.col("policy") == "linux-6.5")
    by = {
        r["page_size"]: r
        for r in frame.group_by("page_size")
        .agg(pl.col("spte_zapped").sum(), pl.col("ept_violations").sum())
        .to_dicts()
    }
    assert by["2M"]["spte_zapped"] == 4
    assert by["2M"]["ept_violations"] == 4
    assert "4K" not in by or by["4K"]["spte_zapped"] == 0


def test_pinned_shared_thp_fails_after_one_unmap() -> None:
    """S' with THP under linux-6.5: the scan protects the 4 PMDs (1 notifier zaps the 4 2M
    SPTEs, 1 flush; 1 host flush). Epoch 11: 4 hinting faults, all misplaced and pinned. The
    shared folio unmaps in the first pass of migrate_pages_batch(): 1 CLEAR notifier and 1
    pmdp_invalidate() host flush per THP (set_pmd_migration_entry()), then only
    migrate_folio_move() is retried: 1 + 4 notifiers and 1 + 4 host flushes (anon PT: 1 + 40).
    Whether v6.5 maps a pinned shmem THP by PMD migration entry or splits it first is not
    verified (docs/engine.md)."""
    reg = region(
        size_bytes=8 * MIB,
        backing="shared",
        thp=True,
        mof_policy=True,
        placement="first-touch",
        pinned="all",
    )
    vms = vms_frame(vm_row(regions=[reg]))
    acc = accesses_frame(every_epoch("vm0", 12, 1, 0, NPAGES))
    out = replay_frames(vms, acc, ["linux-6.5"]).epochs
    assert got(out, "linux-6.5") == cell(
        numa_pte_updates=NPAGES,
        numa_huge_pte_updates=4,
        numa_hint_faults=4,
        numa_migrate_failed=NPAGES,
        mmu_notifier_invalidations=1 + 4,
        kvm_unmap_gfn_range_calls=1 + 4,
        spte_zapped=4,
        remote_tlb_flushes=1,
        host_tlb_flushes=1 + 4,
        ept_violations=4,
    )


def test_bind_numa_balancing_policy_never_migrates_outside_its_node() -> None:
    """Column U with mof_policy: MPOL_BIND|MPOL_F_NUMA_BALANCING over {node 0}. The scan is as
    in U (1 notifier zapping 2048 SPTEs, 1 flush; 2048 PTEs PROT_NONE, 1 host flush). Epoch
    11: 2048 EPT violations and remote hinting faults from vCPU 1 (node 1); mpol_misplaced()
    returns NUMA_NO_NODE because node 1 is outside the BIND mask: no migration and no CLEAR
    notifier (U migrates all 2048 pages, with 2048 notifiers)."""
    reg = region(size_bytes=8 * MIB, mof_policy=True)
    out = run(reg, 1)
    for policy in ("linux-6.5", "linux-7.1"):
        assert got(out, policy) == cell(
            numa_pte_updates=NPAGES,
            numa_hint_faults=NPAGES,
            mmu_notifier_invalidations=1,
            kvm_unmap_gfn_range_calls=1,
            spte_zapped=NPAGES,
            remote_tlb_flushes=1,
            host_tlb_flushes=1,
            ept_violations=NPAGES,
        )
