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


def run_in_workers(
    fn: Callable[[J], R], jobs: Sequence[J], workers: int, done: Callable[[], Any]
) -> list[R]:
    """``[fn(job) for job in jobs]`` in ``workers`` spawned processes, in job order;
    ``done()`` after each result."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
    results: list[R] = []
    try:
        for res in pool.map(fn, jobs):
            results.append(res)
            done()
    except BaseException:
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join(5)
        raise
    pool.shutdown(wait=True)
    return results
