"""The pure generator: normalize() and each phase kind, on small VMs."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.synth.generate import EPOCHS_PER_BATCH, Ranges, normalize, vm_batches
from pipeline.synth.spec import SynthSpec, parse_spec


def ranges(rows: list[tuple[int, int, int, int, int, bool]]) -> Ranges:
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    return Ranges(
        *(np.asarray(c, np.int64) for c in cols[:5]),
        np.asarray(cols[5], np.bool_),
    )


def page_counts(r: Ranges) -> Counter[tuple[int, int, bool, int]]:
    """Brute force: accesses of every (epoch, vcpu, write, gfn)."""
    out: Counter[tuple[int, int, bool, int]] = Counter()
    for e, v, g, n, a, w in zip(
        r.epoch.tolist(),
        r.vcpu.tolist(),
        r.gfn_start.tolist(),
        r.nr_pages.tolist(),
        r.nr_accesses.tolist(),
        r.write.tolist(),
        strict=True,
    ):
        for gfn in range(g, g + n):
            out[(e, v, w, gfn)] += a
    return out


def assert_canonical(r: Ranges) -> None:
    """Sorted by epoch, vcpu, gfn_start, write; runs in a group are disjoint and maximal."""
    keys = list(
        zip(r.epoch.tolist(), r.vcpu.tolist(), r.gfn_start.tolist(), r.write.tolist(), strict=True)
    )
    assert keys == sorted(keys)
    assert (r.nr_pages > 0).all()
    assert (r.nr_accesses > 0).all()
    last: dict[tuple[int, int, bool], tuple[int, int]] = {}
    for e, v, g, n, a, w in zip(
        r.epoch.tolist(),
        r.vcpu.tolist(),
        r.gfn_start.tolist(),
        r.nr_pages.tolist(),
        r.nr_accesses.tolist(),
        r.write.tolist(),
        strict=True,
    ):
        if (e, v, w) in last:
            end, count = last[(e, v, w)]
            assert g >= end, "overlapping runs"
            assert not (g == end and a == count), "adjacent runs with equal counts not merged"
        last[(e, v, w)] = (g + n, a)


row = st.tuples(
    st.integers(0, 3),
    st.integers(0, 2),
    st.integers(0, 40),
    st.integers(1, 12),
    st.integers(1, 3),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(row, max_size=30))
def test_normalize_keeps_every_access_and_is_canonical(rows: list[Any]) -> None:
    r = ranges(rows)
    out = normalize(r)
    assert page_counts(out) == page_counts(r)
    assert_canonical(out)


def test_normalize_merges_and_splits() -> None:
    out = normalize(
        ranges([(0, 0, 10, 5, 1, False), (0, 0, 15, 5, 1, False), (0, 0, 12, 2, 1, False)])
    )
    assert list(
        zip(out.gfn_start.tolist(), out.nr_pages.tolist(), out.nr_accesses.tolist(), strict=True)
    ) == [
        (10, 2, 1),
        (12, 2, 2),
        (14, 6, 1),
    ]


def test_normalize_at_the_top_of_the_gfn_space() -> None:
    top = (1 << 40) - 8
    out = normalize(ranges([(49, 4095, top, 8, 1, True), (49, 4095, top - 4, 6, 2, True)]))
    runs = zip(out.gfn_start.tolist(), out.nr_pages.tolist(), out.nr_accesses.tolist(), strict=True)
    assert list(runs) == [
        (top - 4, 4, 2),
        (top, 2, 3),
        (top + 2, 6, 1),
    ]
    assert out.epoch.tolist() == [49] * 3
    assert out.vcpu.tolist() == [4095] * 3


def make_spec(
    workloads: list[dict[str, Any]], *, duration_s: float = 10, seed: int = 1
) -> SynthSpec:
    doc: dict[str, Any] = {
        "duration_s": duration_s,
        "epoch_ms": 100,
        "seed": seed,
        "host": {"nodes": 2},
        "vm": [
            {
                "name": "v",
                "vcpus": 4,
                "vcpu_nodes": [0, 0, 1, 1],
                "region": [{"name": "ram", "size_gib": 1}, {"name": "hi", "size_gib": 1}],
                "workload": workloads,
            }
        ],
    }
    return parse_spec(copy.deepcopy(doc), Path("s.toml"))


def collect(spec: SynthSpec) -> Ranges:
    batches = list(vm_batches(spec, 0))
    assert len(batches) == -(-spec.nr_epochs // EPOCHS_PER_BATCH)
    out = Ranges.concat(batches)
    assert_canonical(out)
    return out


def test_sweep_covers_each_vcpu_slice_once_per_pass() -> None:
    # 1 GiB split over 4 vCPUs = 256 MiB each; 64 MiB/s * 0.1 s = 6.4 MiB per epoch
    spec = make_spec([{"kind": "sweep", "rate_mib_per_s": 64, "write_fraction": 1.0}], duration_s=4)
    r = collect(spec)
    assert r.write.all()
    assert (r.nr_accesses == 1).all()
    slice_pages = (256 << 20) >> 12
    step = round(64 * 256 * 0.1)
    for v in range(4):
        mine = r.vcpu == v
        assert r.gfn_start[mine].min() == v * slice_pages
        assert (r.gfn_start[mine] + r.nr_pages[mine]).max() <= (v + 1) * slice_pages
        assert int(r.nr_pages[mine].sum()) == step * spec.nr_epochs
    # a fast sweep wraps: every page of the slice, one range per epoch or two at the wrap
    fast = collect(
        make_spec([{"kind": "sweep", "rate_mib_per_s": 1000, "split": False}], duration_s=1)
    )
    per_epoch = Counter(zip(fast.epoch.tolist(), fast.vcpu.tolist(), strict=True))
    assert set(per_epoch.values()) <= {1, 2}
    assert int(fast.nr_pages.sum()) == 4 * 10 * round(1000 * 256 * 0.1)


def test_zipf_stays_in_hot_set_and_is_skewed() -> None:
    spec = make_spec(
        [{"kind": "zipf", "region": "hi", "hot_mib": 64, "skew": 1.2, "rate_mib_per_s": 200}]
    )
    r = collect(spec)
    lo = (1 << 30) >> 12
    assert r.gfn_start.min() >= lo
    assert (r.gfn_start + r.nr_pages).max() <= lo + ((64 << 20) >> 12)
    pages = page_counts(r)
    by_granule: Counter[int] = Counter()
    for (_, _, _, gfn), a in pages.items():
        by_granule[(gfn - lo) // 512] += a
    counts = sorted(by_granule.values(), reverse=True)
    # rank 1 of 32 granules under s=1.2 draws ~32% of the touches; uniform would be ~3%
    assert counts[0] / sum(counts) * 512 > 0.2 * 512
    # mean touches: 200 MiB/s / 2 MiB * 0.1 s = 10 granules per vCPU-epoch
    total = sum(pages.values()) / 512
    assert abs(total / (4 * 100) - 10) < 0.5


def test_uniform_rate_and_granule() -> None:
    spec = make_spec([{"kind": "uniform", "granule_kib": 4, "rate_mib_per_s": 0.5}])
    r = collect(spec)
    # 0.5 MiB/s = 128 pages/s = 12.8 per vCPU-epoch
    assert abs(int(r.nr_accesses @ r.nr_pages) / 400 - 12.8) < 0.5
    assert (r.gfn_start + r.nr_pages).max() <= (1 << 30) >> 12


def test_moving_hot_set_alternates_nodes() -> None:
    spec = make_spec([{"kind": "moving", "hot_mib": 32, "move_every_s": 2, "rate_mib_per_s": 20}])
    r = collect(spec)
    node = np.where(r.vcpu < 2, 0, 1)
    turn = r.epoch // 20
    assert ((turn % 2) == node).all()
    assert set(r.vcpu.tolist()) == {0, 1, 2, 3}


def test_shared_pages_are_touched_by_every_vcpu() -> None:
    spec = make_spec([{"kind": "shared", "hot_mib": 16, "rate_mib_per_s": 20}])
    r = collect(spec)
    per_vcpu = [
        {
            (e, g)
            for e, g in zip(
                r.epoch[r.vcpu == v].tolist(), r.gfn_start[r.vcpu == v].tolist(), strict=True
            )
        }
        for v in range(4)
    ]
    assert per_vcpu[0] and all(s == per_vcpu[0] for s in per_vcpu)


def test_idle_and_composition() -> None:
    spec = make_spec(
        [
            {
                "vcpus": [1],
                "phase": [
                    {"kind": "idle", "duration_s": 5},
                    {"kind": "uniform", "rate_mib_per_s": 10},
                ],
            },
            {"vcpus": [1], "kind": "uniform", "region": "hi", "rate_mib_per_s": 100},
        ]
    )
    r = collect(spec)
    assert set(r.vcpu.tolist()) == {1}
    low = r.gfn_start < (1 << 30) >> 12
    assert r.epoch[low].min() == 50
    assert r.epoch[~low].min() == 0


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    w = [{"kind": "zipf", "rate_mib_per_s": 100, "write_fraction": 0.5}]
    a, b, c = (collect(make_spec(w, seed=s)) for s in (3, 3, 4))
    for f in ("epoch", "vcpu", "gfn_start", "nr_pages", "nr_accesses", "write"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.gfn_start, c.gfn_start) or len(a) != len(c)
    assert 0.3 < a.write.mean() < 0.7


def test_granules_are_gfn_aligned_and_clipped_to_the_window() -> None:
    spec = make_spec(
        [{"kind": "uniform", "offset_mib": 1, "window_mib": 9, "rate_mib_per_s": 400}],
        duration_s=2,
    )
    r = collect(spec)
    lo, hi = 256, 256 + 9 * 256  # gfns of [1 MiB, 10 MiB)
    ends = r.gfn_start + r.nr_pages
    assert r.gfn_start.min() == lo
    assert ends.max() == hi
    # every run starts and ends on a 2 MiB boundary unless clipped at the window's edges
    assert ((r.gfn_start % 512 == 0) | (r.gfn_start == lo)).all()
    assert ((ends % 512 == 0) | (ends == hi)).all()


KIND_PARAMS: dict[str, Any] = {
    "uniform": {"granule_kib": st.sampled_from([4, 64, 2048])},
    "zipf": {"hot_mib": st.integers(1, 8), "skew": st.floats(0, 3), "scatter": st.booleans()},
    "sweep": {"split": st.booleans()},
    "moving": {"hot_mib": st.integers(1, 8), "move_every_s": st.sampled_from([0.1, 0.3, 1])},
    "shared": {"hot_mib": st.integers(1, 8), "granule_kib": st.sampled_from([4, 2048])},
    "idle": {},
}


@st.composite
def phases(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(KIND_PARAMS)))
    phase: dict[str, Any] = {"kind": kind, "region": draw(st.sampled_from(["ram", "hi"]))}
    if kind != "idle":
        phase["rate_mib_per_s"] = draw(st.floats(0.5, 200))
        phase["write_fraction"] = draw(st.floats(0, 1))
        phase["offset_mib"] = draw(st.integers(0, 8))
        phase["window_mib"] = draw(st.integers(8, 16))
    for key, strategy in KIND_PARAMS[kind].items():
        if key == "move_every_s" or draw(st.booleans()):
            phase[key] = draw(strategy)
    if draw(st.booleans()):
        phase["duration_s"] = draw(st.sampled_from([0.1, 0.5, 1.0]))
    return phase


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(phases(), min_size=1, max_size=3), min_size=1, max_size=3))
def test_random_valid_specs_generate_canonical_rows_inside_guest_ram(
    groups: list[list[dict[str, Any]]],
) -> None:
    workloads = []
    for phase_list in groups:
        for p in phase_list[:-1]:
            p.setdefault("duration_s", 0.5)
        workloads.append({"vcpus": "all", "phase": phase_list})
    doc: dict[str, Any] = {
        "duration_s": 3.5,  # each of <= 3 phases lasts <= 1 s, then the last one runs to the end
        "host": {"nodes": 2},
        "vm": [
            {
                "name": "v",
                "vcpus": 3,
                "vcpu_nodes": [0, 1, 1],
                "region": [{"name": "ram", "size_mib": 30}, {"name": "hi", "size_mib": 26}],
                "workload": workloads,
            }
        ],
    }
    spec = parse_spec(doc, Path("s.toml"))
    r = collect(spec)
    assert r.epoch.max(initial=0) < spec.nr_epochs
    assert r.vcpu.max(initial=0) < 3
    assert (r.gfn_start + r.nr_pages).max(initial=0) <= (56 << 20) >> 12
