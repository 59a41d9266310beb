"""The tiny lab guest: 64-bit long-mode code at CPL 3 touching guest pages, one thread per vCPU.

No firmware, no guest OS: the host writes identity-mapped 4-level page tables (2 MiB guest pages,
user bit set), the touch loop and per-vCPU pass counters into a small separate memslot, sets the
vCPU registers directly with KVM_SET_SREGS/KVM_SET_REGS and runs KVM_RUN on one host thread per
vCPU. Long mode at CPL 3 because on the PVM backend (kvm_pvm, shadow MMU) only that runs natively;
CPL 0 and 32-bit code are emulated and their accesses bypass the secondary MMU (issue 7). The same
state is valid on VMX and SVM.

Guest loop (registers set by the host): rdi = first byte, rsi = end, rdx = stride, rbx = counter::

    pass:  mov  rax, rdi          48 89 f8
    touch: inc  byte [rax]        fe 00
           add  rax, rdx          48 01 d0
           cmp  rax, rsi          48 39 f0
           jb   touch             72 f6
           inc  qword [rbx]       48 ff 03
           jmp  pass              eb ee
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
import threading
import time
from dataclasses import dataclass, field

from pipeline.lab import kvm
from pipeline.lab.memory import HostMapping, map_control, map_guest_ram

TOUCH_LOOP = bytes.fromhex("4889f8" "fe00" "4801d0" "4839f0" "72f6" "48ff03" "ebee")  # fmt: skip

PAGE_4K = 4096
GIB = 1 << 30
CTL_GPA = 511 * GIB  # PDPT slot 511: far above any guest RAM the lab makes
CTL_SIZE = 2 << 20
OFF_PML4, OFF_PDPT, OFF_PD_CTL, OFF_PD_RAM = 0x0000, 0x1000, 0x2000, 0x3000
OFF_CODE, OFF_COUNTERS, OFF_TSS, OFF_GDT, OFF_IDT = 0x100000, 0x101000, 0x102000, 0x103000, 0x104000
MAX_RAM_GIB = (OFF_CODE - OFF_PD_RAM) // PAGE_4K
PTE_P, PTE_RW, PTE_US, PTE_PS = 0x1, 0x2, 0x4, 0x80
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = (
    1 << 0,
    1 << 1,
    1 << 4,
    1 << 5,
    1 << 16,
    1 << 18,
    1 << 31,
)
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RAM_SLOT, CTL_SLOT = 0, 1
STOP_SIGNAL = signal.SIGUSR1
PATTERNS = ("split", "all", "hot")


def touch_range(pattern: str, mem_bytes: int, vcpus: int, index: int) -> tuple[int, int]:
    """Guest-physical [start, end) that vCPU ``index`` sweeps for ``pattern``.

    split: each vCPU its own contiguous 1/vcpus slice; all: every vCPU the whole RAM;
    hot: every vCPU the first eighth of RAM (a hot set the rest of RAM never sees).
    """
    if pattern == "split":
        slice_bytes = mem_bytes // vcpus // PAGE_4K * PAGE_4K
        return index * slice_bytes, (index + 1) * slice_bytes
    if pattern == "all":
        return 0, mem_bytes
    if pattern == "hot":
        return 0, max(PAGE_4K, mem_bytes // 8 // PAGE_4K * PAGE_4K)
    msg = f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}"
    raise ValueError(msg)


def build_control(ctl: HostMapping, mem_bytes: int, vcpus: int) -> None:
    """Write page tables, code, GDT/TSS and zeroed counters into the control memslot."""
    buf = ctl.view()
    user = PTE_P | PTE_RW | PTE_US
    struct.pack_into("<Q", buf, OFF_PML4, (CTL_GPA + OFF_PDPT) | user)
    nr_gib = -(-mem_bytes // GIB)
    for gib in range(nr_gib):
        pd = OFF_PD_RAM + gib * PAGE_4K
        struct.pack_into("<Q", buf, OFF_PDPT + 8 * gib, (CTL_GPA + pd) | user)
        for i in range(512):
            gpa = gib * GIB + i * (2 << 20)
            if gpa < mem_bytes:
                struct.pack_into("<Q", buf, pd + 8 * i, gpa | user | PTE_PS)
    struct.pack_into("<Q", buf, OFF_PDPT + 8 * 511, (CTL_GPA + OFF_PD_CTL) | user)
    struct.pack_into("<Q", buf, OFF_PD_CTL, CTL_GPA | user | PTE_PS)
    ctypes.memmove(ctl.hva + OFF_CODE, TOUCH_LOOP, len(TOUCH_LOOP))
    ctypes.memset(ctl.hva + OFF_COUNTERS, 0, 64 * vcpus)


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15


def set_thread_comm(name: str) -> None:
    """Name the calling host thread like QEMU names vCPU threads (``CPU n/KVM``, 15 chars max)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _segment(selector: int, type_: int, *, code: bool) -> kvm.KvmSegment:
    return kvm.KvmSegment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=type_,
        present=1,
        dpl=3,
        db=0 if code else 1,
        s=1,
        l=1 if code else 0,
        g=1,
    )


def long_mode_user_sregs(sregs: kvm.KvmSregs) -> None:
    """Fill ``sregs`` for 64-bit mode at CPL 3 with paging on (CR3 = the control PML4)."""
    sregs.cs = _segment(0x33, 0xB, code=True)
    data = _segment(0x2B, 0x3, code=False)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = kvm.KvmSegment(
        base=CTL_GPA + OFF_TSS,
        limit=0x67,
        selector=0x40,
        type=0xB,
        present=1,
        s=0,
    )
    sregs.ldt = kvm.KvmSegment(selector=0, type=0x2, present=1, s=0, unusable=1, limit=0xFFFF)
    sregs.gdt = kvm.KvmDtable(base=CTL_GPA + OFF_GDT, limit=0xFFF)
    sregs.idt = kvm.KvmDtable(base=CTL_GPA + OFF_IDT, limit=0)
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
    sregs.cr3 = CTL_GPA + OFF_PML4
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.efer = EFER_LME | EFER_LMA


@dataclass
class VcpuResult:
    index: int
    tid: int = 0
    exit_reason: str = ""
    error: str = ""
    passes: int = 0


@dataclass
class Vcpu:
    index: int
    fd: int
    run: mmap.mmap
    stats_fd: int
    thread: threading.Thread | None = None
    result: VcpuResult = field(default_factory=lambda: VcpuResult(0))


class Guest:
    """One lab VM: its RAM, control slot, vCPU fds and the threads that run them."""

    def __init__(
        self,
        mem_bytes: int,
        vcpus: int,
        backing: str,
        thp: bool,
        pattern: str,
        *,
        mempolicy: str | None = None,
    ) -> None:
        if mem_bytes > MAX_RAM_GIB * GIB:
            msg = f"guest RAM above {MAX_RAM_GIB} GiB is not supported by the lab page tables"
            raise ValueError(msg)
        self.mem_bytes = mem_bytes
        self.pattern = pattern
        self.ranges = [touch_range(pattern, mem_bytes, vcpus, i) for i in range(vcpus)]
        self.kvm_fd = kvm.open_kvm()
        self.vm_fd = kvm.ioctl(self.kvm_fd, kvm.KVM_CREATE_VM, 0)
        self.vm_stats_fd = kvm.ioctl(self.vm_fd, kvm.KVM_GET_STATS_FD)
        self.ram = map_guest_ram(mem_bytes, backing, thp, mempolicy=mempolicy)
        self.ctl = map_control(CTL_SIZE)
        build_control(self.ctl, mem_bytes, vcpus)
        self._set_slot(RAM_SLOT, 0, self.ram)
        self._set_slot(CTL_SLOT, CTL_GPA, self.ctl)
        run_size = kvm.ioctl(self.kvm_fd, kvm.KVM_GET_VCPU_MMAP_SIZE)
        cpuid = kvm.KvmCpuid2(nent=kvm.MAX_CPUID_ENTRIES)
        kvm.ioctl(self.kvm_fd, kvm.KVM_GET_SUPPORTED_CPUID, cpuid)
        self.vcpus: list[Vcpu] = []
        for index in range(vcpus):
            fd = kvm.ioctl(self.vm_fd, kvm.KVM_CREATE_VCPU, index)
            run = mmap.mmap(fd, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            kvm.ioctl(fd, kvm.KVM_SET_CPUID2, cpuid)
            self._init_vcpu(fd, index)
            # Opened now: KVM_GET_STATS_FD is a vCPU ioctl and would wait for vcpu->mutex,
            # which KVM_RUN holds while the guest runs; reading the fd later needs no lock.
            stats_fd = kvm.ioctl(fd, kvm.KVM_GET_STATS_FD)
            self.vcpus.append(Vcpu(index, fd, run, stats_fd, result=VcpuResult(index)))
        self._stop = threading.Event()

    def _set_slot(self, slot: int, gpa: int, mapping: HostMapping) -> None:
        region = kvm.KvmUserspaceMemoryRegion(
            slot=slot,
            flags=0,
            guest_phys_addr=gpa,
            memory_size=mapping.size_bytes,
            userspace_addr=mapping.hva,
        )
        kvm.ioctl(self.vm_fd, kvm.KVM_SET_USER_MEMORY_REGION, region)

    def _init_vcpu(self, fd: int, index: int) -> None:
        sregs = kvm.KvmSregs()
        kvm.ioctl(fd, kvm.KVM_GET_SREGS, sregs)
        long_mode_user_sregs(sregs)
        kvm.ioctl(fd, kvm.KVM_SET_SREGS, sregs)
        start, end = self.ranges[index]
        regs = kvm.KvmRegs(
            rip=CTL_GPA + OFF_CODE,
            rflags=0x2,
            rdi=start,
            rsi=end,
            rdx=PAGE_4K,
            rbx=CTL_GPA + OFF_COUNTERS + 64 * index,
        )
        kvm.ioctl(fd, kvm.KVM_SET_REGS, regs)

    def _vcpu_main(self, vcpu: Vcpu, gate: threading.Event | None) -> None:
        set_thread_comm(f"CPU {vcpu.index}/KVM")
        vcpu.result.tid = threading.get_native_id()
        while gate is not None and not gate.wait(0.01):
            if self._stop.is_set():
                return
        try:
            while not self._stop.is_set():
                try:
                    kvm.ioctl(vcpu.fd, kvm.KVM_RUN)
                except kvm.KvmError as exc:
                    if exc.errno == 4 and self._stop.is_set():  # EINTR from the stop signal
                        break
                    if exc.errno == 4:
                        continue
                    raise
                reason = int.from_bytes(
                    vcpu.run[kvm.RUN_EXIT_REASON_OFFSET : kvm.RUN_EXIT_REASON_OFFSET + 4], "little"
                )
                if reason == 10:  # KVM_EXIT_INTR
                    continue
                vcpu.result.exit_reason = kvm.EXIT_REASONS.get(reason, str(reason))
                regs = kvm.KvmRegs()
                kvm.ioctl(vcpu.fd, kvm.KVM_GET_REGS, regs)
                vcpu.result.error = (
                    f"vcpu {vcpu.index}: unexpected exit {vcpu.result.exit_reason} "
                    f"at rip {regs.rip:#x}, union {bytes(vcpu.run[32:64]).hex()}"
                )
                break
        except Exception as exc:  # reported to the main thread
            vcpu.result.error = f"vcpu {vcpu.index}: {exc}"

    def start(self, gate: threading.Event | None = None) -> list[int]:
        """Start one host thread per vCPU; returns their host thread ids once all are running.
        With ``gate``, each thread enters the guest only once the gate is set."""
        signal.signal(STOP_SIGNAL, lambda *_: None)
        for vcpu in self.vcpus:
            vcpu.thread = threading.Thread(
                target=self._vcpu_main, args=(vcpu, gate), name=f"vcpu{vcpu.index}"
            )
            vcpu.thread.start()
        while any(v.result.tid == 0 for v in self.vcpus):
            time.sleep(0.001)
        return [v.result.tid for v in self.vcpus]

    def pthread_addresses(self) -> list[int]:
        """pthread_self() of each vCPU thread (CPython's thread ident on Linux): with glibc,
        the address of the thread's TCB, which holds its TLS and rseq area and sits at the
        top of the thread's stack mapping."""
        return [int(v.thread.ident or 0) if v.thread is not None else 0 for v in self.vcpus]

    def passes(self) -> list[int]:
        """Completed sweeps of each vCPU (the guest's counters)."""
        buf = self.ctl.view()
        return [struct.unpack_from("<Q", buf, OFF_COUNTERS + 64 * v.index)[0] for v in self.vcpus]

    def failed(self) -> list[str]:
        return [v.result.error for v in self.vcpus if v.result.error]

    def stop(self) -> list[VcpuResult]:
        """Kick every vCPU out of KVM_RUN (immediate_exit + signal) and join the threads."""
        self._stop.set()
        for vcpu in self.vcpus:
            vcpu.run[kvm.RUN_IMMEDIATE_EXIT_OFFSET] = 1
        for vcpu in self.vcpus:
            while vcpu.thread is not None and vcpu.thread.is_alive():
                if vcpu.thread.ident is not None:
                    signal.pthread_kill(vcpu.thread.ident, STOP_SIGNAL)
                vcpu.thread.join(0.05)
        for vcpu, count in zip(self.vcpus, self.passes(), strict=True):
            vcpu.result.passes = count
        return [v.result for v in self.vcpus]

    def stats(self) -> dict[str, int]:
        """KVM's VM-wide binary stats (remote_tlb_flush, mmu_shadow_zapped, ...)."""
        return kvm.read_binary_stats(self.vm_stats_fd)

    def vcpu_stats(self) -> dict[str, int]:
        """Sum over vCPUs of KVM's per-vCPU stats (pf_taken, pf_fixed, exits, ...)."""
        total: dict[str, int] = {}
        for vcpu in self.vcpus:
            for name, value in kvm.read_binary_stats(vcpu.stats_fd).items():
                total[name] = total.get(name, 0) + value
        return total

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.run.close()
            os.close(vcpu.stats_fd)
            os.close(vcpu.fd)
        os.close(self.vm_stats_fd)
        os.close(self.vm_fd)
        os.close(self.kvm_fd)
        self.ram.close()
        self.ctl.close()
