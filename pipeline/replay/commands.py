"""CLI commands of stage 2 (the engine): replay, policies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import typer

from pipeline.clikit import QUIET_OPTION, command

DATASET_ARG = typer.Argument(..., help="DATASET directory (ingest/synth output)")
OUT_OPTION = typer.Option(..., "--out", "-o", help="RESULTS directory to write")
POLICY_OPTION = typer.Option(
    [], "--policy", "-p", help="policy to run (repeatable; default: every policy)"
)
EPOCH_OPTION = typer.Option(100, "--epoch-ms", help="replay epoch, a multiple of the dataset's")
SEED_OPTION = typer.Option(
    0, "--seed", help="recorded in the manifest (the model is deterministic)"
)
BUSY_OPTION = typer.Option(
    None,
    "--busy-vcpus/--no-busy-vcpus",
    help="every vCPU runs every epoch (default: on for a DATASET from a trace, whose "
    "accesses come from faults only; off for synth datasets)",
    show_default=False,
)
NO_HOSTING_OPTION = typer.Option(
    False,
    "--no-hosting",
    help="ignore the DATASET's hosting.parquet (guest RAM alone, vCPUs owning a CPU, idle host)",
)
JOBS_OPTION = typer.Option(
    0, "--jobs", "-j", help="processes running policies in parallel (0: one per CPU)"
)


def register(app: typer.Typer, *, summary: Callable[[Path], Iterable[str]] | None = None) -> None:
    """Add this stage's commands to the root app. ``summary(RESULTS)``: the lines `replay`
    ends with (the CLI passes the analysis stage's verdict; stage 2 does not import it)."""

    @command(app, "replay")
    def replay(  # noqa: PLR0917 - typer maps parameters to options
        dataset: Path = DATASET_ARG,
        out: Path = OUT_OPTION,
        policy: list[str] = POLICY_OPTION,
        epoch_ms: int = EPOCH_OPTION,
        seed: int = SEED_OPTION,
        jobs: int = JOBS_OPTION,
        busy_vcpus: bool | None = BUSY_OPTION,
        no_hosting: bool = NO_HOSTING_OPTION,
        quiet: bool = QUIET_OPTION,
    ) -> None:
        """Replay a DATASET under NUMA-balancing policies and write RESULTS."""
        from pipeline.replay.runner import ReplayParams, run_replay

        path = run_replay(
            dataset,
            out,
            policy or None,
            ReplayParams(
                epoch_ms=epoch_ms,
                workers=jobs,
                busy_vcpus=busy_vcpus,
                dataset_hosting=not no_hosting,
            ),
            quiet=quiet,
            seed=seed,
        )
        if not quiet:
            for line in summary(path) if summary else ():
                typer.echo(line)
            typer.echo(f"wrote {path} (`tlbreplay query {path} --views` lists its views)")

    @command(app, "policies")
    def policies() -> None:
        """List the policies, one line each."""
        from pipeline.replay.policies import POLICIES

        width = max(len(n) for n in POLICIES)
        for name, pol in POLICIES.items():
            typer.echo(f"{name:<{width}}  {pol.summary}")
