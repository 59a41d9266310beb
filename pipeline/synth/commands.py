"""CLI commands: synth (a synthetic DATASET from a workload spec; docs/spec.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pipeline.clikit import FORCE_OPTION, command, plural, reporter

SpecArg = Annotated[Path, typer.Argument(help="workload spec (TOML; see docs/spec.md)")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="DATASET directory to write")]
SeedOpt = Annotated[int | None, typer.Option("--seed", min=0, help="override the spec's `seed`")]
MaxRowsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-rows",
        min=1,
        help="refuse a spec whose estimated access rows exceed this (default 1e9)",
        show_default=False,
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="refuse a VM whose replay needs more engine state (e.g. 8G; default: half the RAM)",
        show_default=False,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""

    @command(app, "synth")
    def synth(  # noqa: PLR0917 - typer maps parameters to options
        spec: SpecArg,
        out: OutOpt,
        seed: SeedOpt = None,
        quiet: QuietOpt = False,
        force: bool = FORCE_OPTION,
        max_rows: MaxRowsOpt = None,
        max_memory: MaxMemoryOpt = None,
    ) -> None:
        """Generate a synthetic access trace (DATASET) from a workload spec."""
        from pipeline.model.memory import parse_bytes
        from pipeline.synth.runner import run_synth

        limit = parse_bytes(max_memory) if max_memory else None

        with reporter(quiet) as rep:

            def progress_factory(total: int) -> Callable[[int], None]:
                task = rep.task("synth", total=total, unit="epochs")
                return lambda n: rep.advance(task, n)

            result = run_synth(
                spec,
                out,
                seed=seed,
                progress_factory=progress_factory,
                force=force,
                max_rows=max_rows,
                max_memory_bytes=limit,
            )
        manifest = result.manifest
        counts = manifest["counts"]
        if not quiet:
            typer.echo(
                f"synth: {out}: {plural(counts['vms'], 'VM')}, "
                f"{plural(counts['accesses'], 'access row')} in "
                f"{plural(counts['accesses_files'], 'file')}, "
                f"{plural(manifest['parameters']['nr_epochs'], 'epoch')} "
                f"of {manifest['epoch_ms']} ms",
                err=True,
            )
