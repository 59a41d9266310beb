"""CLI commands of stage 2 (the engine): replay, policies."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline.clikit import FORCE_OPTION, QUIET_OPTION, command

if TYPE_CHECKING:
    from pipeline.replay.params import ReplayParams
    from pipeline.replay.workload import WorkloadSource

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
MAX_MEMORY_OPTION = typer.Option(
    None,
    "--max-memory",
    help="refuse a replay whose engine arrays need more (e.g. 8G; default: half the RAM)",
)
FALLBACK_OPTION = typer.Option(
    0.0,
    "--thp-fault-fallback",
    help="share of THP-region granules whose THP fault fell back to 4K host pages "
    "(/proc/vmstat thp_fault_fallback; ADR 0371)",
)
JOBS_OPTION = typer.Option(
    0,
    "--jobs",
    "-j",
    help="processes running policies in parallel (0: one per CPU); a fleet: Dask workers of "
    "a LocalCluster (1: in this process)",
)
WORKLOAD_OPTION = typer.Option(
    "auto",
    "--workload",
    help="auto: the workload a lab sidecar's [lab] table states when there is one (as "
    "calibrate replays it), else the trace's refaults; trace: always the refaults; lab: "
    "require the stated workload (ADR 0381)",
)
SCHEDULER_OPTION = typer.Option(
    None, "--scheduler", help="Dask scheduler: one task per (host, policy) on its workers"
)


def register(
    app: typer.Typer,
    *,
    summary: Callable[[Path], Iterable[str]] | None = None,
    workload: WorkloadSource | None = None,
) -> None:
    """Add this stage's commands to the root app. ``summary(RESULTS)``: the lines `replay`
    ends with (the CLI passes the analysis stage's verdict; stage 2 does not import it);
    ``workload``: the builder of a DATASET's stated workload (calibrate's, ADR 0381)."""

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
        scheduler: str | None = SCHEDULER_OPTION,
        quiet: bool = QUIET_OPTION,
        force: bool = FORCE_OPTION,
        max_memory: str | None = MAX_MEMORY_OPTION,
        workload_choice: str = WORKLOAD_OPTION,
    ) -> None:
        """Replay a DATASET (or a fleet of them) under NUMA-balancing policies; write RESULTS."""
        from pipeline.replay.bounds import parse_bytes
        from pipeline.replay.params import ReplayParams
        from pipeline.replay.runner import run_replay

        params = ReplayParams(
            epoch_ms=epoch_ms,
            workers=jobs,
            busy_vcpus=busy_vcpus,
            dataset_hosting=not no_hosting,
            max_memory_bytes=parse_bytes(max_memory) if max_memory else None,
            thp_fault_fallback=thp_fault_fallback,
        )
        if scheduler is not None or _is_fleet(dataset):
            _replay_tasks(dataset, out, policy, params, seed, scheduler, jobs, quiet)
        else:
            run_replay(
                dataset,
                out,
                policy or None,
                params,
                quiet=quiet,
                seed=seed,
                force=force,
                workload=workload,
                workload_choice=workload_choice,
            )
        path = out
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


def _is_fleet(dataset: Path) -> bool:
    from pipeline.model.fleet import is_fleet
    from pipeline.schema import MANIFEST, read_manifest

    return (Path(dataset) / MANIFEST).is_file() and is_fleet(read_manifest(Path(dataset)))


def _replay_tasks(  # noqa: PLR0917 - the command's options
    dataset: Path,
    out: Path,
    policy: list[str],
    params: ReplayParams,
    seed: int | None,
    scheduler: str | None,
    jobs: int,
    quiet: bool,
) -> None:
    """One task per (host, policy): in this process (-j 1), on a LocalCluster or on
    ``scheduler`` (docs/scale.md, ADR 0611)."""
    import os

    from pipeline.clikit import reporter
    from pipeline.cluster import sigterm_as_interrupt
    from pipeline.model.fleet import is_fleet
    from pipeline.replay.fleet import run_fleet_replay
    from pipeline.replay.policies import POLICIES
    from pipeline.schema import read_manifest

    top = read_manifest(Path(dataset))
    hosts = len(top.get("hosts", [])) if is_fleet(top) else 1
    tasks = hosts * len(dict.fromkeys(policy) if policy else POLICIES)
    workers = jobs if jobs > 0 else min(os.cpu_count() or 1, 8, tasks)
    with sigterm_as_interrupt(), reporter(quiet) as rep:
        task = rep.task("replay tasks", total=tasks, unit="tasks")
        run_fleet_replay(
            dataset,
            out,
            policy or None,
            params,
            seed=seed,
            scheduler=scheduler,
            workers=workers,
            progress=lambda n: rep.advance(task, n),
        )
