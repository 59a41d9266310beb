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
    return lines


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
        markdown: bool = typer.Option(False, "--markdown", help="markdown tables, all DATASETs"),
        no_hosting: bool = typer.Option(
            False,
            "--no-hosting",
            help="replay guest RAM alone on an idle host with vCPUs owning a CPU (the "
            "engine's defaults), without the capture's VMM areas, CPU share and host load",
        ),
        quiet: bool = QUIET_OPTION,
    ) -> None:
        """Replay a lab capture's known workload; simulated vs observed counters with errors."""
        from pipeline.analyze.calibrate import calibrate

        if len(datasets) > 1 and (sidecar or vmstat):
            from pipeline.errors import InputError

            raise InputError("--sidecar", "give --sidecar/--vmstat with a single DATASET only")
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
        if markdown:
            for line in _markdown([(ds.name, table) for ds, table in tables]):
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
