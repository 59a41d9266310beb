"""CLI commands of stage 2 (the engine): replay, policies."""

from __future__ import annotations

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
    None,
    "--seed",
    help="seed of the mmu_lock contention process (default: the DATASET's synth seed, else 0); "
    "recorded in the manifest",
    show_default=False,
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
FALLBACK_OPTION = typer.Option(
    0.0,
    "--thp-fault-fallback",
    help="share of THP-region granules whose THP fault fell back to 4K host pages "
    "(/proc/vmstat thp_fault_fallback; ADR 0371)",
)
JOBS_OPTION = typer.Option(
    0, "--jobs", "-j", help="processes running policies in parallel (0: one per CPU)"
)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @command(app, "replay")
    def replay(  # noqa: PLR0917 - typer maps parameters to options
        dataset: Path = DATASET_ARG,
        out: Path = OUT_OPTION,
        policy: list[str] = POLICY_OPTION,
        epoch_ms: int = EPOCH_OPTION,
        seed: int | None = SEED_OPTION,
        jobs: int = JOBS_OPTION,
        busy_vcpus: bool | None = BUSY_OPTION,
        no_hosting: bool = NO_HOSTING_OPTION,
        thp_fault_fallback: float = FALLBACK_OPTION,
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
                thp_fault_fallback=thp_fault_fallback,
            ),
            quiet=quiet,
            seed=seed,
        )
        if not quiet:
            typer.echo(f"wrote {path}", err=True)

    @command(app, "policies")
    def policies() -> None:
        """List the policies, one line each."""
        from pipeline.replay.policies import POLICIES

        width = max(len(n) for n in POLICIES)
        for name, pol in POLICIES.items():
            typer.echo(f"{name:<{width}}  {pol.summary}")
