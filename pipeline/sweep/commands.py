"""CLI commands: sweep."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.clikit import FORCE_OPTION, QUIET_OPTION, command

SPEC_ARG = typer.Argument(..., help="synth spec (docs/spec.md), or a DATASET for engine keys only")
GRID_OPTION = typer.Option(..., "--grid", "-g", help="GRID.toml: the keys to vary (docs/scale.md)")
OUT_OPTION = typer.Option(..., "--out", "-o", help="RESULTS directory to write")
SCHEDULER_OPTION = typer.Option(
    None, "--scheduler", help="Dask scheduler address (default: a LocalCluster on this machine)"
)
SEED_OPTION = typer.Option(
    None, "--seed", help="base seed (default: the grid's `seed`, else the spec's)"
)
WORKERS_OPTION = typer.Option(2, "--workers", "-j", help="LocalCluster worker processes")
RESUME_OPTION = typer.Option(
    False, "--resume", help="keep the finished points of an earlier run in --out, run the rest"
)


def register(app: typer.Typer) -> None:
    """Add these commands to the root app."""

    @command(app, "sweep")
    def sweep(  # noqa: PLR0917 - typer maps parameters to options
        spec: Path = SPEC_ARG,
        grid: Path = GRID_OPTION,
        out: Path = OUT_OPTION,
        scheduler: str | None = SCHEDULER_OPTION,
        seed: int | None = SEED_OPTION,
        workers: int = WORKERS_OPTION,
        resume: bool = RESUME_OPTION,
        quiet: bool = QUIET_OPTION,
        force: bool = FORCE_OPTION,
    ) -> None:
        """Replay every point of a parameter grid as one Dask task; results per point."""
        from pipeline.clikit import reporter
        from pipeline.cluster import sigterm_as_interrupt
        from pipeline.errors import SweepError
        from pipeline.outdir import check_replaceable
        from pipeline.sweep.runner import plan_sweep, run_sweep

        if workers < 1:
            msg = f"--workers must be >= 1, got {workers}"
            raise SweepError(msg)
        check_replaceable(out, "results", force=force)  # before planning: a refusal costs nothing
        plan = plan_sweep(spec, grid, seed=seed)
        with sigterm_as_interrupt(), reporter(quiet) as rep:
            task = rep.task("sweep", total=len(plan.points), unit="points")
            result = run_sweep(
                spec,
                grid,
                out,
                scheduler=scheduler,
                workers=workers,
                progress=lambda n: rep.advance(task, n),
                plan=plan,
                resume=resume,
                force=force,
            )
        for point, error in sorted(result.failed.items()):
            typer.echo(f"tlbreplay: point {point} failed after one retry: {error}", err=True)
        if result.failed:
            msg = (
                f"{len(result.failed)} of {len(plan.points)} points failed after one retry; "
                f"the other points are in {out} (points.parquet lists every point's status)"
            )
            raise SweepError(msg)
        if not quiet:
            typer.echo(f"wrote {out}: {len(plan.points)} points", err=True)
