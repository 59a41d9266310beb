"""CLI command of stage 1 (to Parquet): ingest."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.clikit import FORCE_OPTION, QUIET_OPTION, Reporter, command
from pipeline.errors import InputError

DERIVE_SHARE = 0.25
"""Part of the bar given to derive: its share of the wall time of the 10 GB benchmark (C parser)."""


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @command(app, "ingest")
    def ingest(  # noqa: PLR0917 - typer maps parameters to options
        sources: list[str] = typer.Argument(  # noqa: B008
            ..., metavar="SRC...", help="ftrace text, .gz/.zst of it, trace.dat, or - for stdin"
        ),
        out: Path = typer.Option(..., "--out", "-o", help="DATASET directory to write"),  # noqa: B008
        vm_config: Path | None = typer.Option(  # noqa: B008
            None, "--vm-config", help="VM description TOML (sidecar); else inferred from the trace"
        ),
        epoch_ms: int = typer.Option(100, "--epoch-ms", help="epoch length of table accesses"),
        fleet: bool = typer.Option(
            False, "--fleet", help="each SRC is another host's capture (implied by a DIR or GLOB)"
        ),
        scheduler: str | None = typer.Option(
            None, "--scheduler", help="fleet: Dask scheduler address (workers share --out's disk)"
        ),
        jobs: int = typer.Option(1, "--jobs", "-j", help="fleet: N > 1 runs a LocalCluster of N"),
        quiet: bool = QUIET_OPTION,
        force: bool = FORCE_OPTION,
        allow_empty: bool = typer.Option(
            False, "--allow-empty", help="accept an input with no (or few) parsed events"
        ),
    ) -> None:
        """Parse ftrace text / trace.dat into a DATASET (typed event tables, accesses, vms)."""
        from pipeline.clikit import reporter
        from pipeline.ingest.runner import run_ingest

        if fleet or _fleet_sources(sources):
            _ingest_fleet(sources, out, vm_config, epoch_ms, scheduler, jobs, quiet)
            return
        if scheduler is not None or jobs != 1:
            msg = (
                "--scheduler and --jobs spread the captures of a fleet over workers; pass a "
                "directory, a glob or --fleet (a single-host ingest runs here)"
            )
            raise InputError("SRC", msg)

        with reporter(quiet, bytes_=True) as rep:
            bar = IngestBar(rep, _total_bytes(sources))
            manifest = run_ingest(
                sources,
                out,
                vm_config=vm_config,
                epoch_ms=epoch_ms,
                progress=bar.parsed,
                derive_progress=bar.derived,
                force=force,
                allow_empty=allow_empty,
            )
        if not quiet:
            typer.echo(
                f"{out}: {manifest['parsed']} events, {manifest['comments']} comment lines, "
                f"{manifest['quarantined']} quarantined, {manifest['tables']['accesses']} "
                f"access rows ({manifest['accesses_from']})",
                err=True,
            )


def _fleet_sources(sources: list[str]) -> bool:
    from pipeline.model.fleet import wants_fleet

    return wants_fleet(sources)


def _ingest_fleet(  # noqa: PLR0917 - the command's options
    sources: list[str],
    out: Path,
    vm_config: Path | None,
    epoch_ms: int,
    scheduler: str | None,
    jobs: int,
    quiet: bool,
) -> None:
    """One DATASET per host under ``host=H/`` of ``out`` (docs/scale.md, ADR 0611)."""
    from pipeline.clikit import reporter
    from pipeline.cluster import sigterm_as_interrupt
    from pipeline.ingest.fleet import run_fleet_ingest
    from pipeline.model.fleet import find_captures

    if vm_config is not None:
        msg = "a fleet takes each capture's own sidecar (NAME.toml beside it); drop --vm-config"
        raise InputError(str(vm_config), msg)
    if jobs < 1:
        raise InputError("--jobs", f"must be >= 1, got {jobs}")
    captures = find_captures(sources)
    with sigterm_as_interrupt(), reporter(quiet) as rep:
        task = rep.task("ingest hosts", total=len(captures), unit="hosts")
        manifest = run_fleet_ingest(
            sources,
            out,
            epoch_ms=epoch_ms,
            scheduler=scheduler,
            workers=jobs,
            progress=lambda n: rep.advance(task, n),
            captures=captures,
        )
    if not quiet:
        typer.echo(
            f"{out}: {len(manifest['hosts'])} hosts, {manifest['parsed']} events, "
            f"{manifest['comments']} comment lines, {manifest['quarantined']} quarantined, "
            f"{manifest['tables'].get('accesses', 0)} access rows",
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


class IngestBar:
    """One bar for the whole ingest: parse (input bytes), then derive (event rows).

    The bar counts the input's bytes; parsing fills the first ``1 - DERIVE_SHARE`` of it and
    derive the rest, in proportion to the event rows it has streamed, so the time remaining
    covers both stages. Without a known size (stdin) the bar shows the stage and counts only.
    """

    def __init__(self, rep: Reporter, total_bytes: int | None) -> None:
        self._rep = rep
        self._total = total_bytes
        self._task = rep.task("parse", total=total_bytes)
        self._parse_scale = 1 - DERIVE_SHARE if total_bytes else 1.0
        self._deriving = False

    def parsed(self, nbytes: int) -> None:
        self._rep.advance(self._task, nbytes * self._parse_scale)

    def derived(self, rows_done: int, rows_total: int) -> None:
        if not self._total:
            self._rep.update(self._task, description=f"derive {rows_done}/{rows_total} rows")
            return
        share = rows_done / rows_total if rows_total else 1.0
        completed = self._total * (1 - DERIVE_SHARE + DERIVE_SHARE * min(share, 1.0))
        self._rep.update(self._task, description="derive", completed=completed)
