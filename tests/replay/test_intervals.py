"""The interval sets behind the dirty set: checked against plain Python sets."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.replay.intervals import IntervalSet, expand, intersect, runs_of

spans = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=12)


def as_set(starts: np.ndarray, ends: np.ndarray) -> set[int]:
    return {x for s, e in zip(starts.tolist(), ends.tolist(), strict=True) for x in range(s, e)}


def arrays(items: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray([a for a, _ in items], np.int64)
    return s, s + np.asarray([n for _, n in items], np.int64)


@given(spans, spans)
def test_add_subtract_match_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    sa, ea = arrays(a)
    sb, eb = arrays(b)
    iv = IntervalSet.of(sa, ea)
    assert as_set(iv.starts, iv.ends) == as_set(sa, ea)
    assert (iv.starts[1:] > iv.ends[:-1]).all()  # disjoint, not touching, sorted
    iv.subtract(sb, eb)
    assert as_set(iv.starts, iv.ends) == as_set(sa, ea) - as_set(sb, eb)
    iv.add(sb, eb)
    assert as_set(iv.starts, iv.ends) == as_set(sa, ea) | as_set(sb, eb)


@given(spans, spans)
def test_intersect_matches_sets(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    sa, ea = arrays(a)
    dirty = IntervalSet.of(*arrays(b))
    s, e, ai = intersect(sa, ea, dirty.starts, dirty.ends)
    assert as_set(s, e) == as_set(sa, ea) & as_set(dirty.starts, dirty.ends)
    for i, (x, y) in enumerate(zip(s.tolist(), e.tolist(), strict=True)):
        assert sa[ai[i]] <= x and y <= ea[ai[i]]
    pages = expand(s, e)
    assert sorted(set(pages.tolist())) == sorted(as_set(s, e))


@given(st.sets(st.integers(0, 300)))
def test_runs_of(values: set[int]) -> None:
    arr = np.asarray(sorted(values), np.int64)
    s, e = runs_of(arr)
    assert as_set(s, e) == values
    assert (s[1:] > e[:-1]).all()
