"""CLI commands: calibrate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from pipeline.clikit import QUIET_OPTION, command, reporter


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _err(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value * 100:+.1f}%"


def _bg(value: float) -> str:
    """The host background subtracted from a vmstat counter ("" for trace counters)."""
    return "" if value == 0 else _fmt(value)


FORMATS = ("table", "markdown", "json")
MARKDOWN_COLUMNS = (
    ("remote_tlb_flushes", "KVM flushes"),
    ("notifier_calls", "notifiers"),
    ("notifier_bytes", "notifier MiB"),
    ("spte_zapped", "SPTE zaps"),
    ("refaults", "refaults"),
    ("numa_pte_updates", "pte_updates"),
    ("numa_huge_pte_updates", "huge_pte_updates"),
    ("numa_hint_faults", "hint_faults"),
    ("scans", "scans"),
    ("scan_interval_ms", "interval ms"),
)


def _markdown(tables: list[tuple[str, object]]) -> list[str]:
    """Two markdown tables (totals, then per scan): one row per capture, cells
    ``observed / simulated (error)``."""
    import polars as pl

    lines: list[str] = []
    for suffix, title in (("", "totals"), ("_per_scan", "per scan reaching guest RAM")):
        cols = [
            (c + suffix, h)
            for c, h in MARKDOWN_COLUMNS
            if suffix == "" or c not in ("scans", "scan_interval_ms")
        ]
        lines.append(f"**{title}** (observed / simulated (error))")
        lines.append("")
        lines.append("| capture | " + " | ".join(h for _, h in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, table in tables:
            assert isinstance(table, pl.DataFrame)
            rows = {r["counter"]: r for r in table.iter_rows(named=True)}
            cells = []
            for counter, _ in cols:
                cells.append(_cell(counter, rows[counter]))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if suffix == "" and len(tables) > 1:
            lines.append(_pooled_row(tables, cols))
        lines.append("")
    lines.extend(_na_notes(tables))
    return lines


def _na_reasons(table: object) -> dict[str, list[str]]:
    """Reason -> the counters it leaves ``n/a`` (per-scan variants folded in), said once."""
    import polars as pl

    assert isinstance(table, pl.DataFrame)
    out: dict[str, list[str]] = {}
    if "na_reason" not in table.columns:
        return out
    for row in table.iter_rows(named=True):
        reason = row["na_reason"]
        name = str(row["counter"]).removesuffix("_per_scan")
        if reason and name not in out.setdefault(reason, []):
            out[reason].append(name)
    return out


def _na_notes(tables: list[tuple[str, object]]) -> list[str]:
    """One line per capture and reason: which counters are ``n/a`` and why."""
    lines = []
    for name, table in tables:
        for reason, counters in _na_reasons(table).items():
            lines.append(f"- {name}: n/a {', '.join(counters)}: {reason}")
    return [*lines, ""] if lines else []


def _json(tables: list[tuple[str, object]]) -> str:
    """The same numbers as the tables, machine-readably: per DATASET its policy, each
    counter's observed / simulated / rel_error / host_background (null for n/a) and na_reason,
    and with several DATASETs the pooled ``all captures`` totals."""
    import json

    import polars as pl

    from pipeline.analyze.calibrate import pooled

    def num(value: float) -> float | str | None:
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value

    doc: dict[str, Any] = {"captures": []}
    frames = []
    for name, table in tables:
        assert isinstance(table, pl.DataFrame)
        frames.append(table)
        counters = {}
        for row in table.iter_rows(named=True):
            counters[row["counter"]] = {
                "observed": num(row["observed"]),
                "simulated": num(row["simulated"]),
                "rel_error": num(row["rel_error"]),
                "host_background": num(row["host_background"]),
                "na_reason": row.get("na_reason"),
            }
        doc["captures"].append(
            {"dataset": name, "policy": table["policy"][0], "counters": counters}
        )
    if len(frames) > 1:
        doc["all_captures"] = {
            r["counter"]: {k: num(r[k]) for k in ("observed", "simulated", "rel_error")}
            for r in pooled(frames).iter_rows(named=True)
        }
    return json.dumps(doc, indent=2, sort_keys=False)


def _cell(counter: str, row: dict[str, Any]) -> str:
    """``observed / simulated (error)``; notifier bytes in MiB."""
    scale = 1 / (1 << 20) if counter.startswith("notifier_bytes") else 1
    return (
        f"{_fmt(row['observed'] * scale)} / {_fmt(row['simulated'] * scale)} "
        f"({_err(row['rel_error'])})"
    )


def _pooled_row(tables: list[tuple[str, object]], cols: list[tuple[str, str]]) -> str:
    """The totals row of all captures added up (calibrate.pooled()); blank where a counter
    does not add up over captures (the interval)."""
    import polars as pl

    from pipeline.analyze.calibrate import pooled

    frames = [t for _, t in tables if isinstance(t, pl.DataFrame)]
    rows = {r["counter"]: r for r in pooled(frames).iter_rows(named=True)}
    cells = []
    for counter, _ in cols:
        r = rows.get(counter)
        cells.append("" if r is None else _cell(counter, r))
    return "| **all captures** | " + " | ".join(cells) + " |"


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""

    @command(app, "calibrate")
    def calibrate_cmd(  # noqa: PLR0917 - typer maps parameters to options
        datasets: list[Path] = typer.Argument(  # noqa: B008
            ..., metavar="DATASET...", help="DATASETs ingested from lab captures"
        ),
        sidecar: Path | None = typer.Option(  # noqa: B008
            None, "--sidecar", help="the lab sidecar (default: the one recorded by ingest)"
        ),
        vmstat: Path | None = typer.Option(  # noqa: B008
            None, "--vmstat", help="the capture's .vmstat.json (default: beside the trace)"
        ),
        policy: str | None = typer.Option(
            None, "--policy", help="default: the policy of the capture's kernel (linux-6.18)"
        ),
        epoch_ms: int = typer.Option(100, "--epoch-ms", min=1),
        markdown: bool = typer.Option(
            False, "--markdown", help="markdown tables, all DATASETs (= --format markdown)"
        ),
        fmt: str = typer.Option(
            "table", "--format", help="table | markdown | json (the same numbers)"
        ),
        no_hosting: bool = typer.Option(
            False,
            "--no-hosting",
            help="withhold capture.json and the lab's measurements: the default VMM "
            "profile and what the trace and the [lab] workload show (ADR 0365)",
        ),
        quiet: bool = QUIET_OPTION,
    ) -> None:
        """Replay a lab capture's known workload; simulated vs observed counters with errors."""
        from pipeline.analyze.calibrate import calibrate
        from pipeline.errors import InputError

        if len(datasets) > 1 and (sidecar or vmstat):
            raise InputError("--sidecar", "give --sidecar/--vmstat with a single DATASET only")
        if fmt not in FORMATS:
            raise InputError("--format", f"unknown format `{fmt}`; use one of {', '.join(FORMATS)}")
        if markdown:
            fmt = "markdown"
        tables = []
        with reporter(quiet) as rep:
            task = rep.task("calibrate", total=len(datasets), unit="captures")
            for ds in datasets:
                table = calibrate(
                    ds,
                    sidecar=sidecar,
                    vmstat=vmstat,
                    policy=policy,
                    epoch_ms=epoch_ms,
                    hosting=not no_hosting,
                )
                tables.append((ds, table))
                rep.advance(task)
        named: list[tuple[str, object]] = [(ds.name, table) for ds, table in tables]
        if fmt == "json":
            typer.echo(_json(named))
            return
        if fmt == "markdown":
            for line in _markdown(named):
                typer.echo(line)
            return
        for ds, table in tables:
            typer.echo(f"{ds} (policy {table['policy'][0]})")
            typer.echo(
                f"  {'counter':<32}{'observed':>16}{'host bg':>12}{'simulated':>16}{'error':>10}"
            )
            for row in table.iter_rows(named=True):
                typer.echo(
                    f"  {row['counter']:<32}{_fmt(row['observed']):>16}"
                    f"{_bg(row['host_background']):>12}"
                    f"{_fmt(row['simulated']):>16}{_err(row['rel_error']):>10}"
                )
            for line in _na_notes([(str(ds), table)]):
                typer.echo(line)
