"""The lab VMM's shape: helper threads and extra VMAs, so it can look like QEMU.

QEMU runs dozens of threads beside its vCPUs (main loop, RCU, I/O, vhost and worker threads)
and maps hundreds of VMAs (thread stacks, heap arenas, shared libraries, ROMs, device
buffers). task_numa_work() walks every VMA of the mm, and the PID filter counts every thread
(get_nr_threads(), kernel/sched/fair.c vma_is_accessed() rule 4), so both change the scan
cadence of guest RAM (ADR 0340). ``--vmm-threads N`` starts N helper threads that wake every
``wake_ms`` and write one byte of their own anonymous buffer (a periodically waking QEMU
worker), and maps ``vmas`` extra VMAs: alternating private anonymous (touched, so populated)
and private read-only mappings of a temporary file (like a shared library's text).
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
from dataclasses import dataclass, field

from pipeline.lab.memory import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    libc,
    mmap_checked,
)

PAGE = 4096
EXTRA_VMA_PAGES = 16  # 64 KiB each
HELPER_WAKE_MS = 100.0
VMAS_PER_THREAD = 4  # the default extra VMAs per helper thread (stack + arena + buffers)


@dataclass
class VmmShape:
    """Helper threads and extra VMAs of the lab VMM; :meth:`close` undoes both."""

    threads: int = 0
    vmas: int = 0
    wake_ms: float = HELPER_WAKE_MS
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _maps: list[tuple[int, int]] = field(default_factory=list)
    _fd: int = -1
    tids: list[int] = field(default_factory=list)

    def start(self) -> None:
        self._map_vmas()
        ready = threading.Barrier(self.threads + 1) if self.threads else None
        for index in range(self.threads):
            worker = threading.Thread(
                target=self._helper, args=(index, ready), name=f"worker{index}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
        if ready is not None:
            ready.wait(timeout=30)

    def _map_vmas(self) -> None:
        size = EXTRA_VMA_PAGES * PAGE
        if self.vmas:
            fd, path = tempfile.mkstemp(prefix="tlbreplay-vmm-")
            os.unlink(path)
            os.ftruncate(fd, size)
            self._fd = fd
        for i in range(self.vmas):
            if i % 2 == 0:
                hva = mmap_checked(
                    None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1
                )
                ctypes.memset(hva, 1, size)  # populated, as a VMM's buffers are
            else:
                hva = mmap_checked(None, size, PROT_READ, MAP_PRIVATE, self._fd)
                ctypes.string_at(hva, 1)
            self._maps.append((hva, size))

    def _helper(self, index: int, ready: threading.Barrier | None) -> None:
        from pipeline.lab.guest import set_thread_comm

        set_thread_comm(f"worker {index}")
        self.tids.append(threading.get_native_id())
        buf = (ctypes.c_ubyte * PAGE)()
        if ready is not None:
            ready.wait(timeout=30)
        n = 0
        while not self._stop.wait(self.wake_ms / 1000):
            n += 1
            buf[n % PAGE] = n & 0x7F

    def close(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(1.0)
        for hva, size in self._maps:
            libc.munmap(hva, size)
        self._maps.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
