"""The report's "RFC thread" part: Yan Zhao's boot tables beside the engine's (issue 12).

Her numbers (KERNEL.md §2.5; "[RFC PATCH v2 0/5] Reduce NUMA balance caused
TLB-shootdowns in a VM", 11 and 14 Aug 2023): NUMA-balancing-caused kvm_unmap_gfn_range()
calls and kvm_flush_remote_tlbs() over 10 guest boots without an assigned device (average,
best and worst boot), and "9000+ on average" KVM shootdowns with assigned devices, 0 under
the RFC. The engine's side are the counters ``numa_unmap_gfn_range_calls`` and
``numa_remote_tlb_flushes`` (the same calls: change_prot_numa()'s notifiers and RFC v2
numa_protect, no migration CLEARs), one total per seed: the ``synth_seed`` points of a sweep
(traces/grids/rfc-boot-seeds.toml, ``make rfc-boot``) or the one seed of a plain replay.

Self-contained: :func:`query` reads the views of one RESULTS, :func:`render` returns the HTML
part (nothing for a run the comparison is not about: see :func:`query`), :func:`checks` the
issue's done-when conditions as (condition, ok) lines.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipeline.analyze.views import Run

NO_DEVICE, ASSIGNED = "no device", "assigned device"
SPEC_NAME = "rfc-boot.toml"
POLICIES = ("linux-6.5", "rfc-v2", "linux-6.18", "linux-7.1")


@dataclass(frozen=True)
class Published:
    """One row of Yan Zhao's tables: average, best and worst boot (None: not published)."""

    unmap: tuple[int | None, int | None, int | None]
    flushes: tuple[int | None, int | None, int | None]


#: (case, policy) -> her numbers; the best/worst boot is the same boot for both counters
PUBLISHED: dict[tuple[str, str], Published] = {
    (NO_DEVICE, "linux-6.5"): Published((35, 28, 44), (8625, 13, 43920)),
    (NO_DEVICE, "rfc-v2"): Published((10037, 406, 17352), (4610, 195, 8668)),
    (ASSIGNED, "linux-6.5"): Published((None, None, None), (9000, None, None)),
    (ASSIGNED, "rfc-v2"): Published((None, None, None), (0, None, None)),
}

#: per (point or seed) totals of one RESULTS; {source} is the sweep or plain variant
_SWEEP_SQL = """
SELECT
    CASE WHEN coalesce(p.pinned, 0) > 0 THEN 'assigned device' ELSE 'no device' END AS vm_case,
    coalesce(p.synth_seed, p.point) AS seed,
    p.policy,
    coalesce(sum(e.numa_unmap_gfn_range_calls), 0) AS unmap,
    coalesce(sum(e.numa_remote_tlb_flushes), 0) AS flushes
FROM points AS p
LEFT JOIN epochs AS e ON e.point = p.point AND e.policy = p.policy
WHERE p.status = 'ok'
GROUP BY ALL
ORDER BY ALL
"""
_PLAIN_SQL = """
WITH pinned AS (
    SELECT count(*) > 0 AS any_pinned
    FROM (SELECT unnest(regions) AS r FROM vms)
    WHERE len(r.pinned) > 0
)
SELECT
    CASE WHEN (SELECT any_pinned FROM pinned) THEN 'assigned device' ELSE 'no device' END
        AS vm_case,
    coalesce(CAST(m.manifest ->> 'seed' AS BIGINT), 0) AS seed,
    r.policy,
    coalesce(sum(e.numa_unmap_gfn_range_calls), 0) AS unmap,
    coalesce(sum(e.numa_remote_tlb_flushes), 0) AS flushes
FROM run_policies AS r
CROSS JOIN results_manifest AS m
LEFT JOIN epochs AS e ON e.policy = r.policy
GROUP BY ALL
ORDER BY ALL
"""
#: a sweep qualifies when it varies nothing but these keys
_SEED_AXES = ("synth_seed", "pinned")


@dataclass(frozen=True)
class Totals:
    """One case and policy over its seeds."""

    case: str
    policy: str
    unmap: tuple[int, ...]
    flushes: tuple[int, ...]

    def stats(self, which: str) -> tuple[float, int, float, int]:
        """(mean, min, median, max) of ``unmap`` or ``flushes``."""
        xs = getattr(self, which)
        return statistics.fmean(xs), min(xs), statistics.median(xs), max(xs)


def _from_rfc_boot(run: Run) -> bool:
    """A plain replay of a DATASET synthesized from a spec named ``rfc-boot.toml``."""
    sources = (run.dataset_manifest or {}).get("sources") or []
    paths = [str(s.get("path", "")) if isinstance(s, dict) else str(s) for s in sources]
    return any(Path(p).name == SPEC_NAME for p in paths)


def query(con: duckdb.DuckDBPyConnection, run: Run) -> list[Totals] | str | None:
    """The per-seed totals of linux-6.5 and rfc-v2 (and the later kernels) of ``run``; the
    reason a seeds sweep gets no comparison; None for a run the comparison is not about: a
    sweep that does not vary ``synth_seed``, a plain replay of another DATASET than
    traces/rfc-boot.toml's, or one without linux-6.5 and rfc-v2."""
    if run.sweep:
        axes = {r[0] for r in con.sql("SELECT key FROM sweep_axes").fetchall()}
        if "synth_seed" not in axes:
            return None
        other = sorted(axes - set(_SEED_AXES))
        if other:
            return f"the sweep varies {', '.join(other)}; the comparison needs seeds only"
        rows = con.sql(_SWEEP_SQL).fetchall()
    elif _from_rfc_boot(run):
        rows = con.sql(_PLAIN_SQL).fetchall()
    else:
        return None
    by: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for case, _seed, policy, unmap, flushes in rows:
        if policy in POLICIES:
            by.setdefault((case, policy), []).append((int(unmap), int(flushes)))
    if not any(p in ("linux-6.5", "rfc-v2") for _, p in by):
        return None
    return [
        Totals(case, policy, tuple(u for u, _ in v), tuple(f for _, f in v))
        for (case, policy), v in sorted(by.items(), key=lambda kv: _order(*kv[0]))
    ]


def _order(case: str, policy: str) -> tuple[int, int]:
    return (0 if case == NO_DEVICE else 1, POLICIES.index(policy))


def checks(totals: list[Totals]) -> list[tuple[str, bool]]:
    """The issue's done-when conditions that this run can decide, each with its outcome."""
    t = {(x.case, x.policy): x for x in totals}
    out: list[tuple[str, bool]] = []
    base, rfc = t.get((NO_DEVICE, "linux-6.5")), t.get((NO_DEVICE, "rfc-v2"))
    for tot in (base, rfc):
        if tot is None:
            continue
        pub = PUBLISHED[(NO_DEVICE, tot.policy)]
        for which in ("unmap", "flushes"):
            avg, best, worst = getattr(pub, which)
            assert avg is not None and best is not None and worst is not None
            mean = tot.stats(which)[0]
            out.append(
                (
                    f"{tot.policy} {which}: mean {mean:,.0f} within 2x of {avg:,}",
                    avg / 2 <= mean <= avg * 2,
                )
            )
            xs = getattr(tot, which)
            out.append(
                (
                    f"{tot.policy} {which}: every seed in [{best / 2:,.1f}, {worst * 2:,}]",
                    all(best / 2 <= x <= worst * 2 for x in xs),
                )
            )
    if base is not None and rfc is not None:
        ratio = rfc.stats("flushes")[0] / max(base.stats("flushes")[0], 1e-9)
        out.append((f"flushes rfc-v2 / linux-6.5 = {ratio:.2f} < 1 (hers: 0.53)", ratio < 1))
    if base is not None and len(base.flushes) > 1:
        lo, hi = min(base.flushes), max(base.flushes)
        spread = hi / max(lo, 1)
        out.append(
            (f"linux-6.5 flushes max/min over the seeds = {spread:,.0f} >= 100", spread >= 100)
        )
    abase, arfc = t.get((ASSIGNED, "linux-6.5")), t.get((ASSIGNED, "rfc-v2"))
    if abase is not None:
        mean = abase.stats("flushes")[0]
        out.append((f"assigned device, linux-6.5: mean {mean:,.0f} flushes >= 1,000", mean >= 1000))
    if arfc is not None:
        out.append(("assigned device, rfc-v2: 0 flushes in every seed", max(arfc.flushes) == 0))
    return out


def _num(x: float | int | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if isinstance(x, float) else f"{x:,}"


def render(result: list[Totals] | str | None) -> list[str]:
    """The HTML part: one table row per case, policy and counter, her numbers beside the
    engine's mean and min / median / max over the seeds, then the checks."""
    if result is None:
        return []
    esc = html.escape
    head = [
        '<section class="part" data-part="rfc-thread"><h3>The RFC thread\'s numbers</h3>',
        '<p class="muted">Yan Zhao\'s boot tables (RFC v2, 11 and 14 Aug 2023; KERNEL.md '
        "§2.5): NUMA-balancing-caused kvm_unmap_gfn_range() calls and "
        "kvm_flush_remote_tlbs(), average / best / worst of 10 guest boots, beside the "
        "engine's <code>numa_unmap_gfn_range_calls</code> and "
        "<code>numa_remote_tlb_flushes</code>: mean and min / median / max over the seeds "
        "(each seed one synthetic boot and one draw of the mmu_lock contention process, "
        "ADR 0370). Her best and worst are whole boots (the same boot for both counters); "
        "the engine's min and max are per counter. The assigned-device case is her v1 "
        'cover letter ("9000+ on average" to 0).</p>',
    ]
    if isinstance(result, str):
        return [
            *head,
            f'<p class="muted">No comparison for this run: {esc(result)}.</p>',
            "</section>",
        ]
    cols = (
        "case",
        "policy",
        "counter",
        "Yan: average",
        "Yan: best boot",
        "Yan: worst boot",
        "engine: seeds",
        "engine: mean",
        "engine: min",
        "engine: median",
        "engine: max",
        "mean / her average",
    )
    rows = []
    for tot in result:
        pub = PUBLISHED.get((tot.case, tot.policy))
        for which, label in (
            ("unmap", "kvm_unmap_gfn_range"),
            ("flushes", "kvm_flush_remote_tlbs"),
        ):
            avg, best, worst = getattr(pub, which) if pub else (None, None, None)
            mean, lo, med, hi = tot.stats(which)
            if avg is not None and tot.case == ASSIGNED and which == "flushes" and avg:
                avg_text = f"{avg:,}+"
            else:
                avg_text = _num(avg)
            ratio = f"{mean / avg:.2f}" if avg else ""
            cells = (
                tot.case,
                tot.policy,
                label,
                avg_text,
                _num(best),
                _num(worst),
                str(len(getattr(tot, which))),
                _num(mean),
                _num(lo),
                _num(med),
                _num(hi),
                ratio,
            )
            rows.append(
                "<tr>"
                + "".join(
                    f'<td class="num">{esc(c)}</td>' if i >= 3 else f"<td>{esc(c)}</td>"
                    for i, c in enumerate(cells)
                )
                + "</tr>"
            )
    table = (
        '<div class="scroll"><table class="rfc-thread"><thead><tr>'
        + "".join(f"<th>{esc(c)}</th>" for c in cols)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )
    lines = "".join(
        f'<li><span class="{"ok" if ok else "fail"}">{"ok" if ok else "FAIL"}</span> '
        f"{esc(text)}</li>"
        for text, ok in checks(result)
    )
    return [*head, table, f"<h4>Issue 12 targets</h4><ul>{lines}</ul>", "</section>"]
