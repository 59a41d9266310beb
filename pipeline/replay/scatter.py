"""Counting into arrays at repeated indices without ``np.add.at`` (issue 13).

``np.add.at`` is unbuffered and runs one element at a time; the replay's hot paths add a
constant at many indices (faults per vCPU, SPTEs, populated or protected pages per 2 MiB
granule). Counting the indices first and adding once gives the same integers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Below this many target slots per index, one bincount over the whole target is cheapest.
DENSE_RATIO = 4


def add_count(
    target: npt.NDArray[np.integer], index: npt.NDArray[np.integer], value: int = 1
) -> None:
    """``target[i] += value`` once per occurrence of ``i`` in ``index`` (in place; ``target``
    may be a strided view). Equal to ``np.add.at(target, index, value)``."""
    if index.size == 0:
        return
    if target.size <= DENSE_RATIO * index.size:
        counts = np.bincount(index, minlength=target.size)
        target += (counts * value).astype(target.dtype, copy=False)
        return
    idx = index if bool(np.all(index[1:] >= index[:-1])) else np.sort(index)
    starts = np.flatnonzero(np.diff(idx, prepend=idx[0] - 1))
    counts = np.diff(starts, append=idx.size)
    target[idx[starts]] += (counts * value).astype(target.dtype, copy=False)
