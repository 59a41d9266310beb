"""report.html: one self-contained page (inline CSS, PNGs as data URIs) over RESULTS dirs.

Each RESULTS directory (one replayed dataset) gets one section: the headline table
(``shootdowns``), the savings (``savings_headline``), the plots, the audits, observed vs
simulated numbers for a real trace, the run's parameters and the input manifests. The PNGs
are written beside the page too. Every number comes from a view (``SELECT ... FROM view``);
this module only arranges them.

Why one module over 500 lines: the page is one HTML document (sections, parts, tables, the
answer first) built in one pass; the plots are in :mod:`pipeline.analyze.plots` and the RFC part
in :mod:`pipeline.analyze.rfc_thread`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
from rich.progress import TaskID

from pipeline import __version__
from pipeline.analyze import plots, rfc_thread, sweep_plots
from pipeline.analyze.output import display_text, page_size_sql
from pipeline.analyze.query import Audit, run_audits
from pipeline.analyze.verdict import Verdict, verdict_lines, verdict_of
from pipeline.analyze.views import Run, connect_in_memory, sql_literal
from pipeline.clikit import Reporter, reporter
from pipeline.errors import OutputError, QueryError, TlbReplayError
from pipeline.outdir import atomic_output_dir, check_replaceable
from pipeline.schema import write_manifest
from pipeline.workers import die_with_parent

REPORT = "report.html"
#: What `tlbreplay verdict RESULTS...` prints for the same RESULTS, written beside the page
#: from the sections' verdicts, so `make pipeline` need not query every RESULTS again (ADR 0426)
VERDICT = "verdict.txt"

#: The report's queries: (key, title, SQL over the views). ``{point}`` is ``point, `` for a
#: sweep (its views are keyed by grid point, ADR 0410) and empty for a plain replay.
TABLES = (
    (
        "summary",
        "Savings, all VMs together",
        "SELECT s.* FROM savings_total AS s JOIN run_policies USING (policy) "
        "ORDER BY {point}policy_rank",
    ),
    (
        "headline",
        "Shootdowns per policy, VM and page size",
        "SELECT {point}policy, vm, page_size, remote_tlb_flushes, shootdown_ipis, "
        "kvm_unmap_gfn_range_calls, mmu_notifier_invalidations, spte_zapped, ept_violations, "
        "numa_hint_faults, numa_pages_migrated, numa_migrate_failed, host_tlb_flushes, cost_us "
        "FROM shootdowns JOIN run_policies USING (policy) "
        "ORDER BY {point}vm, {page_size}, policy_rank",
    ),
    (
        "savings",
        "Savings per VM against linux-6.5 and linux-7.1",
        "SELECT s.* FROM savings_headline AS s JOIN run_policies USING (policy) "
        "ORDER BY {point}vm, policy_rank",
    ),
    (
        "observed",
        "Observed (ftrace) vs simulated",
        # one column per policy (its simulated total), in display order; {policies} is the
        # quoted list from run_policies
        "PIVOT (SELECT {point}vm, counter, observed, observed_from, policy, simulated "
        "FROM observed_vs_simulated) ON policy IN ({policies}) USING first(simulated) "
        "GROUP BY {point}vm, counter, observed, observed_from ORDER BY {point}vm, counter",
    ),
    (
        "observed_raw",
        "Observed event counts",
        "SELECT * FROM observed ORDER BY vm NULLS LAST, counter, detail",
    ),
)
#: The tables of a sweep only: its grid points and the savings at each point.
SWEEP_TABLES = (
    ("points", "Grid points", "SELECT * FROM points ORDER BY point"),
    (
        "sweep_savings",
        "Savings at each point against the references at the same setting",
        "SELECT s.* FROM sweep_savings AS s JOIN run_policies USING (policy) "
        "ORDER BY s.point, s.baseline",
    ),
)
#: Rows of each plot, in the policies' display order (plots keep the order they get). For a
#: sweep, ``{label}`` makes each point a "policy" of its own, ``p<point> <policy>``, so the
#: plots show points side by side instead of adding them up.
PLOT_SQL = {
    view: f"SELECT v.* {{label}} FROM {view} AS v JOIN run_policies USING (policy) "
    f"ORDER BY {{point}}policy_rank, {keys}"
    for view, keys in (
        ("shootdowns", "vm, {page_size}"),
        ("timeline", "vm, epoch"),
        ("by_vcpu", "vm, vcpu"),
    )
}
SWEEP_LABEL = "REPLACE (concat('p', v.point, ' ', v.policy) AS policy)"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1250px; color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 2px solid #ddd; }
h3 { margin-top: 1.5em; } .muted { color: #666; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 12.5px; }
th, td { border: 1px solid #d5d5d5; padding: 3px 7px; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
th { background: #f2f4f7; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #e3e3e3; margin: .5em 0; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
.ok { color: #137333; } .fail { color: #b3261e; font-weight: bold; }
p.answer { font-size: 15px; margin: .4em 0; } .answers p.answer { margin: .3em 0 .3em; }
.nw { white-space: nowrap; } ul.outliers { margin: 0 0 .5em; color: #8a4b00; }
table.matrix td:first-child { white-space: nowrap; }
details summary { cursor: pointer; color: #444; }
@media (max-width: 600px) { body { margin: 1em auto; font-size: 13px; } h1 { font-size: 1.3em; } }
"""


@dataclass
class Section:
    """The report section of one RESULTS directory, everything already computed."""

    name: str
    run: Run
    tables: dict[str, pa.Table]
    images: dict[str, Path]
    audits: list[Audit]
    verdict: Verdict
    sensitivity: list[Path] = field(default_factory=list)
    rfc_thread: list[rfc_thread.Totals] | str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def _names(results: list[Path]) -> list[str]:
    names: list[str] = []
    for path in results:
        base = _slug(Path(os.path.abspath(path)).name)  # the output, not its version dir
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def build_section(results: Path, name: str, out: Path, *, threads: int = 1) -> Section:
    """Query the views of ``results`` (read into memory once, ADR 0427; ``threads``: DuckDB's)
    and draw its plots into ``out``."""
    con, run = connect_in_memory(results, threads=threads)
    try:
        tables, frames, audits = _query_section(con, sweep=run.sweep)
        verdict = verdict_of(con, name, sweep=run.sweep)
        sensitivity = _sweep_sensitivity(con, name, out) if run.sweep else []
        rfc = rfc_thread.query(con, run)
    except duckdb.Error as exc:  # e.g. a corrupt row group met while reading
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"{run.results}: {text}"
        raise QueryError(msg) from None
    finally:
        con.close()
    images = {
        "shootdowns": plots.plot_policy_bars(
            frames["shootdowns"], out / f"{name}-shootdowns.png", title=f"{name}: per policy"
        ),
        "timeline": plots.plot_timeline(
            frames["timeline"], out / f"{name}-timeline.png", title=f"{name}: per epoch"
        ),
        "by_vcpu": plots.plot_by_vcpu(
            frames["by_vcpu"], out / f"{name}-by_vcpu.png", title=f"{name}: per vCPU"
        ),
    }
    return Section(name, run, tables, images, audits, verdict, sensitivity, rfc)


def _query_section(
    con: duckdb.DuckDBPyConnection, *, sweep: bool = False
) -> tuple[dict[str, pa.Table], dict[str, pl.DataFrame], list[Audit]]:
    """Every table (:data:`TABLES`, and :data:`SWEEP_TABLES` for a sweep), plot frame
    (:data:`PLOT_SQL`) and audit of a section."""
    order = con.sql("SELECT policy FROM run_policies ORDER BY policy_rank").fetchall()
    fill = {
        "{policies}": ", ".join(sql_literal(str(p)) for (p,) in order) or "NULL",
        "{point}": "point, " if sweep else "",
        "{label}": SWEEP_LABEL if sweep else "",
        "{page_size}": page_size_sql(),
    }

    def sql_of(template: str) -> str:
        for key, value in fill.items():
            template = template.replace(key, value)
        return template

    queries = [*TABLES, *(SWEEP_TABLES if sweep else ())]
    tables = {key: con.sql(sql_of(sql)).to_arrow_table() for key, _, sql in queries}
    frames = {key: _polars(con.sql(sql_of(sql)).to_arrow_table()) for key, sql in PLOT_SQL.items()}
    return tables, frames, run_audits(con)


def _sweep_sensitivity(con: duckdb.DuckDBPyConnection, name: str, out: Path) -> list[Path]:
    """One sensitivity plot per key the sweep varies (:mod:`sweep_plots`), named after the
    section."""
    rows = _polars(con.sql(sweep_plots.SENSITIVITY_SQL).to_arrow_table())
    keys = sorted(set(rows["key"].to_list()))
    return [
        sweep_plots.plot_sensitivity(rows, k, out / f"{name}-sensitivity_{k}.png") for k in keys
    ]


def _polars(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _is_numeric(dtype: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)
    )


#: Column headers a person reads (the column's name stays in the header's title).
LABELS = {
    "remote_tlb_flushes": "KVM shootdowns",
    "flushes_saved_vs_6_5_pct": "shootdowns saved vs linux-6.5",
    "flushes_saved_vs_7_1_pct": "shootdowns saved vs linux-7.1",
    "cost_us": "modelled cost (µs)",
    "cost_saved_vs_6_5_pct": "cost saved vs linux-6.5",
    "cost_saved_vs_7_1_pct": "cost saved vs linux-7.1",
    "vms": "VMs",
    "vm": "VM",
    "page_size": "page size",
}


def html_table(rows: pa.Table, *, cls: str = "", labels: dict[str, str] | None = None) -> str:
    """An HTML table of ``rows``; numbers right-aligned; savings worded (``31,524x more``),
    undefined values ``—``; values escaped. ``labels`` renames headers (title: the column)."""
    numeric = [_is_numeric(f.type) for f in rows.schema]
    names = labels or {}
    head = "".join(
        f'<th title="{html.escape(n)}">{html.escape(names[n])}</th>'
        if n in names
        else f"<th>{html.escape(n)}</th>"
        for n in rows.column_names
    )
    body = []
    for record in rows.to_pylist():
        cells = "".join(
            f'<td class="num">{html.escape(display_text(k, v))}</td>'
            if num
            else f"<td>{html.escape(display_text(k, v))}</td>"
            for (k, v), num in zip(record.items(), numeric, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    attr = f' class="{cls}"' if cls else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'data-file="{html.escape(path.name)}">'
    )


def relative(text: str) -> str:
    """An absolute path under the working directory as a relative one (the page shows
    ``out/results/mixed``, not a machine's home); other text unchanged."""
    if not text.startswith("/"):
        return text
    try:
        return os.path.relpath(text) if Path(text).is_relative_to(Path.cwd()) else text
    except ValueError:
        return text


def _relative_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _relative_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative_json(v) for v in obj]
    return relative(obj) if isinstance(obj, str) else obj


def _folded(summary: str, obj: Any) -> str:
    """JSON folded away under ``summary`` (paths relative)."""
    text = json.dumps(_relative_json(obj), indent=2, sort_keys=True, default=str)
    return (
        f"<details><summary>{html.escape(summary)}</summary>"
        f"<pre>{html.escape(text)}</pre></details>"
    )


def answer_html(verdict: Verdict) -> str:
    """The verdict's sentence and its outliers (one epoch carrying most of a total)."""
    esc = html.escape
    notes = "".join(f"<li>{esc(o.text())}</li>" for o in verdict.outliers)
    sentence = esc(verdict.sentence())
    head, sep, rest = sentence.partition(" (")
    sentence = f"<b>{head}</b>{sep}{rest}" if sep else sentence
    for name in sorted(verdict.flushes, key=len, reverse=True):  # no line break inside a name
        sentence = re.sub(
            rf"(?<![\w-]){re.escape(esc(name))}(?![\w-])",
            f'<span class="nw">{esc(name)}</span>',
            sentence,
        )
    return f'<p class="answer">{sentence}</p>' + (
        f'<ul class="outliers">{notes}</ul>' if notes else ""
    )


def _part(key: str, title: str, *body: str) -> list[str]:
    return [
        f'<section class="part" data-part="{key}"><h3>{html.escape(title)}</h3>',
        *body,
        "</section>",
    ]


def render_section(section: Section) -> str:
    """The HTML of one section (``<section class="run" id=...>`` with sub-sections): the
    answer first, then the summary, plots, details and the folded manifests."""
    s, t = section.name, section.tables
    esc = html.escape
    run = section.run
    dataset = (
        relative(str(run.dataset)) if run.dataset else f"{run.manifest.get('dataset')} (missing)"
    )
    parts = [
        f'<section class="run" id="run-{esc(s)}" data-results="{esc(relative(str(run.path)))}">',
        f"<h2>{esc(s)}</h2>",
        answer_html(section.verdict),
        f'<p class="muted">RESULTS {esc(relative(str(run.path)))} · DATASET {esc(dataset)}</p>',
        *rfc_thread.render(section.rfc_thread),
        *(_sweep_parts(section) if run.sweep else []),
        *_part("summary", TABLES[0][1], html_table(t["summary"], labels=LABELS)),
        *_part(
            "plots",
            "Plots",
            _img(
                section.images["shootdowns"],
                f"{s}: counters per policy, stacked by VM and page size",
            ),
            _img(section.images["timeline"], f"{s}: shootdowns and scanner activity per epoch"),
            _img(section.images["by_vcpu"], f"{s}: per vCPU"),
        ),
    ]
    if section.verdict.vms > 1 or run.sweep:  # one VM: the same numbers as the summary
        parts += _part(
            "savings",
            TABLES[2][1],
            '<p class="muted">Share of the reference kernel\'s count that the policy avoids; '
            'negative or "Nx more": it does more; — when the reference did nothing.</p>',
            html_table(t["savings"], labels=LABELS),
        )
    parts += _part(
        "headline",
        TABLES[1][1],
        "<details><summary>every counter (table)</summary>",
        html_table(t["headline"]),
        "</details>",
    )
    if t["observed_raw"].num_rows:
        parts += _part(
            "observed",
            TABLES[3][1],
            '<p class="muted">The real kernel\'s counts from the trace (observed) next to '
            "each policy's simulated total, one column per policy; the policy matching the "
            "traced kernel is the calibration column. observed_from names the ftrace event "
            "each count comes from.</p>",
            html_table(t["observed"]),
            f"<details><summary>{esc(TABLES[4][1])}</summary>",
            html_table(t["observed_raw"]),
            "</details>",
        )
    audit_rows = "".join(
        f'<li><span class="{"ok" if a.rows.num_rows == 0 else "fail"}">'
        f"{'ok' if a.rows.num_rows == 0 else 'FAIL'}</span> <b>{esc(a.name)}</b>: {esc(a.doc)}"
        + (html_table(a.rows.slice(0, 50)) if a.rows.num_rows else "")
        + "</li>"
        for a in section.audits
    )
    parts += [
        *_part("audits", "Audits", f"<ul>{audit_rows}</ul>"),
        *_part("parameters", "Run parameters", _folded("RESULTS manifest.json", run.manifest)),
        *_part(
            "manifest",
            "Input manifest",
            _folded("DATASET manifest.json", run.dataset_manifest)
            if run.dataset_manifest is not None
            else "<p>dataset missing</p>",
        ),
        "</section>",
    ]
    return "\n".join(parts)


def _sweep_parts(section: Section) -> list[str]:
    """The grid points, the savings per point and the sensitivity plots of a sweep."""
    esc, t = html.escape, section.tables
    images = [
        _img(p, f"{section.name}: savings against {p.stem.rsplit('sensitivity_', 1)[-1]}")
        for p in section.sensitivity
    ]
    return [
        '<section class="part" data-part="sweep"><h3>Sweep</h3>',
        '<p class="muted">One replay per grid point. The tables below are per point '
        "(<code>point</code> column); a policy is compared with the references replayed at the "
        "same setting (the same grid values but the policy). The plots draw each point as "
        "<code>p&lt;point&gt; &lt;policy&gt;</code>.</p>",
        f"<h4>{esc(SWEEP_TABLES[0][1])}</h4>",
        html_table(t["points"]),
        f"<h4>{esc(SWEEP_TABLES[1][1])}</h4>",
        html_table(t["sweep_savings"]),
        "<h4>Sensitivity: savings against each varied key</h4>",
        *(images or ['<p class="muted">the grid varies no key but the policy</p>']),
        "</section>",
    ]


def _matrix_cell(value: int | None, low: int | None) -> str:
    if value is None:
        return "—"
    return f"<b>{value:,}</b>" if value == low else f"{value:,}"


def matrix_html(sections: list[Section]) -> str:
    """Runs x policies: each run's KVM shootdowns per policy (all VMs); the fewest of a row
    in bold."""
    esc = html.escape
    policies: list[str] = []
    for sec in sections:
        policies += [p for p in sec.verdict.flushes if p not in policies]
    head = "".join(f"<th>{esc(p)}</th>" for p in policies)
    body = []
    for sec in sections:
        values = sec.verdict.flushes
        low = min(values.values(), default=None)
        cells = "".join(
            f'<td class="num">{_matrix_cell(values.get(p), low)}</td>' for p in policies
        )
        body.append(f'<tr><td><a href="#run-{esc(sec.name)}">{esc(sec.name)}</a></td>{cells}</tr>')
    return (
        '<div class="scroll"><table class="matrix"><thead><tr><th>run</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def render_page(sections: list[Section]) -> str:
    """The whole page: the answer (one sentence per run, the runs x policies matrix), then
    one section per run."""
    answers = "".join(answer_html(s.verdict) for s in sections)
    body = "\n".join(render_section(s) for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>tlbreplay report</title>"
        f"<style>{CSS}</style></head><body>"
        "<h1>tlbreplay report</h1>"
        '<p class="muted">How many TLB shootdowns does NUMA balancing cost each VM, and what '
        f"would each kernel policy save? tlbreplay {html.escape(__version__)}.</p>"
        f'<section class="answers"><h2>The answer</h2>{answers}'
        "<h3>KVM shootdowns per run and policy (all VMs)</h3>"
        f"{matrix_html(sections)}</section>\n{body}\n</body></html>\n"
    )


def verdict_text(results: list[Path], sections: list[Section]) -> str:
    """The lines of `tlbreplay verdict` (no table) for ``results``: each verdict named after
    its RESULTS path (:func:`pipeline.analyze.verdict.load_verdict`), not its section slug."""
    lines = []
    for path, section in zip(results, sections, strict=True):
        named = dataclasses.replace(section.verdict, name=Path(path).absolute().name)
        lines += verdict_lines(named, table=False)
    return "".join(f"{line}\n" for line in lines)


def _section_job(results: Path, name: str, out: Path, threads: int) -> Section:
    """build_section in a worker process; a project error comes back as a QueryError with
    the same message (the error classes that take several arguments do not unpickle)."""
    try:
        return build_section(results, name, out, threads=threads)
    except TlbReplayError as exc:
        raise QueryError(str(exc)) from None


def _build_sections(
    jobs: list[tuple[Path, str]], out: Path, workers: int, rep: Reporter, task: TaskID
) -> list[Section]:
    """build_section for every (RESULTS, name), in order; in ``workers`` processes if > 1.

    Sections are independent (one DuckDB connection and three figures each), so they build
    in parallel; the page is assembled in input order, so the output does not depend on it.
    """
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))  # DuckDB's, per process
    if workers <= 1:
        sections = []
        for path, name in jobs:
            sections.append(build_section(path, name, out, threads=threads))
            rep.advance(task)
        return sections
    context = multiprocessing.get_context("spawn")  # no fork of DuckDB's threads
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=die_with_parent,  # no orphan after a kill -9 (ADR 0006)
        initargs=(os.getpid(),),
    ) as pool:
        futures = [pool.submit(_section_job, path, name, out, threads) for path, name in jobs]
        for future in as_completed(futures):
            future.result()
            rep.advance(task)
        return [f.result() for f in futures]


def write_report(
    results: list[Path],
    out: Path,
    *,
    quiet: bool = True,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Write ``out/report.html`` and the PNGs of every RESULTS dir; return the page's path.

    ``workers``: processes building sections (default: one per CPU, at most one per
    RESULTS). ``out`` is replaced atomically (nothing is left behind on an error).
    """
    if not results:
        msg = "give at least one RESULTS directory"
        raise OutputError(out, msg)
    target = Path(out).resolve()
    for path in results:  # every input checked before any work
        run = Run.open(path)
        inputs = [run.results, *([run.dataset] if run.dataset else [])]
        if any(target == p or target in p.parents for p in inputs):
            msg = f"would replace the input `{path}`; choose another `--out`"
            raise OutputError(out, msg)
    jobs = list(zip(results, _names(results), strict=True))
    if workers is None:
        workers = min(len(jobs), os.cpu_count() or 1)
    check_replaceable(Path(out), "report", force=force)
    with atomic_output_dir(out, kind="report", force=force) as tmp, reporter(quiet) as rep:
        task = rep.task("report", total=len(jobs), unit="sections")
        sections = _build_sections(jobs, tmp, workers, rep, task)
        (tmp / REPORT).write_text(render_page(sections))
        (tmp / VERDICT).write_text(verdict_text(results, sections))
        write_manifest(
            tmp,
            {
                "kind": "report",
                "tool": f"tlbreplay {__version__}",
                "results": [relative(str(s.run.path)) for s in sections],
                "files": sorted(
                    p.name for p in tmp.iterdir() if p.suffix in {".html", ".png", ".txt"}
                ),
            },
        )
    return Path(out) / REPORT
