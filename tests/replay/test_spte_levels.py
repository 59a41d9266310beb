"""Mixed SPTE levels (ADR 0371): which THPs KVM maps with 4K SPTEs, THP fault fallback, and
how each policy's zaps and flushes depend on the mix."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.replay.runner import ReplayParams, replay_frames
from pipeline.replay.spte_levels import granule_hash
from tests.replay.conftest import (
    MIB,
    accesses_frame,
    every_epoch,
    region,
    totals,
    vm_row,
    vms_frame,
)

COLS = (
    "spte_zapped",
    "numa_unmap_gfn_range_calls",
    "numa_remote_tlb_flushes",
    "numa_pte_updates",
    "numa_huge_pte_updates",
)


def test_granule_hash_is_fixed_and_uniform() -> None:
    g = np.arange(100_000, dtype=np.int64)
    h = granule_hash(g)
    assert np.array_equal(h, granule_hash(g))
    assert h.min() >= 0.0 and h.max() < 1.0
    assert abs(float((h < 0.1).mean()) - 0.1) < 0.005


def replay(accesses: list[tuple[str, int, int, int, int]], **params: object) -> pl.DataFrame:
    # 8 MiB THP region (4 granules), v6.5 era host without contention (preempt none and no
    # PREEMPT_DYNAMIC yields are irrelevant here: one vCPU)
    reg = region(size_bytes=8 * MIB, thp=True)
    vms = vms_frame(vm_row(regions=[reg], vcpu_nodes=[0]))
    p = ReplayParams(**params)  # type: ignore[arg-type]
    return replay_frames(vms, accesses_frame(accesses), ["linux-6.5", "rfc-v2"], p).epochs


def test_boot_profile_rule_4k_grained_first_touch() -> None:
    # granule 0 first touched by 4K runs (every other page: runs of 1 page), granules 1-3 by
    # one 3 x 512-page run: only granule 0 is mapped by 4K SPTEs; the scan at 1 s zaps them
    rows = [("vm0", 0, 0, p, 1) for p in range(0, 512, 2)]
    rows += [("vm0", 0, 0, 512, 1536)]
    rows += [r for e in range(1, 12) for r in [("vm0", e, 0, 8, 1)]]
    ep = replay(rows)
    base_4k = totals(ep, "linux-6.5", *COLS, page_size="4K")
    base_2m = totals(ep, "linux-6.5", *COLS, page_size="2M")
    assert base_4k["spte_zapped"] == 256  # the 4K SPTEs of granule 0
    assert base_2m["spte_zapped"] == 3  # the 2M SPTEs of granules 1-3
    # the host has 4 THPs whatever KVM maps: 4 PMDs made PROT_NONE under both policies
    assert totals(ep, "rfc-v2", *COLS, page_size="2M")["numa_huge_pte_updates"] == 4
    rfc = totals(ep, "rfc-v2", *COLS)
    assert rfc["numa_unmap_gfn_range_calls"] == 4  # one numa_protect() per PMD
    assert rfc["numa_remote_tlb_flushes"] == 4  # granule 0: 256 SPTEs, one flush
    assert totals(ep, "linux-6.5", *COLS)["numa_unmap_gfn_range_calls"] == 1


def test_share_and_fallback_change_each_policy() -> None:
    rows = every_epoch("vm0", 12, 0, 0, 2048)  # 2 MiB-wide runs: the rule gives 2M SPTEs
    auto = replay(rows)
    assert totals(auto, "linux-6.5", *COLS)["spte_zapped"] == 4
    all4k = replay(rows, spte_4k=1.0)
    assert totals(all4k, "linux-6.5", *COLS)["spte_zapped"] == 2048
    # rfc-v2: still one call and one flush per PMD, whatever the SPTE level
    assert totals(all4k, "rfc-v2", *COLS)["numa_unmap_gfn_range_calls"] == 4
    assert totals(all4k, "rfc-v2", *COLS)["numa_remote_tlb_flushes"] == 4
    # every THP fault fell back: 4K host pages, one numa_protect() call and flush per PTE
    fallback = replay(rows, thp_fault_fallback=1.0)
    rfc = totals(fallback, "rfc-v2", *COLS)
    assert rfc["numa_pte_updates"] == 2048 and rfc["numa_huge_pte_updates"] == 0
    assert rfc["numa_unmap_gfn_range_calls"] == 2048
    assert rfc["numa_remote_tlb_flushes"] == 2048
    assert totals(fallback, "linux-6.5", *COLS)["spte_zapped"] == 2048
