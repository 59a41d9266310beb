"""Timestamps far outside a trace's bulk are quarantined at ingest (ADR 0011).

One line at t = 9e9 s made replay size its arrays for 9e9 s of epochs; one 1e6 s ahead made a
20k-line trace replay for minutes. The rule, the same for both parse paths (the C scanner and
polars end in :meth:`pipeline.ingest.polarsscan.Collected.result`, which summarises each block
with :func:`time_clusters`; the sequential collector applies :class:`OutlierRule`):

* the event lines of a block, sorted by timestamp, are cut into *clusters* wherever two
  consecutive timestamps are more than :data:`GAP_NS` (1 hour) apart;
* the ingest's *bulk* is the time range of the clusters accepted so far, over every source in
  input order. In each block the clusters are judged largest first: the first cluster of the
  ingest is accepted; a cluster of more than :data:`MAX_OUTLIER_LINES` (16) lines is accepted
  (a trace may pause and resume); a smaller one is accepted when it lies within
  :data:`GAP_NS` of the bulk, else its lines are quarantined with reason ``timestamp outlier``,
  their timestamp and the bulk, and the manifest counts them per source
  (``timestamp_outliers``) with the first one's ``file:line``.

So a few lines more than an hour away from everything else cannot stretch the span; a gap of
up to an hour stretches it by at most that (36,000 epochs of 100 ms) and replay's
``--max-memory`` bounds the rest (ADR 0380). Not caught: a small cluster more than an hour
away that is the first cluster of the ingest and larger than the block's others (a trace
whose very first block holds only it); a legitimate resume of at most 16 lines more than an
hour after the rest is quarantined (the reason says so, the lines are kept in
``quarantine.parquet``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GAP_NS = 3600 * 1_000_000_000
MAX_OUTLIER_LINES = 16
REASON = "timestamp outlier"


@dataclass(frozen=True)
class TimeCluster:
    """Event lines of one block within :data:`GAP_NS` of each other: their time range, count
    and, for a cluster small enough to be an outlier, each line's (row in the block, ts, text)."""

    lo_ns: int
    hi_ns: int
    count: int
    members: tuple[tuple[int, int, str], ...] = ()


def time_clusters(rows: np.ndarray, ts: np.ndarray, text: object) -> list[TimeCluster]:
    """The clusters of a block's event lines (``rows``: line index in the block, ``ts``: their
    timestamps; ``text(row)``: the line). One cluster, without members unless small, when the
    block spans at most :data:`GAP_NS` (the common case: no sort)."""
    if not ts.size:
        return []
    assert callable(text)
    lo, hi = int(ts.min()), int(ts.max())
    if hi - lo <= GAP_NS:
        members = _members(rows, ts, text) if ts.size <= MAX_OUTLIER_LINES else ()
        return [TimeCluster(lo, hi, int(ts.size), members)]
    order = np.argsort(ts, kind="stable")
    s = ts[order]
    cuts = [0, *(np.flatnonzero(np.diff(s) > GAP_NS) + 1).tolist(), int(s.size)]
    out = []
    for a, b in itertools.pairwise(cuts):
        idx = order[a:b]
        members = _members(rows[idx], ts[idx], text) if b - a <= MAX_OUTLIER_LINES else ()
        out.append(TimeCluster(int(s[a]), int(s[b - 1]), b - a, members))
    return out


def _members(rows: np.ndarray, ts: np.ndarray, text: object) -> tuple[tuple[int, int, str], ...]:
    assert callable(text)
    pairs = sorted(zip(rows.tolist(), ts.tolist(), strict=True))
    return tuple((int(r), int(t), str(text(r))) for r, t in pairs)


@dataclass
class OutlierRule:
    """The bulk seen so far; judges each block's clusters in input order."""

    lo_ns: int | None = None
    hi_ns: int | None = None

    def outliers(self, clusters: list[TimeCluster]) -> list[TimeCluster]:
        """The clusters to quarantine; the others extend the bulk."""
        out = []
        for c in sorted(clusters, key=lambda c: (-c.count, c.lo_ns)):
            if self.lo_ns is None or self.hi_ns is None:
                self.lo_ns, self.hi_ns = c.lo_ns, c.hi_ns
                continue
            near = c.lo_ns <= self.hi_ns + GAP_NS and c.hi_ns >= self.lo_ns - GAP_NS
            if c.count > MAX_OUTLIER_LINES or near:
                self.lo_ns, self.hi_ns = min(self.lo_ns, c.lo_ns), max(self.hi_ns, c.hi_ns)
            else:
                out.append(c)
        return out

    def reason(self, ts_ns: int) -> str:
        assert self.lo_ns is not None and self.hi_ns is not None
        return (
            f"{REASON}: {ts_ns / 1e9:.6f} s is more than {GAP_NS // 1_000_000_000} s from the "
            f"trace's bulk [{self.lo_ns / 1e9:.6f}, {self.hi_ns / 1e9:.6f}] s"
        )


@dataclass
class Quarantined:
    """What :func:`drop_outliers` took out of one block."""

    tables: dict[str, pa.Table]
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (row, line, reason)


def drop_outliers(
    tables: dict[str, pa.Table], clusters: list[TimeCluster], rule: OutlierRule
) -> Quarantined:
    """Remove the rows of outlier clusters from ``tables`` (by their time ranges: every event
    of the block in that range belongs to the cluster) and list their lines."""
    bad = rule.outliers(clusters)
    if not bad:
        return Quarantined(tables)
    kept: dict[str, pa.Table] = {}
    for name, table in tables.items():
        ts = table.column("ts_ns")
        drop = pa.array(np.zeros(table.num_rows, bool))
        for c in bad:
            inside = pc.and_(pc.greater_equal(ts, c.lo_ns), pc.less_equal(ts, c.hi_ns))
            drop = pc.or_(drop, inside)
        kept[name] = table.filter(pc.invert(drop))
    rows = [(r, line, rule.reason(t)) for c in bad for r, t, line in c.members]
    return Quarantined(kept, sorted(rows))
