"""Pure generator: range-compressed ``accesses`` rows from a validated spec and seeded RNGs.

Nothing here opens a file. :func:`vm_batches` yields, for one VM, the rows of consecutive
epoch batches (``EPOCHS_PER_BATCH`` epochs each), sorted by epoch, vcpu, gfn_start, write, with
every (epoch, vcpu, write) group reduced to maximal runs of pages with equal access counts
(the ``accesses`` grain, schemas/accesses.toml). Work and memory grow with the number of ranges
emitted, never with the VM size: the sampled phases touch whole granules (2 MiB = 512 pages by
default) and a sweep emits one range per vCPU and epoch.

Determinism: each phase of each workload draws from its own ``numpy.random.Generator``
seeded by ``(seed, vm index, workload index, phase index)``; the batch size is a constant of
the generator, so the same spec and seed give the same rows. The kernel never sees these
accesses directly; they stand for the guest's touches that the engine turns into EPT
violations and NUMA hinting faults (KERNEL.md 5.4, 8.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.model.tomlsource import MIB, PAGE_BYTES
from pipeline.model.vmmodel import Vm
from pipeline.synth.spec import Phase, SynthSpec, Workload

#: epochs generated together (a constant: changing it changes the random streams' use)
EPOCHS_PER_BATCH = 50

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Ranges:
    """Columns of accesses rows (without ``vm``); may overlap until :func:`normalize`."""

    epoch: I64
    vcpu: I64
    gfn_start: I64
    nr_pages: I64
    nr_accesses: I64
    write: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.epoch.size)

    @staticmethod
    def empty() -> Ranges:
        z = np.zeros(0, np.int64)
        return Ranges(z, z, z, z, z, np.zeros(0, np.bool_))

    @staticmethod
    def concat(parts: list[Ranges]) -> Ranges:
        if not parts:
            return Ranges.empty()
        return Ranges(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("epoch", "vcpu", "gfn_start", "nr_pages", "nr_accesses", "write")


#: bits of a gfn bound (gfns < 2**40: the 52-bit gpa space) in the packed sort keys
_GFN_BITS = 41


def normalize(r: Ranges) -> Ranges:
    """Merge overlapping rows of each (epoch, vcpu, write) into maximal runs of equal counts.

    A sweep over the boundaries of every group: +nr_accesses at a range's start, - at its end;
    between two consecutive boundaries the running sum is each page's access count. Adjacent
    segments with the same count merge. Output sorted by epoch, vcpu, gfn_start, write.
    Sorting uses one packed int64 key (group, gfn) instead of a lexsort: a batch has fewer than
    2**19 groups and gfns fit in 41 bits.
    """
    if len(r) == 0:
        return r
    e0 = int(r.epoch.min())
    vcpu_span = int(r.vcpu.max()) + 1
    group = ((r.epoch - e0) * vcpu_span + r.vcpu) * 2 + r.write
    assert int(group.max()) < 1 << (62 - _GFN_BITS), "epoch batch too large to pack"
    g = np.concatenate([group, group])
    pos = np.concatenate([r.gfn_start, r.gfn_start + r.nr_pages])
    delta = np.concatenate([r.nr_accesses, -r.nr_accesses])
    order = np.argsort((g << _GFN_BITS) | pos)
    g, pos, delta = g[order], pos[order], delta[order]
    level = np.cumsum(delta)
    seg = (g[:-1] == g[1:]) & (pos[:-1] < pos[1:]) & (level[:-1] > 0)
    idx = np.flatnonzero(seg)
    sg, s0, s1, cnt = g[idx], pos[idx], pos[idx + 1], level[idx]
    new_run = np.ones(sg.size, np.bool_)
    new_run[1:] = (sg[1:] != sg[:-1]) | (s0[1:] != s1[:-1]) | (cnt[1:] != cnt[:-1])
    first = np.flatnonzero(new_run)
    last = np.append(first[1:], sg.size) - 1
    rg, start, end, count = sg[first], s0[first], s1[last], cnt[first]
    write = rg & 1
    rest = rg >> 1
    # (epoch, vcpu, gfn_start, write) is unique once runs are disjoint: any sort will do
    out = np.argsort((rest << _GFN_BITS | start) << 1 | write)
    rest, start, end, count, write = rest[out], start[out], end[out], count[out], write[out]
    return Ranges(
        rest // vcpu_span + e0,
        rest % vcpu_span,
        start,
        end - start,
        count,
        write.astype(np.bool_),
    )


def counts_per_epoch(rate: float, n_epochs: int, rng: np.random.Generator) -> I64:
    """Integer counts whose mean is ``rate`` per epoch: floor + a Bernoulli for the fraction."""
    base = int(rate)
    frac = rate - base
    extra = (rng.random(n_epochs) < frac).astype(np.int64) if frac > 0 else 0
    return np.full(n_epochs, base, np.int64) + extra


def granule_span(phase: Phase) -> tuple[int, int]:
    """(first, count) of the gfn-aligned granules that cover the phase's hot set.

    Granules are aligned in gfn space (a 2 MiB granule is a THP-sized, 2M-SPTE-sized block)
    and clipped to the hot set (the first ``hot_nr_pages`` of the window; all of it when 0).
    """
    limit = phase.hot_nr_pages or phase.win_nr_pages
    first = phase.win_gfn_start // phase.granule_pages
    end = -(-(phase.win_gfn_start + limit) // phase.granule_pages)
    return first, end - first


class Sampler:
    """Draws granule indices of a phase's hot set: uniform, or zipf over seeded ranks.

    With ``skew`` s > 0, the granule of rank k (0-based) has probability proportional to
    ``1 / (k + 1) ** s`` (a finite zipf law); ranks are a seeded permutation of the hot set's
    granules when ``scatter`` is true, else rank k is the k-th granule from the window start.
    """

    def __init__(self, phase: Phase, rng: np.random.Generator) -> None:
        self.nr_granules = granule_span(phase)[1]
        self.cdf: npt.NDArray[np.float64] | None = None
        self.perm: I64 | None = None
        if phase.skew > 0:
            weights = 1.0 / np.arange(1, self.nr_granules + 1, dtype=np.float64) ** phase.skew
            cdf = np.cumsum(weights)
            self.cdf = cdf / cdf[-1]
        if phase.scatter and phase.skew > 0:
            self.perm = rng.permutation(self.nr_granules).astype(np.int64)

    def draw(self, n: int, rng: np.random.Generator) -> I64:
        if self.cdf is None:
            return rng.integers(0, self.nr_granules, n, dtype=np.int64)
        ranks = np.searchsorted(self.cdf, rng.random(n), side="right").astype(np.int64)
        ranks = np.minimum(ranks, self.nr_granules - 1)
        return ranks if self.perm is None else self.perm[ranks]


def granule_ranges(phase: Phase, granules: I64) -> tuple[I64, I64]:
    """(gfn_start, nr_pages) of hot-set granules (indices from :func:`granule_span`)."""
    first, _ = granule_span(phase)
    lo = phase.win_gfn_start
    hi = lo + (phase.hot_nr_pages or phase.win_nr_pages)
    start = np.maximum((first + granules) * phase.granule_pages, lo)
    end = np.minimum((first + granules + 1) * phase.granule_pages, hi)
    return start, end - start


def phase_epochs(phase: Phase, epochs: I64, epoch_ms: int) -> I64:
    """The epochs of ``epochs`` whose start lies in the phase's [start_ms, end_ms)."""
    t0 = epochs * epoch_ms
    return epochs[(t0 >= phase.start_ms) & (t0 < phase.end_ms)]


class PhaseGen:
    """Generates one phase's rows epoch batch by epoch batch, from its own RNG stream."""

    def __init__(
        self, phase: Phase, workload: Workload, vm: Vm, epoch_ms: int, rng: np.random.Generator
    ) -> None:
        self.phase = phase
        self.vcpus = np.asarray(workload.vcpus, np.int64)
        self.vcpu_nodes = np.asarray([vm.vcpu_nodes[v] for v in workload.vcpus], np.int64)
        self.epoch_ms = epoch_ms
        self.rng = rng
        self.sampler = Sampler(phase, rng) if phase.kind not in ("sweep", "idle") else None
        # granule touches per epoch per vCPU (sampled kinds) or pages per epoch (sweep)
        granule_mib = phase.granule_pages * PAGE_BYTES / MIB
        self.per_epoch = phase.rate_mib_per_s * epoch_ms / 1000 / granule_mib
        self.sweep_pages = max(1, round(phase.rate_mib_per_s * MIB / PAGE_BYTES * epoch_ms / 1000))

    def emit(self, epochs: I64) -> Ranges:
        e = phase_epochs(self.phase, epochs, self.epoch_ms)
        if e.size == 0 or self.phase.kind == "idle":
            return Ranges.empty()
        if self.phase.kind == "sweep":
            return self._sweep(e)
        return self._sampled(e)

    def _writes(self, n: int) -> npt.NDArray[np.bool_]:
        wf = self.phase.write_fraction
        if wf <= 0.0:
            return np.zeros(n, np.bool_)
        if wf >= 1.0:
            return np.ones(n, np.bool_)
        return self.rng.random(n) < wf

    def _sampled(self, e: I64) -> Ranges:
        """uniform / zipf / moving / shared: granule touches drawn per (epoch, vCPU)."""
        assert self.sampler is not None
        phase = self.phase
        if phase.kind == "shared":
            # one draw per epoch, touched by every vCPU of the group
            n = counts_per_epoch(self.per_epoch, e.size, self.rng)
            granules = self.sampler.draw(int(n.sum()), self.rng)
            ep = np.repeat(e, n)
            k = self.vcpus.size
            epoch = np.repeat(ep, k)
            vcpu = np.tile(self.vcpus, ep.size)
            granules = np.repeat(granules, k)
        else:
            vcpus = np.tile(self.vcpus, e.size)
            ep = np.repeat(e, self.vcpus.size)
            if phase.kind == "moving":
                nodes = np.unique(self.vcpu_nodes)
                turn = (ep * self.epoch_ms - phase.start_ms) // phase.move_every_ms
                active_node = nodes[turn % nodes.size]
                keep = np.tile(self.vcpu_nodes, e.size) == active_node
                vcpus, ep = vcpus[keep], ep[keep]
            n = counts_per_epoch(self.per_epoch, ep.size, self.rng)
            granules = self.sampler.draw(int(n.sum()), self.rng)
            epoch = np.repeat(ep, n)
            vcpu = np.repeat(vcpus, n)
        gfn, nr = granule_ranges(phase, granules)
        ones = np.ones(gfn.size, np.int64)
        return Ranges(epoch, vcpu, gfn, nr, ones, self._writes(gfn.size))

    def _sweep(self, e: I64) -> Ranges:
        """Each vCPU walks its slice of the window (or all of it), one range per epoch.

        The k-th epoch of the phase covers pages [k*step, (k+1)*step) of the slice, wrapping
        around at its end (then the epoch has two ranges).
        """
        phase = self.phase
        nv = self.vcpus.size
        if phase.split:  # equal slices; the last vCPU also takes the remainder
            slice_pages = phase.win_nr_pages // nv
            lo = phase.win_gfn_start + np.arange(nv, dtype=np.int64) * slice_pages
            sizes = np.full(nv, slice_pages, np.int64)
            sizes[-1] = phase.win_nr_pages - slice_pages * (nv - 1)
        else:
            lo = np.full(nv, phase.win_gfn_start, np.int64)
            sizes = np.full(nv, phase.win_nr_pages, np.int64)
        first_epoch = -(-phase.start_ms // self.epoch_ms)
        epoch = np.repeat(e, nv)
        vcpu = np.tile(self.vcpus, e.size)
        size = np.tile(sizes, e.size)
        lo = np.tile(lo, e.size)
        length = np.minimum(self.sweep_pages, size)
        offset = (epoch - first_epoch) * self.sweep_pages % size
        head = np.minimum(length, size - offset)
        tail = length - head
        wraps = tail > 0
        n = epoch.size + int(wraps.sum())
        return Ranges(
            np.concatenate([epoch, epoch[wraps]]),
            np.concatenate([vcpu, vcpu[wraps]]),
            np.concatenate([lo + offset, lo[wraps]]),
            np.concatenate([head, tail[wraps]]),
            np.ones(n, np.int64),
            self._writes(n),
        )


def vm_batches(spec: SynthSpec, vm_index: int) -> Iterator[Ranges]:
    """Normalized rows of VM ``vm_index``, one batch of ``EPOCHS_PER_BATCH`` epochs at a time.

    Every batch is yielded, empty or not (callers count progress by batch); epochs within and
    across batches are increasing.
    """
    vm = spec.model.vms[vm_index]
    gens = [
        PhaseGen(
            phase,
            workload,
            vm,
            spec.epoch_ms,
            np.random.default_rng([spec.seed, vm_index, wi, pi]),
        )
        for wi, workload in enumerate(spec.workloads[vm_index])
        for pi, phase in enumerate(workload.phases)
    ]
    for first in range(0, spec.nr_epochs, EPOCHS_PER_BATCH):
        epochs = np.arange(first, min(first + EPOCHS_PER_BATCH, spec.nr_epochs), dtype=np.int64)
        yield normalize(Ranges.concat([g.emit(epochs) for g in gens]))
