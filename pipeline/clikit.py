"""CLI plumbing shared by the stage command modules: error wrapping and progress bars."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast, get_args, get_origin

import typer
from typer import _coercion, core
from typer._click import Context
from typer._click import exceptions as click_exceptions
from typer._param_types import coerce_cli_path, lenient_issubclass
from typer.core import TyperGroup, TyperOption

from pipeline.errors import TlbReplayError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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


@dataclass(frozen=True)
class _LazyRuntimeParam(_coercion.RuntimeParam):
    """typer's coercion of one parameter, with pydantic imported only when a value needs it.

    typer 0.29 coerces every parameter through a pydantic ``TypeAdapter``, built when the
    command runs, even for a flag left unset: importing pydantic and building the adapters
    is ~0.2 CPU-s on every command, more than `query` may spend in all (issue 13). A ``str``
    or ``Path`` (or a list of them) without a custom ``parser`` or choices needs no
    validation beyond what typer does itself, so it is coerced here: ``str`` as typer's
    ``_parse_cli_str`` does, ``Path`` as ``TypeAdapter(Path)`` does (``Path(text)``) followed
    by typer's own path checks (``exists``, ``dir_okay``, ``resolve_path``, ...). An unset
    value (None) never reaches this (typer's ``RuntimeParam.coerce``); every other value and
    type goes to the runtime parameter typer builds, built on first use. Values and error
    messages are typer's: tests/test_cli.py compares the two.
    """

    descriptor: _coercion.TypeDescriptor

    @functools.cached_property
    def _typer(self) -> _coercion.RuntimeParam:
        return _coercion.build_runtime_param(self.descriptor)

    @functools.cached_property
    def _plain(self) -> tuple[type[Any] | None, bool] | None:
        """(path type or None for ``str``, is a list) when the fast path applies."""
        info = self.parameter_info
        annotation: Any = self.annotation
        is_list = get_origin(annotation) is list
        leaf = get_args(annotation)[0] if is_list else annotation
        if info.parser is not None or self.descriptor.file_annotation is not None:
            return None
        if self.descriptor.choices is not None:
            return None
        if leaf is str:
            return None, is_list
        if lenient_issubclass(leaf, Path) and info.path_type in (None, leaf):
            return leaf, is_list
        return None

    def _coerce_value(self, value: Any, param: Any, ctx: Context) -> Any:
        plain = self._plain
        if plain is None:
            return self._typer._coerce_value(value, param, ctx)
        path_type, is_list = plain
        if not is_list:
            return self._one(value, path_type, param, ctx)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [self._one(item, path_type, param, ctx) for item in items]

    def _one(self, value: Any, path_type: type[Any] | None, param: Any, ctx: Context) -> Any:
        if path_type is None:
            if isinstance(value, bytes):  # never from a command line on Linux: typer's own
                from typer._adapters import _parse_cli_str

                return _parse_cli_str(value)
            return str(value)
        if isinstance(value, (str, os.PathLike)) and not isinstance(value, path_type):
            value = path_type(value)
        return coerce_cli_path(
            value, self.parameter_info, path_type=path_type, param=param, ctx=ctx
        )


def _get_runtime_param(self: core._TyperParameter) -> _coercion.RuntimeParam:
    if self._runtime_param is None:
        d = self.type_descriptor
        self._runtime_param = _LazyRuntimeParam(d.parameter_info, d.annotation, d)
    return self._runtime_param


#: typer's own method (tests compare the two)
TYPER_GET_RUNTIME_PARAM = core._TyperParameter.get_runtime_param
core._TyperParameter.get_runtime_param = _get_runtime_param  # type: ignore[method-assign]


def plural(n: int, noun: str) -> str:
    """``1 VM``, ``2 VMs``, ``12,000 files``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def fail(message: str) -> None:
    """Print one error line on stderr and exit with code 1."""
    typer.echo(f"tlbreplay: error: {message}", err=True)
    raise typer.Exit(code=1)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (ADR 0006)."""


#: the signal that interrupted this process, if one did (SIGTERM or SIGINT)
_RECEIVED: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    _RECEIVED.append(signum)
    raise Terminated


def _on_sigint(signum: int, frame: object) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def command(app: typer.Typer, name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register ``fn`` as command ``name`` of ``app``; project errors become one line + exit 1.

    SIGTERM behaves like Ctrl-C: the command unwinds (temporary outputs removed, worker
    processes stopped), prints one line and exits with 143 (130 for Ctrl-C)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _on_sigterm)
                signal.signal(signal.SIGINT, _on_sigint)
            try:
                return fn(*args, **kw)
            except TlbReplayError as exc:
                if not _RECEIVED:
                    fail(str(exc))
                interrupted(_RECEIVED[0])
            except Terminated:
                interrupted(signal.SIGTERM)
            except KeyboardInterrupt:
                interrupted(signal.SIGINT)
            except Exception:
                # a library that runs the signal handler inside its own code (DuckDB turns
                # the handler's KeyboardInterrupt into "RuntimeError: Query interrupted")
                # hides the signal: it is still an interruption, not a crash
                if not _RECEIVED:
                    raise
                interrupted(_RECEIVED[0])
            return None

        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate


def interrupted(signum: int) -> NoReturn:
    """One line and the shell's exit code for ``signum``: 143 for SIGTERM, 130 for Ctrl-C."""
    if signum == signal.SIGTERM:
        typer.echo("tlbreplay: terminated", err=True)
        raise typer.Exit(code=143)
    typer.echo("tlbreplay: interrupted", err=True)
    raise typer.Exit(code=130)


class Reporter:
    """Progress for one command: a rich bar on a terminal, nothing with --quiet or in pipes."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def task(self, description: str, total: float | None = None, *, unit: str = "") -> TaskID:
        """A bar; ``unit`` names what the counts count (``epochs``, ``sections``)."""
        if self._progress is None:
            return cast("TaskID", 0)  # no rich import for a bar never shown
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
    # rich is imported here, not with the module: every command imports this one
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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
