"""The answer at a glance: one sentence per RESULTS, a compact table, the outliers.

Every number comes from a view (``savings_total``, ``timeline``, ``run_policies``); this
module only picks and words them (ADR 0430). The sentence compares the newest upstream kernel
(``linux-7.1``) with the RFC thread's kernel (``linux-6.5``), then names the proposal with
the fewest KVM shootdowns (the ``oracle`` is a bound, not a proposal, and is not named):

    vfio-pinned (1 VM, 40 s replayed): linux-7.1 would take KVM shootdowns from 482
    (linux-6.5) to 127 (-74%); rfc-v2 and notify-changed to 0 (-100% against linux-7.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipeline.analyze.output import UNDEFINED, change_text, count_text
from pipeline.analyze.views import connect
from pipeline.clikit import plural
from pipeline.replay.workload import TRACE_REFAULTS

#: The reference kernels of the sentence: the RFC thread's, then newest upstream.
OLD, NEW = "linux-6.5", "linux-7.1"
#: Policies that bound the answer rather than propose a kernel change.
BOUNDS = ("oracle",)
#: Policies named so are upstream kernels as released, not proposals.
KERNEL_PREFIX = "linux-"
#: An epoch of one VM carrying at least this share of a policy's total is an outlier...
OUTLIER_SHARE = 0.5
#: ... when that total is at least this many shootdowns (a share of 3 flushes says nothing).
OUTLIER_MIN_FLUSHES = 20

#: Totals per policy; summed over the hosts of a fleet (its views have a `host` key).
TOTALS_SQL = (
    "SELECT policy, sum(remote_tlb_flushes), sum(cost_us) FROM savings_total "
    "JOIN run_policies USING (policy) GROUP BY policy, policy_rank ORDER BY policy_rank"
)
#: VMs, and the replayed span: the dataset's last access epoch (replay runs to it), else the
#: last epoch with a counter.
SPAN_SQL = """
SELECT
    (SELECT coalesce(sum(vms), 0) FROM savings_total WHERE policy =
        (SELECT policy FROM run_policies ORDER BY policy_rank LIMIT 1)),
    coalesce(
        -- the span replay covered (ADR 0380): RESULTS' n_epochs of its epoch_ms
        (SELECT CAST(manifest ->> 'n_epochs' AS BIGINT) * CAST(manifest ->> 'epoch_ms' AS BIGINT)
         FROM results_manifest),
        (SELECT (max(a.epoch) + 1) * coalesce(
            CAST(m.manifest ->> 'dataset_epoch_ms' AS BIGINT),
            CAST(m.manifest ->> 'epoch_ms' AS BIGINT))
         FROM accesses AS a, results_manifest AS m GROUP BY m.manifest),
        (SELECT max(t_ms) + max(epoch_ms) FROM timeline, per_point._run_points),
        0)
"""
#: Per policy: its total and its largest (vm, epoch) cell (ties: first vm, then epoch).
OUTLIER_SQL = """
WITH cells AS (
    SELECT policy, vm, epoch, t_ms, remote_tlb_flushes AS flushes,
        sum(remote_tlb_flushes) OVER (PARTITION BY policy) AS total,
        row_number() OVER (PARTITION BY policy ORDER BY remote_tlb_flushes DESC, vm, epoch)
            AS k
    FROM timeline
)
SELECT policy, vm, epoch, t_ms, flushes, total
FROM cells JOIN run_policies USING (policy)
WHERE k = 1 AND total >= ? AND flushes >= ? * total
ORDER BY policy_rank
"""


@dataclass(frozen=True)
class Outlier:
    """One epoch of one VM carrying most of a policy's KVM shootdowns."""

    policy: str
    vm: str
    epoch: int
    t_ms: int
    flushes: int
    total: int

    def text(self) -> str:
        share = 100 * self.flushes / self.total
        return (
            f"{share:.0f}% of {self.policy}'s {count_text(self.total)} KVM shootdowns come "
            f"from one epoch of VM {self.vm} (epoch {self.epoch}, t = {self.t_ms / 1000:g} s)"
        )


@dataclass(frozen=True)
class Verdict:
    """The answer of one RESULTS: KVM shootdowns (all VMs) per policy, in display order."""

    name: str
    vms: int
    seconds: float
    flushes: dict[str, int]
    cost_us: dict[str, float]
    outliers: tuple[Outlier, ...] = ()
    sweep: bool = False
    #: the workload replayed when it was not the trace's own (RESULTS manifest, ADR 0381)
    workload: str | None = None

    @property
    def nothing_happened(self) -> bool:
        """No policy made a KVM shootdown (e.g. the numa_balancing=0 control)."""
        return not any(self.flushes.values())

    def sentence(self) -> str:
        """One sentence answering the question for this dataset."""
        of = f" of its {self.workload}" if self.workload else ""
        head = f"{self.name} ({plural(self.vms, 'VM')}, {self.seconds:g} s{of} replayed)"
        if self.sweep:
            return f"{head}: a sweep; see its savings per grid point (`sweep_savings`)."
        if not self.flushes:
            return f"{head}: no policy was replayed."
        if self.nothing_happened:
            return f"{head}: nothing happened: no policy made a KVM shootdown."
        best = self._best()
        if OLD in self.flushes and NEW in self.flushes:
            old, new = self.flushes[OLD], self.flushes[NEW]
            if old == new:
                first = f"{NEW} would leave KVM shootdowns at {count_text(new)}, as {OLD}"
            else:
                first = (
                    f"{NEW} would take KVM shootdowns from {count_text(old)} ({OLD}) to "
                    f"{count_text(new)} ({change_text(old, new)})"
                )
            ref = NEW
        else:
            ref = next(iter(self.flushes))
            first = f"{ref} makes {count_text(self.flushes[ref])} KVM shootdowns"
        if not best:
            return f"{head}: {first}."
        value = self.flushes[best[0]]
        if value >= self.flushes[ref]:
            return f"{head}: {first}; no proposal makes fewer."
        rest = (
            f"{and_list(best)} to {count_text(value)} "
            f"({change_text(self.flushes[ref], value)} against {ref})"
        )
        return f"{head}: {first}; {rest}."

    def _best(self) -> list[str]:
        """The proposals (no upstream kernel, no bound) with the fewest shootdowns."""
        others = {
            p: v
            for p, v in self.flushes.items()
            if not p.startswith(KERNEL_PREFIX) and p not in BOUNDS
        }
        if not others:
            return []
        low = min(others.values())
        return [p for p, v in others.items() if v == low]

    def table_lines(self) -> list[str]:
        """A compact table (under 80 columns): policy, shootdowns, change against both
        references, modelled cost."""
        refs = [r for r in (OLD, NEW) if r in self.flushes]
        width = max([len("policy"), *(len(p) for p in self.flushes)])
        heads = ["KVM shootdowns", *(f"vs {r}" for r in refs), "cost (ms)"]
        lines = ["  " + f"{'policy':<{width}}" + "".join(f"{h:>16}" for h in heads)]
        for policy, value in self.flushes.items():
            cells = [count_text(value)]
            cells += [change_text(self.flushes[r], value) for r in refs]
            cost = self.cost_us.get(policy)
            cells.append(UNDEFINED if cost is None else f"{cost / 1000:,.1f}")
            lines.append("  " + f"{policy:<{width}}" + "".join(f"{c:>16}" for c in cells))
        return lines


def and_list(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def verdict_of(con: duckdb.DuckDBPyConnection, name: str, *, sweep: bool = False) -> Verdict:
    """The :class:`Verdict` of the views on ``con`` (a plain replay; a sweep gets a pointer
    to its per-point views)."""
    ((vms, span_ms),) = con.sql(SPAN_SQL).fetchall()
    if sweep:
        return Verdict(name, int(vms), float(span_ms) / 1000, {}, {}, sweep=True)
    flushes: dict[str, int] = {}
    cost: dict[str, float] = {}
    for policy, value, cost_us in con.sql(TOTALS_SQL).fetchall():
        flushes[str(policy)] = int(value or 0)
        cost[str(policy)] = float(cost_us or 0)
    rows = con.execute(OUTLIER_SQL, [OUTLIER_MIN_FLUSHES, OUTLIER_SHARE]).fetchall()
    outliers = tuple(
        Outlier(str(p), str(vm), int(e), int(t), int(f), int(total))
        for p, vm, e, t, f, total in rows
    )
    return Verdict(
        name, int(vms), float(span_ms) / 1000, flushes, cost, outliers, workload=_workload(con)
    )


def _workload(con: duckdb.DuckDBPyConnection) -> str | None:
    """The RESULTS manifest's stated workload (``[lab] workload``), None for the trace's or a
    synthetic DATASET's own accesses."""
    rows = con.sql("SELECT manifest -> 'workload' ->> 'name' FROM results_manifest").fetchall()
    name = rows[0][0] if rows else None
    return str(name) if name and name != TRACE_REFAULTS else None


def load_verdict(results: Path, name: str | None = None) -> Verdict:
    """The :class:`Verdict` of one RESULTS directory, named after it unless ``name``."""
    con, run = connect(results)
    try:
        # absolute, not resolved: RESULTS may be a link to a snapshot directory (issue 16)
        return verdict_of(con, name or Path(results).absolute().name, sweep=run.sweep)
    finally:
        con.close()


def verdict_lines(verdict: Verdict, *, table: bool = True) -> list[str]:
    """The sentence, the outliers and (``table``) the compact table of one verdict."""
    lines = [verdict.sentence()]
    lines += [f"  note: {o.text()}" for o in verdict.outliers]
    if table and verdict.flushes and not verdict.nothing_happened:
        lines += verdict.table_lines()
    return lines
