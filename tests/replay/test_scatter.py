"""add_count gives the integers np.add.at gives, dense or sparse, sorted or not, on views."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.replay.scatter import add_count


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 3000),
    index=st.lists(st.integers(0, 10**9), max_size=400),
    value=st.integers(-3, 600),
    dtype=st.sampled_from([np.int16, np.int32, np.int64]),
    sort=st.booleans(),
)
def test_add_count_equals_add_at(
    size: int, index: list[int], value: int, dtype: type, sort: bool
) -> None:
    idx = np.asarray(index, np.int64) % size
    if sort:
        idx = np.sort(idx)
    want = np.arange(size, dtype=dtype)
    got = want.copy()
    np.add.at(want, idx, value)
    add_count(got, idx, value)
    assert np.array_equal(got, want)


def test_add_count_into_a_strided_column() -> None:
    want = np.zeros((5, 7), np.int64)
    got = want.copy()
    idx = np.array([4, 0, 4, 4, 2])
    np.add.at(want[:, 3], idx, 2)
    add_count(got[:, 3], idx, 2)
    assert np.array_equal(got, want) and got[4, 3] == 6
