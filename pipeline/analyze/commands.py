"""CLI commands of stage 3 (DuckDB): query and report."""

from __future__ import annotations

import functools
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.clikit import FORCE_OPTION, QUIET_OPTION, command
from pipeline.errors import QueryError

if TYPE_CHECKING:
    from pipeline.analyze.output import Rows

#: Rows of a failing audit printed by `query --audit` (the report shows up to 50).
AUDIT_ROWS = 20
#: Rows a `query` table shows (the rest are counted in its caption).
MAX_TABLE_ROWS = 10_000


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app."""

    @command(app, "query")
    def query(
        results: Annotated[Path, typer.Argument(help="RESULTS directory written by `replay`")],
        sql: Annotated[
            str | None, typer.Argument(help="one SELECT statement over the views")
        ] = None,
        *,
        fmt: Annotated[
            str,
            typer.Option(
                "--format", "-f", help="table | csv | json | ndjson | parquet (to --output)"
            ),
        ] = "table",
        output: Annotated[
            Path | None,
            typer.Option("--output", "-O", help="write to this file instead of stdout"),
        ] = None,
        views: Annotated[
            bool, typer.Option("--views", help="list the views and their columns")
        ] = False,
        audit: Annotated[
            bool, typer.Option("--audit", help="run every audit; exit 1 if any returns rows")
        ] = False,
        quiet: bool = QUIET_OPTION,
    ) -> None:
        """Read-only SQL over the views of a RESULTS directory (`--views` lists them)."""
        # only duckdb and rich on this path: pyarrow and polars are imported when a result
        # needs them (Parquet output, dates, ...), so a query starts fast (issue 13)
        from rich.console import Console

        from pipeline.analyze import query as q
        from pipeline.analyze.output import rich_table, to_csv, to_json, to_ndjson, to_parquet

        if fmt not in q.FORMATS:
            msg = f"unknown format `{fmt}`; choose from: {', '.join(q.FORMATS)}"
            raise QueryError(msg)
        given = sum((sql is not None, views, audit))
        if given != 1:
            msg = 'give exactly one of: "SQL", `--views`, `--audit`'
            raise QueryError(msg)
        console = Console(soft_wrap=True, width=None if Console().is_terminal else 200)
        if sql is None:
            _views_or_audit(results, console, views=views, quiet=quiet)
            return
        limit = MAX_TABLE_ROWS if fmt == "table" else None

        def answer(con: Any, run: Any) -> Rows | bytes:
            docs = functools.partial(q.public_views, run)  # listed only if the query fails
            if fmt == "parquet":
                return to_parquet(q.run_query(con, sql, docs))
            return q.fetch_rows(con, sql, docs, limit=limit)

        got = q.read_results(results, answer)
        if isinstance(got, bytes):
            data = got
        else:
            rows = got
        if fmt == "table" and output is None:
            console.print(rich_table(rows, max_rows=MAX_TABLE_ROWS))
            return

        def table_text(rows: Rows) -> str:
            buf = Console(width=10_000, record=True, file=io.StringIO())
            buf.print(rich_table(rows, max_rows=MAX_TABLE_ROWS))
            return buf.export_text()

        writers = {"csv": to_csv, "json": to_json, "ndjson": to_ndjson, "table": table_text}
        if fmt != "parquet":
            data = writers[fmt](rows).encode()
        if output is not None:
            from pipeline.analyze.export import write_atomic

            write_atomic(output, data)
        elif fmt == "parquet" and sys.stdout.isatty():
            msg = "`--format parquet` is binary: give `--output FILE` or redirect stdout"
            raise QueryError(msg)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    @command(app, "verdict")
    def verdict(
        results: Annotated[
            list[Path], typer.Argument(help="one or more RESULTS directories (one answer each)")
        ],
        *,
        table: Annotated[
            bool, typer.Option("--table", help="also a compact table per RESULTS")
        ] = False,
    ) -> None:
        """The answer at a glance: one sentence per RESULTS (KVM shootdowns per policy)."""
        from pipeline.analyze.verdict import load_verdict, verdict_lines

        for path in results:
            for line in verdict_lines(load_verdict(path), table=table):
                typer.echo(line)

    @command(app, "export")
    def export(
        results: Annotated[Path, typer.Argument(help="RESULTS directory written by `replay`")],
        *,
        perfetto: Annotated[
            Path | None,
            typer.Option(
                "--perfetto", help="write a trace-event JSON timeline (opens in ui.perfetto.dev)"
            ),
        ] = None,
        heatmap: Annotated[
            Path | None,
            typer.Option("--heatmap", help="write a PNG heat map of guest memory over time"),
        ] = None,
        vm: Annotated[
            str | None, typer.Option("--vm", help="the heat map's VM (default: first by name)")
        ] = None,
        quiet: bool = QUIET_OPTION,
    ) -> None:
        """Export a RESULTS directory: a Perfetto timeline (tracks per vCPU) and/or a heat map."""
        from pipeline.analyze.export import export_heatmap, export_perfetto

        if perfetto is None and heatmap is None:
            raise QueryError("give `--perfetto FILE` and/or `--heatmap FILE`")
        if perfetto is not None:
            n = export_perfetto(results, perfetto)
            if not quiet:
                typer.echo(f"wrote {perfetto}: {n:,} trace events (open in ui.perfetto.dev)")
        if heatmap is not None:
            export_heatmap(results, heatmap, vm=vm)
            if not quiet:
                typer.echo(f"wrote {heatmap}")

    @command(app, "shell")
    def shell(
        results: Annotated[Path, typer.Argument(help="RESULTS directory written by `replay`")],
    ) -> None:
        """An interactive SQL shell over the views (loaded once); `.help` lists commands."""
        from pipeline.analyze.shell import run_shell

        run_shell(results)

    @command(app, "report")
    def report(
        results: Annotated[
            list[Path],
            typer.Argument(help="one or more RESULTS directories (one report section each)"),
        ],
        *,
        out: Annotated[Path, typer.Option("--out", "-o", help="directory for report.html + PNGs")],
        quiet: bool = QUIET_OPTION,
        force: bool = FORCE_OPTION,
    ) -> None:
        """Write report.html (self-contained: inline CSS, embedded PNGs) and the PNG plots."""
        from pipeline.analyze.report import write_report

        path = write_report(results, out, quiet=quiet, force=force)
        if not quiet:
            typer.echo(f"report: {path}")


def _views_or_audit(results: Path, console: Any, *, views: bool, quiet: bool) -> None:
    """`query --views` (every view and its columns) or `query --audit` (exit 1 on rows)."""
    from pipeline.analyze import query as q
    from pipeline.analyze.catalog import describe
    from pipeline.analyze.output import rich_table
    from pipeline.analyze.views import connect

    con, run = connect(results)
    try:
        if views:
            for view in q.public_views(run):
                console.print(f"[bold]{view.name}[/bold]  {view.doc}", highlight=False)
                for col in describe(con, view):
                    console.print(f"    {col.name:<28} {col.type:<10} {col.doc}", highlight=False)
            return
        failed = 0
        for result in q.run_audits(con):
            status = "ok" if result.rows.num_rows == 0 else "FAIL"
            if not quiet or result.rows.num_rows:
                console.print(f"{status:<4} {result.name}: {result.doc}", highlight=False)
            if result.rows.num_rows:
                failed += 1
                console.print(rich_table(result.rows, max_rows=AUDIT_ROWS, hint=""))
        if failed:
            typer.echo(f"tlbreplay: {failed} audit(s) returned rows", err=True)
            raise typer.Exit(code=1)
    finally:
        con.close()
