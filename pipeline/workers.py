"""Worker processes that never outlive their parent (replay, ingest, report; ADR 0006).

Each worker asks the kernel to SIGKILL it when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
kernel/sys.c; checked against a parent that died before the call), so a ``kill -9`` of
``tlbreplay replay -j N`` leaves no worker behind. When the parent stops on an exception
(Ctrl-C, SIGTERM turned into KeyboardInterrupt by :mod:`pipeline.clikit`, a failed job) the
pool is cancelled and every worker is terminated before the exception goes on, instead of
waiting for the running jobs as ``with ProcessPoolExecutor`` would.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: SIGKILL this process when its parent exits (Linux; else no-op)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl() took effect
        os._exit(1)


#: the parent's progress queue in a worker (set by :func:`_start_worker`)
_progress_queue: Any = None
FAILURE_POLL_S = 0.2  # how often the parent looks for a failed job while no job reports
LATE_TICKS_S = 5.0  # how long the parent waits for progress sent before the last results


def _start_worker(parent_pid: int, queue: Any) -> None:
    """Pool initializer: die with the parent; keep the queue progress goes to."""
    global _progress_queue  # noqa: PLW0603 - one queue per worker process
    die_with_parent(parent_pid)
    _progress_queue = queue


def _call(fn: Callable[[J, Callable[[int], None]], R], job: J) -> R:
    """``fn(job, tick)`` in a worker: each ``tick(n)`` (one batch of work, e.g. an epoch)
    goes to the parent's queue; the last message (None) says the job is done, so the parent
    never misses a tick still in the queue's pipe."""
    queue = _progress_queue
    try:
        return fn(job, queue.put)
    finally:
        queue.put(None)


def run_in_workers(
    fn: Callable[[J, Callable[[int], None]], R],
    jobs: Sequence[J],
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> list[R]:
    """``[fn(job, tick) for job in jobs]`` in ``workers`` processes, in job order: this one
    and ``workers - 1`` spawned ones, each taking the next job when it is free (ADR 0373: one
    process start-up less than a pool of ``workers``, and the parent, which holds the inputs
    already, no longer sits idle). Each ``tick(n)`` of a job reaches ``progress(n)`` in this
    process, so a progress bar moves while the jobs run, not once per finished job;
    ``progress`` is only called from this thread (the workers' ticks are passed on between
    the local job's ticks, and while this process waits for the last jobs)."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 1 or len(jobs) <= 1:
        return [fn(job, progress or (lambda _n: None)) for job in jobs]
    spawned = min(workers - 1, len(jobs) - 1)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(
        spawned, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(), queue)
    )
    lock = threading.Lock()
    # held while a dispatch thread submits: submit() may start a worker process, which is in
    # the pool's list only once its start() returns. Stopping in between missed it: it was
    # not killed, and when this process exited it printed a spawn traceback on the shared
    # stderr (seen as test_sigterm_is_like_ctrl_c failing under load 9).
    launching = threading.Lock()
    state = {"next": 0, "submitted": 0, "finished": 0}
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def take(*, remote: bool) -> int | None:
        with lock:
            if errors or state["next"] >= len(jobs):
                return None
            i = state["next"]
            state["next"] += 1
            state["submitted"] += remote
            return i

    def dispatch() -> None:  # one thread per spawned worker: it waits, the worker computes
        while (i := take(remote=True)) is not None:
            try:
                with launching:
                    future = pool.submit(_call, fn, jobs[i])
                results[i] = future.result()
            except BaseException as exc:  # handed to the main thread
                with lock:
                    errors.append(exc)
                return

    def forward(timeout: float | None) -> None:
        """Pass the workers' ticks on: what is queued now, or wait up to ``timeout``."""
        while True:
            try:
                n = queue.get(timeout=timeout) if timeout else queue.get_nowait()
            except queue_mod.Empty:
                return
            if n is None:
                state["finished"] += 1
            elif progress is not None:
                progress(n)
            if timeout:
                return

    def tick(n: int) -> None:
        if progress is not None:
            progress(n)
        forward(None)

    threads = [threading.Thread(target=dispatch, daemon=True) for _ in range(spawned)]
    try:
        for t in threads:
            t.start()
        while (i := take(remote=False)) is not None:
            results[i] = fn(jobs[i], tick)
        # done when every dispatch thread has its results. Waiting instead for each worker's
        # closing None (sent by its queue's feeder thread, after the result) hung the replay
        # about once in 25 runs (-j 2, soak dataset): that None sometimes never came, for a
        # reason not found. Late ticks only move the bar, so they get a bounded wait.
        while not errors and any(t.is_alive() for t in threads):
            forward(FAILURE_POLL_S)
        deadline = time.monotonic() + LATE_TICKS_S  # the bar's last ticks, bounded
        while state["finished"] < state["submitted"] and time.monotonic() < deadline:
            forward(FAILURE_POLL_S)
        forward(None)
        if errors:
            raise errors[0]
    except BaseException:
        with lock:
            errors.append(RuntimeError("stopped"))  # the dispatch threads take no more jobs
        threading.excepthook = lambda args: None
        with launching:  # no worker is half-started now, and none will start after
            procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join(5)
        raise
    finally:
        queue.close()
    for t in threads:
        t.join()
    pool.shutdown(wait=True)
    return results
