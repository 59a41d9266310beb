"""The compiled interval kernels (csrc/intervals.c, ADR 0373) give the numpy versions'
arrays exactly, on random interval sets of the dirty set's shapes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.replay import intervals
from pipeline.replay.intervals import IntervalSet, intersect, intersect_numpy, normalize

pytestmark = pytest.mark.skipif(
    not intervals.compiled(), reason="pipeline/replay/_intervals.so not built (make setup)"
)


def _random(rng: np.random.Generator, n: int, span: int, longest: int) -> tuple[np.ndarray, ...]:
    s = rng.integers(0, span, n).astype(np.int64)
    return s, s + rng.integers(-2, longest, n)  # some empty or reversed


@pytest.mark.parametrize("seed", range(40))
def test_intersect_equals_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a_s, a_e = _random(rng, int(rng.integers(0, 300)), 5000, 200)
    b_s, b_e = normalize(*_random(rng, int(rng.integers(0, 100)), 5000, 80))
    got, want = intersect(a_s, a_e, b_s, b_e), intersect_numpy(a_s, a_e, b_s, b_e)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == np.int64
        assert np.array_equal(g, w)


@pytest.mark.parametrize("seed", range(40))
def test_subtract_equals_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = _random(rng, int(rng.integers(0, 100)), 5000, 120)
    cut = _random(rng, int(rng.integers(0, 200)), 5200, 600)
    a, b = IntervalSet.of(*base), IntervalSet.of(*base)
    a.subtract(*cut)
    b._subtract_numpy(*cut)
    assert np.array_equal(a.starts, b.starts) and np.array_equal(a.ends, b.ends)
    assert a.starts.dtype == b.starts.dtype == np.int64


def test_intersect_grows_its_output() -> None:
    # one long interval over many: more overlaps than the first guess of room
    b_s, b_e = np.arange(0, 1000, 2, dtype=np.int64), np.arange(1, 1001, 2, dtype=np.int64)
    a_s, a_e = np.zeros(3, np.int64), np.full(3, 1000, np.int64)
    got = intersect(a_s, a_e, b_s, b_e)
    assert got[0].size == 1500
    for g, w in zip(got, intersect_numpy(a_s, a_e, b_s, b_e), strict=True):
        assert np.array_equal(g, w)
