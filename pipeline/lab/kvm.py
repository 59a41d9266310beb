"""The /dev/kvm ABI the lab guest needs: ioctl numbers, ctypes structs and a thin wrapper.

Layouts follow include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h (x86-64). Only the
calls the lab uses are here. ``ioctl`` goes through libc via ctypes so that ``KVM_RUN`` releases
the GIL while the vCPU runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

from pipeline.errors import MissingFacilityError

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class KvmRegs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10"),
            *("r11", "r12", "r13", "r14", "r15", "rip", "rflags"),
        )
    ]


class KvmSegment(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class KvmDtable(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


class KvmSregs(ctypes.Structure):
    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * 4),
    ]


class KvmCpuidEntry2(ctypes.Structure):
    _fields_ = [
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    ]


MAX_CPUID_ENTRIES = 256


class KvmCpuid2(ctypes.Structure):
    _fields_ = [
        ("nent", ctypes.c_uint32),
        ("padding", ctypes.c_uint32),
        ("entries", KvmCpuidEntry2 * MAX_CPUID_ENTRIES),
    ]


class KvmStatsHeader(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("name_size", ctypes.c_uint32),
        ("num_desc", ctypes.c_uint32),
        ("id_offset", ctypes.c_uint32),
        ("desc_offset", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint32),
    ]


class KvmStatsDesc(ctypes.Structure):
    """Fixed part of struct kvm_stats_desc; ``name_size`` bytes of name follow it."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("exponent", ctypes.c_int16),
        ("size", ctypes.c_uint16),
        ("offset", ctypes.c_uint32),
        ("bucket_size", ctypes.c_uint32),
    ]


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _ioc(_IOC_READ | _IOC_WRITE, 0x05, 8)  # sizeof(struct kvm_cpuid2)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _ioc(_IOC_WRITE, 0x46, ctypes.sizeof(KvmUserspaceMemoryRegion))
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ioc(_IOC_READ, 0x81, ctypes.sizeof(KvmRegs))
KVM_SET_REGS = _ioc(_IOC_WRITE, 0x82, ctypes.sizeof(KvmRegs))
KVM_GET_SREGS = _ioc(_IOC_READ, 0x83, ctypes.sizeof(KvmSregs))
KVM_SET_SREGS = _ioc(_IOC_WRITE, 0x84, ctypes.sizeof(KvmSregs))
KVM_SET_CPUID2 = _ioc(_IOC_WRITE, 0x90, 8)
KVM_GET_STATS_FD = _io(0xCE)

KVM_API_VERSION = 12
KVM_CAP_USER_MEMORY = 3
KVM_CAP_BINARY_STATS_FD = 203

# struct kvm_run: exit_reason at offset 8, immediate_exit at offset 1, the exit union at 32.
RUN_IMMEDIATE_EXIT_OFFSET = 1
RUN_EXIT_REASON_OFFSET = 8
RUN_UNION_OFFSET = 32

EXIT_REASONS = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    17: "INTERNAL_ERROR",
}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


class KvmError(OSError):
    """A /dev/kvm ioctl failed (errno and the call are in the message)."""


def ioctl(fd: int, request: int, arg: Any = None) -> int:
    """``ioctl(fd, request, arg)``; ``arg`` is an int, None or a ctypes object (by reference)."""
    if arg is None:
        ptr: Any = None
    elif isinstance(arg, int):
        ptr = ctypes.c_void_p(arg)
    else:
        ptr = ctypes.addressof(arg)
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        msg = f"ioctl {request:#x} on fd {fd}: {os.strerror(err)}"
        raise KvmError(err, msg)
    return int(ret)


def open_kvm(path: str = "/dev/kvm") -> int:
    """Open ``/dev/kvm`` and check the API version; a clear error when it is not usable."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        msg = f"`{path}` cannot be opened ({exc.strerror}): the lab needs KVM and root"
        raise MissingFacilityError(msg) from exc
    version = ioctl(fd, KVM_GET_API_VERSION)
    if version != KVM_API_VERSION:
        os.close(fd)
        msg = f"`{path}`: KVM API version {version}, expected {KVM_API_VERSION}"
        raise MissingFacilityError(msg)
    return fd


def read_binary_stats(stats_fd: int) -> dict[str, int]:
    """Read a KVM binary stats fd (Documentation/virt/kvm/api.rst, KVM_GET_STATS_FD).

    Returns cumulative/instant scalar stats by name; histograms are summed.
    """
    header = KvmStatsHeader.from_buffer_copy(os.pread(stats_fd, ctypes.sizeof(KvmStatsHeader), 0))
    desc_size = ctypes.sizeof(KvmStatsDesc) + header.name_size
    raw_desc = os.pread(stats_fd, desc_size * header.num_desc, header.desc_offset)
    descs = []
    data_len = 0
    for i in range(header.num_desc):
        chunk = raw_desc[i * desc_size : (i + 1) * desc_size]
        desc = KvmStatsDesc.from_buffer_copy(chunk[: ctypes.sizeof(KvmStatsDesc)])
        name = chunk[ctypes.sizeof(KvmStatsDesc) :].split(b"\0", 1)[0].decode()
        descs.append((name, desc.offset, desc.size))
        data_len = max(data_len, desc.offset + desc.size * 8)
    data = os.pread(stats_fd, data_len, header.data_offset)
    stats: dict[str, int] = {}
    for name, offset, size in descs:
        values = [
            int.from_bytes(data[offset + 8 * k : offset + 8 * k + 8], "little") for k in range(size)
        ]
        stats[name] = sum(values)
    return stats
