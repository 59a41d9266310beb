"""Guest RAM for the lab: private anonymous or memfd-shared, THP on/off, aligned host mappings.

The mapping is made with libc ``mmap`` (not Python's ``mmap`` module) so that its host virtual
address is 2 MiB aligned, as a VMM aligns guest RAM so THPs can back it, and so the address can
be handed to ``KVM_SET_USER_MEMORY_REGION``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
MADV_DONTFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE = 10, 14, 15
MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 1, 2, 3  # include/uapi/linux/mempolicy.h
MPOL_F_NUMA_BALANCING = 1 << 13  # include/uapi/linux/mempolicy.h
SYS_MBIND = 237  # x86-64
HUGE_2M = 2 << 20
MAP_FAILED = ctypes.c_void_p(-1).value

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mmap_checked(addr: int | None, size: int, prot: int, flags: int, fd: int) -> int:
    """mmap(2) through libc; OSError with the errno on MAP_FAILED."""
    ptr = libc.mmap(addr, size, prot, flags, fd, 0)
    if ptr is None or ptr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of {size} bytes: {os.strerror(err)}")
    return int(ptr)


@dataclass
class HostMapping:
    """One host mapping handed to KVM as a memslot."""

    hva: int
    size_bytes: int
    backing: str  # anon | shared
    thp: bool
    mempolicy: str  # enums.mempolicy
    fd: int = -1

    @property
    def mof_policy(self) -> bool:
        return self.mempolicy == "bind+numa_balancing"

    def view(self) -> ctypes.Array[ctypes.c_char]:
        """A ctypes byte array over the mapping (no copy)."""
        return (ctypes.c_char * self.size_bytes).from_address(self.hva)

    def protect(self, prot: int) -> None:
        """mprotect() the whole mapping (an MMU-notifier invalidation of all of it)."""
        _check(libc.mprotect(self.hva, self.size_bytes, prot), "mprotect")

    def close(self) -> None:
        libc.munmap(self.hva, self.size_bytes)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


MBIND_MODES = {
    "bind": MPOL_BIND,
    "bind+numa_balancing": MPOL_BIND | MPOL_F_NUMA_BALANCING,
    "preferred": MPOL_PREFERRED,
    "interleave": MPOL_INTERLEAVE,
}


def default_mempolicy(backing: str) -> str:
    """The lab's policy when none is asked for: shared gets MPOL_BIND|MPOL_F_NUMA_BALANCING
    (else task_numa_work() never scans it, vma_policy_mof()), anon none."""
    return "bind+numa_balancing" if backing == "shared" else "default"


def mbind(hva: int, size_bytes: int, mempolicy: str) -> None:
    """mbind(2) the range to node 0 with ``mempolicy`` (enums.mempolicy; "default": none)."""
    if mempolicy == "default":
        return
    nodemask = ctypes.c_ulong(1)  # node 0
    ret = libc.syscall(
        SYS_MBIND,
        ctypes.c_ulong(hva),
        ctypes.c_ulong(size_bytes),
        ctypes.c_ulong(MBIND_MODES[mempolicy]),
        ctypes.byref(nodemask),
        ctypes.c_ulong(64),
        ctypes.c_ulong(0),
    )
    _check(int(ret), f"mbind({mempolicy})")


def map_guest_ram(
    size_bytes: int,
    backing: str,
    thp: bool,
    *,
    name: str = "tlbreplay-ram",
    mempolicy: str | None = None,
) -> HostMapping:
    """Map ``size_bytes`` of guest RAM at a 2 MiB aligned address, with ``mempolicy``
    (default: :func:`default_mempolicy`) on node 0.

    task_numa_work() skips a VMA whose policy lacks MPOL_F_MOF as `unsuitable`
    (kernel/sched/fair.c + mm/mempolicy.c vma_policy_mof(), KERNEL.md 3.6): shmem without a
    policy, and any VMA under a plain MPOL_BIND / PREFERRED / INTERLEAVE.
    """
    mempolicy = mempolicy or default_mempolicy(backing)
    if mempolicy not in ("default", *MBIND_MODES):
        msg = f"unknown mempolicy {mempolicy!r}"
        raise ValueError(msg)
    if size_bytes % HUGE_2M:
        msg = f"guest RAM of {size_bytes} bytes is not a multiple of 2 MiB"
        raise ValueError(msg)
    reserve = mmap_checked(
        None, size_bytes + HUGE_2M, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1
    )
    hva = (reserve + HUGE_2M - 1) & ~(HUGE_2M - 1)
    fd = -1
    prot = PROT_READ | PROT_WRITE
    if backing == "anon":
        mmap_checked(hva, size_bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1)
    elif backing == "shared":
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size_bytes)
        mmap_checked(hva, size_bytes, prot, MAP_SHARED | MAP_FIXED, fd)
    else:
        msg = f"unknown backing {backing!r} (anon | shared)"
        raise ValueError(msg)
    if hva > reserve:
        libc.munmap(reserve, hva - reserve)
    tail = reserve + size_bytes + HUGE_2M - (hva + size_bytes)
    if tail:
        libc.munmap(hva + size_bytes, tail)
    _check(libc.madvise(hva, size_bytes, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE), "madvise")
    # As QEMU does for guest RAM: a fork (e.g. spawning the capture) must not COW-share it.
    _check(libc.madvise(hva, size_bytes, MADV_DONTFORK), "madvise(MADV_DONTFORK)")
    mbind(hva, size_bytes, mempolicy)
    return HostMapping(hva, size_bytes, backing, thp, mempolicy, fd)


def map_control(size_bytes: int) -> HostMapping:
    """The small memslot holding page tables, code and counters: shared anonymous (shmem).

    Shared so it never merges with the private guest RAM VMA and NUMA balancing skips it
    (shared, no MOF policy), so scans of it do not zap the guest's page-table shadows.
    """
    hva = mmap_checked(None, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1)
    _check(libc.madvise(hva, size_bytes, MADV_DONTFORK), "madvise(MADV_DONTFORK)")
    return HostMapping(hva, size_bytes, "shared", False, "default")
