"""CLI command of stage 1 (to Parquet): ingest."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.clikit import QUIET_OPTION, command


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @command(app, "ingest")
    def ingest(
        sources: list[str] = typer.Argument(  # noqa: B008
            ..., metavar="SRC...", help="ftrace text, .gz/.zst of it, trace.dat, or - for stdin"
        ),
        out: Path = typer.Option(..., "--out", "-o", help="DATASET directory to write"),  # noqa: B008
        vm_config: Path | None = typer.Option(  # noqa: B008
            None, "--vm-config", help="VM description TOML (sidecar); else inferred from the trace"
        ),
        epoch_ms: int = typer.Option(100, "--epoch-ms", help="epoch length of table accesses"),
        quiet: bool = QUIET_OPTION,
    ) -> None:
        """Parse ftrace text / trace.dat into a DATASET (typed event tables, accesses, vms)."""
        from pipeline.clikit import reporter
        from pipeline.ingest.runner import run_ingest

        with reporter(quiet, bytes_=True) as rep:
            total = _total_bytes(sources)
            task = rep.task("ingest", total=total)
            manifest = run_ingest(
                sources,
                out,
                vm_config=vm_config,
                epoch_ms=epoch_ms,
                progress=lambda n: rep.advance(task, n),
            )
        if not quiet:
            typer.echo(
                f"{out}: {manifest['parsed']} events, {manifest['comments']} comment lines, "
                f"{manifest['quarantined']} quarantined, {manifest['tables']['accesses']} "
                f"access rows ({manifest['accesses_from']})",
                err=True,
            )


def _total_bytes(sources: list[str]) -> int | None:
    total = 0
    for src in sources:
        p = Path(src)
        if src == "-" or not p.is_file():
            return None
        total += p.stat().st_size
    return total
