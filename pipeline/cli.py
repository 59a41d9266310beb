"""Root typer app: one module of commands per stage, each registering its own commands.

Heavy imports (polars, duckdb, numpy) happen inside the commands, so `tlbreplay --help`
stays fast. Every command is wrapped by :func:`pipeline.clikit.command`, which turns a
``TlbReplayError`` into one line on stderr and exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline.analyze import calibrate_commands
from pipeline.analyze import commands as analyze_commands
from pipeline.clikit import CliGroup
from pipeline.ingest import commands as ingest_commands
from pipeline.lab import commands as lab_commands
from pipeline.replay import commands as replay_commands
from pipeline.sweep import commands as sweep_commands
from pipeline.synth import commands as synth_commands

if TYPE_CHECKING:
    from pipeline.replay.params import ReplayParams
    from pipeline.replay.workload import KnownWorkload

app = typer.Typer(
    name="tlbreplay",
    help="How many TLB shootdowns does NUMA balancing cost a VM, and what would each kernel "
    "policy save? ingest/synth -> replay -> query/report/calibrate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CliGroup,
)


@app.callback()
def main() -> None:
    """tlbreplay: NUMA-balancing TLB-shootdown replay for KVM."""


def _replay_summary(results: Path) -> list[str]:
    """What `replay` ends with: the verdict and compact table of its RESULTS."""
    from pipeline.analyze.verdict import load_verdict, verdict_lines

    return verdict_lines(load_verdict(results))


def _dataset_workload(dataset: Path, params: ReplayParams) -> KnownWorkload | str:
    """A DATASET's stated workload, as calibrate replays it (ADR 0381); imported on use."""
    from pipeline.analyze.calibrate import dataset_workload

    return dataset_workload(dataset, params)


for module in (
    ingest_commands,
    synth_commands,
    lab_commands,
    replay_commands,
    sweep_commands,
    analyze_commands,
    calibrate_commands,
):
    if module is replay_commands:
        replay_commands.register(app, summary=_replay_summary, workload=_dataset_workload)
    else:
        module.register(app)


@app.command("version")
def version() -> None:
    """Print the tool and schema versions."""
    from pipeline import __version__
    from pipeline.schema import table_names, table_schema

    typer.echo(f"tlbreplay {__version__}")
    for name in table_names():
        typer.echo(f"  schema {name} v{table_schema(name).version}")


if __name__ == "__main__":  # pragma: no cover
    app()
