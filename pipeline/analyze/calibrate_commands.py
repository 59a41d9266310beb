"""CLI commands: calibrate."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from pipeline.clikit import command


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
        markdown: bool = typer.Option(False, "--markdown", help="one markdown table, all DATASETs"),
    ) -> None:
        """Replay a lab capture's known workload; simulated vs observed counters with errors."""
        from pipeline.analyze.calibrate import calibrate

        if len(datasets) > 1 and (sidecar or vmstat):
            from pipeline.errors import InputError

            raise InputError("--sidecar", "give --sidecar/--vmstat with a single DATASET only")
        tables = [
            (ds, calibrate(ds, sidecar=sidecar, vmstat=vmstat, policy=policy, epoch_ms=epoch_ms))
            for ds in datasets
        ]
        if markdown:
            typer.echo("| capture | counter | observed | simulated | error |")
            typer.echo("|---|---|---:|---:|---:|")
            for ds, table in tables:
                for row in table.iter_rows(named=True):
                    typer.echo(
                        f"| {ds.name} | {row['counter']} | {_fmt(row['observed'])} | "
                        f"{_fmt(row['simulated'])} | {_err(row['rel_error'])} |"
                    )
            return
        for ds, table in tables:
            typer.echo(f"{ds} (policy {table['policy'][0]})")
            typer.echo(f"  {'counter':<24}{'observed':>16}{'simulated':>16}{'error':>10}")
            for row in table.iter_rows(named=True):
                typer.echo(
                    f"  {row['counter']:<24}{_fmt(row['observed']):>16}"
                    f"{_fmt(row['simulated']):>16}{_err(row['rel_error']):>10}"
                )
