"""The exception hierarchy of tlbreplay, and nothing else.

Every error a user can cause is a ``TlbReplayError``; the CLI prints its message as one line on
stderr and exits with code 1. Anything else is a bug and keeps its traceback. Messages are
lower-case, name the thing in backticks and say what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path


class TlbReplayError(Exception):
    """Root of every error caused by input, configuration or environment."""


class InputError(TlbReplayError):
    """An input file cannot be used: missing, unreadable, binary, truncated, malformed."""

    def __init__(self, path: str | Path, problem: str, *, lineno: int | None = None) -> None:
        self.path = str(path)
        self.lineno = lineno
        self.problem = problem
        where = f"{self.path}:{lineno}" if lineno is not None else self.path
        super().__init__(f"{where}: {problem}")


class FtraceParseError(InputError):
    """A line of ftrace text that cannot be parsed (used where quarantine is not possible)."""

    def __init__(self, path: str | Path, lineno: int, line: str, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(path, f"{reason}: {line[:120]!r}", lineno=lineno)


class LostEventsError(TlbReplayError):
    """The ring buffer dropped events and the caller asked for a loss-free trace."""

    def __init__(self, path: str | Path, cpu: int, count: int) -> None:
        self.path = str(path)
        self.cpu = cpu
        self.count = count
        super().__init__(
            f"{path}: cpu {cpu} lost {count} events in the ring buffer; "
            "record again with a larger `buffer_size_kb`"
        )


class SchemaMismatchError(TlbReplayError):
    """A frame does not match the table's schema in schemas/."""

    def __init__(
        self, table: str, missing: Sequence[str] = (), extra: Sequence[str] = (), detail: str = ""
    ) -> None:
        self.table = table
        self.missing = list(missing)
        self.extra = list(extra)
        parts = []
        if self.missing:
            parts.append(f"missing columns {', '.join(self.missing)}")
        if self.extra:
            parts.append(f"unexpected columns {', '.join(self.extra)}")
        if detail:
            parts.append(detail)
        super().__init__(
            f"table `{table}` does not match schemas/{table}.toml: " + "; ".join(parts)
        )


class SpecError(TlbReplayError):
    """A workload spec, VM sidecar or grid file has a bad key or value."""

    def __init__(self, path: str | Path, where: str, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


class UnknownNameError(TlbReplayError):
    """A name (policy, event, view, table) that is not one of the known choices."""

    kind = "name"

    def __init__(self, name: str, choices: Iterable[str]) -> None:
        self.name = name
        self.choices = sorted(choices)
        close = difflib.get_close_matches(name, self.choices, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        super().__init__(
            f"unknown {self.kind} `{name}`{hint} choose from: {', '.join(self.choices)}"
        )


class UnknownPolicyError(UnknownNameError):
    """``--policy`` names no policy in ``pipeline.replay.policies.POLICIES``."""

    kind = "policy"


class DatasetError(TlbReplayError):
    """A DATASET or RESULTS directory is missing, incomplete or of another version."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}")


class OutputError(TlbReplayError):
    """An output location cannot be written."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}")


class QueryError(TlbReplayError):
    """A SQL query that DuckDB rejected, or a write attempted on the read-only views."""


class MissingFacilityError(TlbReplayError):
    """The machine lacks something a command needs (root, tracefs, /dev/kvm, trace-cmd)."""


class SweepError(TlbReplayError):
    """A sweep could not run, or some of its grid points failed after their retry."""


class ClusterError(TlbReplayError):
    """The Dask cluster cannot run the job: unreachable, no worker, another tool version on a
    worker, or the scheduler lost mid-run."""
