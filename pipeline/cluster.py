"""Dask for every distributed command (``sweep``, ``ingest`` and ``replay`` of a fleet).

One place decides how a cluster is reached and what a user sees when it misbehaves (ADR 0610):

* :func:`dask_client`: a LocalCluster of separate processes on 127.0.0.1 (``-j N`` /
  ``--workers N``) or an existing scheduler (``--scheduler ADDR``); waits at most
  ``worker_timeout_s`` for a first worker (else one line: no usable worker), then checks that
  every worker runs this very code (:func:`code_fingerprint`: the version and a hash of the
  package's sources, SQL and schemas) -- a mismatch is one line naming the worker.
* :func:`run_tasks`: submits tasks (``retries=1``), each wrapped by :func:`checked` (a worker
  that joins later is checked by its first task), and calls back as each finishes. It returns
  normally only when every task has an outcome; a scheduler that goes away (its futures come
  back *cancelled*) or a cluster left without workers for ``worker_timeout_s`` raise
  :class:`SchedulerLostError` with the keys that did finish, so the caller can keep them.

Distributed's own logging is silenced at ERROR while a client runs (a lost scheduler makes
the client log reconnection tracebacks); the user gets one line from the CLI instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.errors import ClusterError

#: the LocalCluster of one machine (the default): a process per core, one thread each
LOCAL_WORKERS = 2
#: how long to wait for a first worker, and how long a cluster may stay without one mid-run
WORKER_TIMEOUT_S = float(os.environ.get("TLBREPLAY_WORKER_TIMEOUT_S", "60"))
CONNECT_TIMEOUT_S = 10.0
_POLL_S = 0.05
_WORKER_CHECK_S = 1.0


class TaskFailedError(RuntimeError):
    """A task's exception as its type and one-line message, picklable across workers (the
    project's own errors carry structured ``__init__`` arguments that do not unpickle)."""


class WorkerMismatchError(RuntimeError):
    """A task landed on a worker that runs other code than the client."""


class SchedulerLostError(ClusterError):
    """The scheduler went away (or every worker did) before every task had an outcome."""

    def __init__(self, message: str, done: set[Hashable]) -> None:
        super().__init__(message)
        self.done = done


# -- identity of the code ---------------------------------------------------------------------
_FINGERPRINT_SUFFIXES = (".py", ".sql", ".toml", ".c")


@cache
def code_fingerprint() -> str:
    """``<version>+<12 hex>``: the package version and a SHA-256 over the package's Python,
    SQL and schema files (relative path and bytes, sorted), so a modified worker differs even
    when it reports the same version."""
    from pipeline import __version__

    package = Path(__file__).resolve().parent
    # pipeline.schema.SCHEMA_DIR's rule, without importing polars and pyarrow for it
    inside = package / "schemas"
    SCHEMA_DIR = inside if inside.is_dir() else package.parent / "schemas"  # noqa: N806
    digest = hashlib.sha256()
    for root, prefix in ((package, "pipeline"), (SCHEMA_DIR, "schemas")):
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix in _FINGERPRINT_SUFFIXES
            and p.is_file()
            and "__pycache__" not in p.parts
            and not (root == package and SCHEMA_DIR in p.parents)
        )
        for path in files:
            digest.update(f"{prefix}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return f"{__version__}+{digest.hexdigest()[:12]}"


def checked(expected: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` on a worker after checking it runs the client's code; any failure
    comes back as a picklable one-line :class:`TaskFailedError`."""
    mine = code_fingerprint()
    if mine != expected:
        msg = _mismatch_text(_worker_address(), mine, expected)
        raise WorkerMismatchError(msg)
    try:
        return fn(*args)
    except TaskFailedError:
        raise
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        raise TaskFailedError(msg) from None


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:
        return "this process"


def _mismatch_text(worker: str, theirs: str, mine: str) -> str:
    return (
        f"Dask worker `{worker}` runs tlbreplay {theirs}, this client {mine}; install the same "
        "version of the package on every worker (the same wheel or checkout) and restart them"
    )


def check_workers(client: Any) -> int:
    """Every current worker's :func:`code_fingerprint` against the client's; returns how many
    workers there are (raises ClusterError naming the first mismatched worker)."""
    mine = code_fingerprint()
    found: dict[str, str] = client.run(code_fingerprint)
    for address, theirs in sorted(found.items()):
        if theirs != mine:
            raise ClusterError(_mismatch_text(address, theirs, mine))
    return len(found)


# -- the client -------------------------------------------------------------------------------
@contextmanager
def quiet_distributed() -> Iterator[None]:
    """Distributed's loggers (each has its own level) at CRITICAL and its shutdown warnings
    off, restored on exit."""
    names = ["distributed"] + [
        n for n in logging.root.manager.loggerDict if n.startswith("distributed.")
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # distributed warns when closing workers that still hold tasks of a cancelled run
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="distributed")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def dask_client(
    scheduler: str | None,
    workers: int = LOCAL_WORKERS,
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    worker_timeout_s: float | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client`` with at least one worker running this code.

    No ``scheduler``: a new LocalCluster of ``workers`` processes of one thread, on loopback
    only, with no dashboard (its HTTP server takes a free loopback port instead of 8787, so
    two runs never collide), logging errors only. Everything is closed on exit.
    """
    from distributed import Client, LocalCluster

    timeout_s = WORKER_TIMEOUT_S if worker_timeout_s is None else worker_timeout_s
    with quiet_distributed():
        if scheduler is not None:
            try:
                client = Client(  # type: ignore[no-untyped-call]
                    scheduler, set_as_default=False, timeout=connect_timeout_s
                )
            except (OSError, ValueError, TypeError) as exc:
                msg = (
                    f"cannot use the Dask scheduler `{scheduler}`: {exc}; start one "
                    "(`dask scheduler`, workers with this package installed) or omit --scheduler"
                )
                raise ClusterError(msg) from None
            try:
                _ready(client, scheduler, timeout_s)
                yield client
            finally:
                _close(client)
            return
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
        try:
            client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
            try:
                _ready(client, "local", timeout_s)
                yield client
            finally:
                _close(client)
        finally:
            cluster.close()


def _ready(client: Any, scheduler: str, timeout_s: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        msg = (
            f"no Dask worker joined the scheduler `{scheduler}` within {timeout_s:g} s; start "
            f"workers (`dask worker {scheduler}`) or raise TLBREPLAY_WORKER_TIMEOUT_S"
        )
        raise ClusterError(msg) from None
    except OSError as exc:
        raise ClusterError(f"lost the Dask scheduler `{scheduler}`: {exc}") from None
    check_workers(client)


def _close(client: Any) -> None:
    with suppress(OSError, TimeoutError):
        client.close(timeout=5)


# -- running tasks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One task: its caller-side key (any hashable), the function and its arguments."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    name: str  # for the Dask key: ``tlbreplay-<name>-<run>``


@dataclass
class Outcome:
    """A task's result, or its one-line error."""

    key: Hashable
    result: Any = None
    error: str | None = None


def task_key(name: str, run: str) -> str:
    """The Dask key of a task named ``name`` in run ``run``."""
    return f"tlbreplay-{name}-{run}"


def run_tasks(
    client: Any,
    tasks: Sequence[Task],
    *,
    on_done: Callable[[Outcome], None],
    worker_timeout_s: float | None = None,
) -> str:
    """Submit ``tasks`` (``retries=1``, in order) and call ``on_done`` as each finishes or
    fails twice. Returns the run token of the Dask keys (random, so two runs on one shared
    cluster never share a key).

    Raises ClusterError when a worker runs other code (the rest is cancelled), and
    :class:`SchedulerLostError` (with the keys whose ``on_done`` ran) when the scheduler goes
    away or no worker is left for ``worker_timeout_s``.
    """
    from distributed import as_completed

    timeout_s = WORKER_TIMEOUT_S if worker_timeout_s is None else worker_timeout_s
    run = uuid.uuid4().hex[:12]
    expected = code_fingerprint()
    futures = {
        client.submit(
            checked,
            expected,
            t.fn,
            *t.args,
            key=task_key(t.name, run),
            pure=False,
            retries=1,
        ): t
        for t in tasks
    }
    done: set[Hashable] = set()
    lost = 0
    pending = as_completed(list(futures), loop=client.loop)  # type: ignore[no-untyped-call]
    watch = _WorkerWatch(client, timeout_s)
    with quiet_distributed():
        while not pending.is_empty():  # type: ignore[no-untyped-call]
            if not pending.has_ready():  # type: ignore[no-untyped-call]
                time.sleep(_POLL_S)
                watch.check(done)
                continue
            for future in pending.next_batch(block=False):  # type: ignore[no-untyped-call]
                outcome = _outcome(future, futures[future].key)
                if outcome is None:  # cancelled, or its result went with the scheduler
                    lost += 1
                    continue
                if isinstance(outcome, WorkerMismatchError):
                    client.cancel(list(futures))
                    raise ClusterError(str(outcome)) from None
                on_done(outcome)
                done.add(outcome.key)
                future.release()
    if lost:
        msg = (
            f"lost the Dask scheduler after {len(done)} of {len(futures)} tasks; {lost} did not run"
        )
        raise SchedulerLostError(msg, done)
    return run


def _outcome(future: Any, key: Hashable) -> Outcome | WorkerMismatchError | None:
    """A completed future's outcome; None when the scheduler (or the worker holding the
    result) is gone: cancelled, or the result cannot be fetched any more."""
    from asyncio import CancelledError as AsyncCancelledError
    from concurrent.futures import CancelledError

    try:
        if future.status == "finished":
            return Outcome(key, result=future.result())
        if future.status == "cancelled":
            return None
        exc = future.exception()
    # distributed's CommClosedError is an OSError, its FutureCancelledError a CancelledError:
    # the future changed to cancelled between its status and its result
    except (OSError, TimeoutError, CancelledError, AsyncCancelledError):
        return None
    if isinstance(exc, WorkerMismatchError):
        return exc
    return Outcome(key, error=str(exc) or type(exc).__name__)


class _WorkerWatch:
    """Raises SchedulerLostError when the cluster has had no worker for ``timeout_s``."""

    def __init__(self, client: Any, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._next = time.monotonic() + _WORKER_CHECK_S
        self._empty_since: float | None = None

    def check(self, done: set[Hashable]) -> None:
        now = time.monotonic()
        if now < self._next or self._client.status != "running":
            return
        self._next = now + _WORKER_CHECK_S
        try:
            workers = len(self._client.nthreads())
        except (OSError, TimeoutError):
            return  # the scheduler is going: its futures come back cancelled
        if workers:
            self._empty_since = None
            return
        self._empty_since = self._empty_since or now
        if now - self._empty_since >= self._timeout_s:
            msg = (
                f"no Dask worker left for {self._timeout_s:g} s after {len(done)} tasks; "
                "start workers, then run again with --resume"
            )
            raise SchedulerLostError(msg, done)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs, so a killed
    distributed command cleans up as Ctrl-C does (temporary output removed, cluster closed).
    Outside the main thread it does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(
    tasks: Sequence[Task],
    *,
    scheduler: str | None,
    workers: int,
    on_done: Callable[[Outcome], None],
) -> str:
    """Run ``tasks`` in this process (no ``scheduler`` and ``workers`` <= 1: in order, a
    project error raised as it is) or on Dask (:func:`run_tasks` on :func:`dask_client`).
    Either way each task's outcome goes to ``on_done``; returns the Dask run token or ""."""
    if scheduler is None and workers <= 1:
        for task in tasks:
            on_done(Outcome(task.key, result=task.fn(*task.args)))
        return ""
    with dask_client(scheduler, max(workers, 1)) as client:
        return run_tasks(client, tasks, on_done=on_done)
