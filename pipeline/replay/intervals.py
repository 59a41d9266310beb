"""Sorted disjoint half-open integer intervals as numpy arrays (gfn ranges).

The engine keeps the set of guest frames whose mapping may be incomplete (no SPTE, PROT_NONE
host PTE, not yet populated) as such a set, so that an epoch's accesses cost work only where
they meet it (docs/engine.md, "dirty set"). All operations are vectorized over intervals.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]

LIBRARY = Path(__file__).with_name("_intervals.so")
INTERVALS_ABI = 1  # csrc/intervals.c INTERVALS_ABI


def _load() -> Any:
    """csrc/intervals.c (built by ``make setup``; ADR 0373), or None: the numpy versions."""
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:
        return None
    lib.intervals_abi.restype = ctypes.c_int64
    if lib.intervals_abi() != INTERVALS_ABI:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.intervals_intersect.restype = i64
    lib.intervals_intersect.argtypes = [ptr, ptr, i64, ptr, ptr, i64, ptr, ptr, ptr, i64]
    lib.intervals_subtract.restype = i64
    lib.intervals_subtract.argtypes = [ptr, ptr, i64, ptr, ptr, i64, ptr, ptr]
    return lib


_LIB = _load()


def compiled() -> bool:
    """Whether the compiled interval kernels are in use."""
    return _LIB is not None


class _Scratch:
    """A growing int64 buffer whose address is taken once: numpy's ``ndarray.ctypes`` costs
    ~3 us per array, more than a kernel call on these sizes, so the inputs are copied into
    one buffer and the outputs read from another (one replay per process: not for threads)."""

    def __init__(self) -> None:
        self.buf = np.empty(0, np.int64)
        self.addr = 0

    def take(self, n: int) -> tuple[I64, int]:
        if self.buf.size < n:
            self.buf = np.empty(max(n, 2 * self.buf.size, 4096), np.int64)
            self.addr = self.buf.ctypes.data
        return self.buf, self.addr


_IN, _OUT = _Scratch(), _Scratch()


def _pack(*parts: npt.ArrayLike) -> tuple[list[int], list[int]]:
    """Copy ``parts`` (as int64) one after another into the input buffer: their addresses
    and lengths."""
    arrays = [np.asarray(p).ravel() for p in parts]
    sizes = [a.size for a in arrays]
    total = sum(sizes)
    buf, addr = _IN.take(total)
    np.concatenate(arrays, out=buf[:total], casting="same_kind")
    ptrs, at = [], addr
    for size in sizes:
        ptrs.append(at)
        at += 8 * size
    return ptrs, sizes


def normalize(starts: I64, ends: I64) -> tuple[I64, I64]:
    """Sort, drop empty and merge overlapping or touching intervals."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return starts.astype(np.int64), ends.astype(np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    run_end = np.maximum.accumulate(ends)
    new = np.empty(starts.size, dtype=bool)
    new[0] = True
    new[1:] = starts[1:] > run_end[:-1]
    idx = np.flatnonzero(new)
    out_starts = starts[idx]
    last = np.append(idx[1:], starts.size) - 1
    out_ends = run_end[last]
    return out_starts.astype(np.int64), out_ends.astype(np.int64)


@dataclass
class IntervalSet:
    """A set of gfns stored as sorted, disjoint, non-touching ``[start, end)`` intervals."""

    starts: I64
    ends: I64

    @classmethod
    def empty(cls) -> IntervalSet:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64))

    @classmethod
    def of(cls, starts: npt.ArrayLike, ends: npt.ArrayLike) -> IntervalSet:
        s, e = normalize(np.asarray(starts, np.int64), np.asarray(ends, np.int64))
        return cls(s, e)

    def __len__(self) -> int:
        return int(self.starts.size)

    def total(self) -> int:
        return int((self.ends - self.starts).sum())

    def add(self, starts: npt.ArrayLike, ends: npt.ArrayLike) -> None:
        """Union with the given intervals."""
        s = np.concatenate([self.starts, np.asarray(starts, np.int64).ravel()])
        e = np.concatenate([self.ends, np.asarray(ends, np.int64).ravel()])
        self.starts, self.ends = normalize(s, e)

    def subtract(self, starts: npt.ArrayLike, ends: npt.ArrayLike) -> None:
        """Remove the given intervals (any order, may overlap)."""
        if self.starts.size == 0:
            return
        if _LIB is not None:
            (a_s, a_e, c_s, c_e), (na, _, nc, _) = _pack(self.starts, self.ends, starts, ends)
            room = na + nc
            out, addr = _OUT.take(2 * room)
            n = _LIB.intervals_subtract(a_s, a_e, na, c_s, c_e, nc, addr, addr + 8 * room)
            if n < 0:
                raise MemoryError("intervals_subtract")
            self.starts, self.ends = out[:n].copy(), out[room : room + n].copy()
            return
        self._subtract_numpy(starts, ends)

    def _subtract_numpy(self, starts: npt.ArrayLike, ends: npt.ArrayLike) -> None:
        """:meth:`subtract` in numpy (without the compiled kernels; the tests compare)."""
        if self.starts.size == 0:
            return
        cs, ce = normalize(np.asarray(starts, np.int64).ravel(), np.asarray(ends, np.int64).ravel())
        if cs.size == 0:
            return
        # Complement of the cut set within [min, max), intersected with self.
        lo = min(int(self.starts[0]), int(cs[0]))
        hi = max(int(self.ends[-1]), int(ce[-1]))
        comp_s = np.concatenate([[lo], ce])
        comp_e = np.concatenate([cs, [hi]])
        self.starts, self.ends = intersect_numpy(self.starts, self.ends, comp_s, comp_e)[:2]

    def clip(self, lo: int, hi: int) -> tuple[I64, I64]:
        """The parts of the set inside ``[lo, hi)``."""
        i = int(np.searchsorted(self.ends, lo, side="right"))
        j = int(np.searchsorted(self.starts, hi, side="left"))
        s = np.maximum(self.starts[i:j], lo)
        e = np.minimum(self.ends[i:j], hi)
        return s, e


def intersect(a_s: I64, a_e: I64, b_s: I64, b_e: I64) -> tuple[I64, I64, I64]:
    """Intersections of intervals ``a`` (any, possibly overlapping) with disjoint sorted ``b``.

    Returns ``(starts, ends, a_index)``: every non-empty overlap of an ``a`` interval with a
    ``b`` interval, ordered by ``a`` index then position, with the index of its ``a`` interval.
    """
    if _LIB is None or a_s.size == 0 or b_s.size == 0:
        return intersect_numpy(a_s, a_e, b_s, b_e)
    (p_as, p_ae, p_bs, p_be), (na, _, nb, _) = _pack(a_s, a_e, b_s, b_e)
    room = na + nb
    while True:
        out, addr = _OUT.take(3 * room)
        n = _LIB.intervals_intersect(
            p_as, p_ae, na, p_bs, p_be, nb, addr, addr + 8 * room, addr + 16 * room, room
        )
        if n <= room:
            return out[:n].copy(), out[room : room + n].copy(), out[2 * room : 2 * room + n].copy()
        room = n


def intersect_numpy(a_s: I64, a_e: I64, b_s: I64, b_e: I64) -> tuple[I64, I64, I64]:
    """:func:`intersect` in numpy (without the compiled kernels; the tests compare)."""
    if a_s.size == 0 or b_s.size == 0:
        z = np.empty(0, np.int64)
        return z, z.copy(), z.copy()
    first = b_e.searchsorted(a_s, side="right")
    last = b_s.searchsorted(a_e, side="left")
    counts = last - first
    most = int(counts.max())
    if most <= 0:
        z = np.empty(0, np.int64)
        return z, z.copy(), z.copy()
    if most == 1:  # each a interval meets at most one b interval: no repeats needed
        a_idx = np.flatnonzero(counts > 0)
        b_idx = first[a_idx]
    else:
        counts = np.maximum(counts, 0)
        total = int(counts.sum())
        a_idx = np.repeat(np.arange(a_s.size, dtype=np.int64), counts)
        offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        b_idx = np.repeat(first, counts) + offs
    s = np.maximum(a_s[a_idx], b_s[b_idx])
    e = np.minimum(a_e[a_idx], b_e[b_idx])
    keep = e > s
    return s[keep], e[keep], a_idx[keep]


def expand(starts: I64, ends: I64) -> I64:
    """All integers of the intervals, concatenated in order (one entry per page)."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    base = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return base + np.arange(total, dtype=np.int64)


def runs_of(values: I64) -> tuple[I64, I64]:
    """Maximal runs of consecutive integers in a sorted, distinct array, as ``[start, end)``."""
    if values.size == 0:
        z = np.empty(0, np.int64)
        return z, z.copy()
    brk = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate([[values[0]], values[brk + 1]])
    ends = np.concatenate([values[brk], [values[-1]]]) + 1
    return starts.astype(np.int64), ends.astype(np.int64)
