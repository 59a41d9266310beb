"""`tlbreplay shell RESULTS`: an interactive SQL prompt over the views, loaded once.

A readline loop (history and line editing on a terminal; plain lines from a pipe, so it is
scriptable and testable) over one read-only connection: every statement goes through
:func:`pipeline.analyze.query.run_query`, so the refusals of `tlbreplay query` hold here
too. A statement ends with ``;`` or at the end of a line that is not inside one. Dot
commands, sqlite/duckdb style: ``.views``, ``.format table|csv|json|ndjson``, ``.audit``,
``.help``, ``.quit`` (or end of input). An error prints one line and the prompt comes back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console

from pipeline.analyze import query as q
from pipeline.analyze.output import rich_table, to_csv, to_json, to_ndjson
from pipeline.analyze.views import connect
from pipeline.errors import TlbReplayError

HELP = """\
SQL: one SELECT (WITH, FROM-first, DESCRIBE, SUMMARIZE) over the views; end it with ; or a newline
.views            the views and their one-line docs (`tlbreplay query R --views` for columns)
.format NAME      table (default), csv, json, ndjson
.audit            run the audits (ok / FAIL)
.help             this text
.quit             leave (also Ctrl-D)"""
TEXT_FORMATS = ("table", "csv", "json", "ndjson")


def _lines(prompt: Callable[[str], str], interactive: bool) -> Iterator[str]:
    """Complete statements or dot commands, until end of input."""
    pending: list[str] = []
    while True:
        try:
            line = prompt(("...> " if pending else "tlbreplay> ") if interactive else "")
        except EOFError:
            if pending:
                yield " ".join(pending)
            return
        stripped = line.strip()
        if not pending and stripped.startswith("."):
            yield stripped
            continue
        if stripped:
            pending.append(stripped)
        joined = " ".join(pending)
        if pending and (joined.endswith(";") or not interactive or stripped == ""):
            yield joined.rstrip(";").strip()
            pending = []


def run_shell(
    results: Path,
    *,
    prompt: Callable[[str], str] | None = None,
    out: Console | None = None,
    interactive: bool | None = None,
) -> None:
    """The loop; ``prompt`` reads a line (default: :func:`input`, with readline on a tty)."""
    tty = sys.stdin.isatty() if interactive is None else interactive
    if prompt is None:
        if tty:
            import readline  # noqa: F401 - line editing and history for input()
        prompt = input
    console = out or Console(soft_wrap=True)
    con, run = connect(results)  # the views, once
    docs = q.public_views(run)
    fmt = "table"
    try:
        if tty:
            console.print(f"{len(docs)} views over {results}; .help for help", highlight=False)
        for text in _lines(prompt, tty):
            if text in (".quit", ".exit"):
                break
            if text == ".help":
                console.print(HELP, highlight=False, markup=False)
            elif text == ".views":
                for view in docs:
                    console.print(f"{view.name:<28} {view.doc}", highlight=False, markup=False)
            elif text.startswith(".format"):
                name = text.split()[1] if len(text.split()) > 1 else ""
                if name in TEXT_FORMATS:
                    fmt = name
                else:
                    console.print(f"error: formats: {', '.join(TEXT_FORMATS)}", markup=False)
            elif text == ".audit":
                for audit in q.run_audits(con):
                    status = "ok" if audit.rows.num_rows == 0 else "FAIL"
                    console.print(f"{status:<4} {audit.name}", highlight=False)
            elif text.startswith("."):
                console.print(f"error: unknown command `{text}`; .help", markup=False)
            elif text:
                try:
                    rows = q.run_query(con, text, docs)
                except TlbReplayError as exc:
                    console.print(f"error: {exc}", highlight=False, markup=False)
                    continue
                if fmt == "table":
                    console.print(rich_table(rows))
                else:
                    writer = {"csv": to_csv, "json": to_json, "ndjson": to_ndjson}[fmt]
                    console.print(writer(rows), end="", highlight=False, markup=False)
    finally:
        con.close()
