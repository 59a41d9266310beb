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
    """``[fn(job, tick) for job in jobs]`` in ``workers`` spawned processes, in job order;
    each ``tick(n)`` of a job reaches ``progress(n)`` in this process, so a
    progress bar moves while the jobs run, not once per finished job."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(), queue)
    )
    try:
        futures = [pool.submit(_call, fn, job) for job in jobs]
        finished = 0
        while finished < len(futures):
            try:
                n = queue.get(timeout=FAILURE_POLL_S)
            except queue_mod.Empty:
                failed = [f for f in futures if f.done() and f.exception() is not None]
                if failed:
                    failed[0].result()  # raises the job's exception
                continue
            if n is None:
                finished += 1
            elif progress is not None:
                progress(n)
        results = [f.result() for f in futures]
    except BaseException:
        # the pool's manager thread fails once its workers are killed: keep stderr to one line
        threading.excepthook = lambda args: None
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join(5)
        raise
    finally:
        queue.close()
    pool.shutdown(wait=True)
    return results
