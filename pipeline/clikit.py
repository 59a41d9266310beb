"""CLI plumbing shared by the stage command modules: error wrapping and progress bars."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup, TyperOption

from pipeline.errors import TlbReplayError

F = TypeVar("F", bound=Callable[..., Any])

QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="no progress bar")
FORCE_OPTION = typer.Option(
    False, "--force", help="replace `--out` even if it holds something else (ADR 0003)"
)


class CliGroup(TyperGroup):
    """The root command group: a usage error (missing argument, unknown option, bad value)
    is one line on stderr naming the command and exit code 1, like every other user error,
    not typer's box and exit code 2 (ADR 0010)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click_exceptions.NoArgsIsHelpError:
            rv = 0  # the help was printed while the error was made
        except click_exceptions.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "tlbreplay"
            message = exc.format_message().rstrip(".")
            message = message[:1].lower() + message[1:]
            typer.echo(f"tlbreplay: error: {message}; see `{where} --help`", err=True)
            rv = 1
        except typer.Abort:
            typer.echo("tlbreplay: aborted", err=True)
            rv = 1
        if not standalone:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    """No ``<bool>`` after a flag in --help: a flag takes no value."""
    return None if self.is_flag else _TYPE_RICH(self, ctx)


_TYPE_RICH = TyperOption.display_type_rich
TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]


def plural(n: int, noun: str) -> str:
    """``1 VM``, ``2 VMs``, ``12,000 files``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def fail(message: str) -> None:
    """Print one error line on stderr and exit with code 1."""
    typer.echo(f"tlbreplay: error: {message}", err=True)
    raise typer.Exit(code=1)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (ADR 0006)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def command(app: typer.Typer, name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register ``fn`` as command ``name`` of ``app``; project errors become one line + exit 1.

    SIGTERM behaves like Ctrl-C: the command unwinds (temporary outputs removed, worker
    processes stopped), prints one line and exits with 143 (130 for Ctrl-C)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _on_sigterm)
            try:
                return fn(*args, **kw)
            except TlbReplayError as exc:
                fail(str(exc))
            except Terminated:
                typer.echo("tlbreplay: terminated", err=True)
                raise typer.Exit(code=143) from None
            except KeyboardInterrupt:
                typer.echo("tlbreplay: interrupted", err=True)
                raise typer.Exit(code=130) from None
            return None

        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


class Reporter:
    """Progress for one command: a rich bar on a terminal, nothing with --quiet or in pipes."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def task(self, description: str, total: float | None = None, *, unit: str = "") -> TaskID:
        """A bar; ``unit`` names what the counts count (``epochs``, ``sections``)."""
        if self._progress is None:
            return TaskID(0)
        return self._progress.add_task(description, total=total, unit=unit)

    def advance(self, task: TaskID, amount: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(task, amount)

    def update(self, task: TaskID, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(task, **kwargs)


@contextmanager
def reporter(quiet: bool, *, bytes_: bool = False) -> Iterator[Reporter]:
    """A :class:`Reporter` showing a bar on stderr when it is a terminal and not ``quiet``."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield Reporter(None)
        return
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    if bytes_:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn(), TextColumn("{task.fields[unit]}")]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        yield Reporter(progress)


def is_tty() -> bool:
    return sys.stderr.isatty()
