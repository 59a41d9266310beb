"""The lab guest's pure parts: KVM ABI numbers, page tables, the touch loop, touch ranges."""

from __future__ import annotations

import ctypes
import os
import struct
import time
from pathlib import Path

import pytest

from pipeline.lab import kvm
from pipeline.lab.guest import (
    CTL_GPA,
    GIB,
    OFF_CODE,
    OFF_PD_CTL,
    OFF_PD_RAM,
    OFF_PDPT,
    OFF_PML4,
    PTE_PS,
    TOUCH_LOOP,
    build_control,
    long_mode_user_sregs,
    touch_range,
)
from pipeline.lab.memory import HostMapping
from pipeline.lab.pin import split_iovecs


def test_ioctl_numbers_match_linux_uapi() -> None:
    # Values of the _IO/_IOR/_IOW macros of include/uapi/linux/kvm.h on x86-64.
    assert kvm.KVM_CREATE_VM == 0xAE01
    assert kvm.KVM_RUN == 0xAE80
    assert kvm.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert kvm.KVM_GET_REGS == 0x8090AE81
    assert kvm.KVM_SET_REGS == 0x4090AE82
    assert kvm.KVM_GET_SREGS == 0x8138AE83
    assert kvm.KVM_SET_SREGS == 0x4138AE84
    assert kvm.KVM_GET_SUPPORTED_CPUID == 0xC008AE05
    assert kvm.KVM_SET_CPUID2 == 0x4008AE90
    assert kvm.KVM_GET_STATS_FD == 0xAECE


def test_struct_layouts() -> None:
    assert ctypes.sizeof(kvm.KvmSegment) == 24
    assert ctypes.sizeof(kvm.KvmDtable) == 16
    assert ctypes.sizeof(kvm.KvmSregs) == 312
    assert ctypes.sizeof(kvm.KvmRegs) == 144
    assert ctypes.sizeof(kvm.KvmCpuidEntry2) == 40
    assert ctypes.sizeof(kvm.KvmStatsHeader) == 24
    assert kvm.KvmSregs.efer.offset == 0x108


def _decode_loop() -> list[tuple[int, str, int]]:
    """(offset, mnemonic, branch target) of the touch loop, decoded by hand."""
    code = TOUCH_LOOP
    assert code[0:3] == bytes.fromhex("4889f8")  # mov rax, rdi
    assert code[3:5] == bytes.fromhex("fe00")  # inc byte [rax]: a write to every page
    assert code[5:8] == bytes.fromhex("4801d0")  # add rax, rdx
    assert code[8:11] == bytes.fromhex("4839f0")  # cmp rax, rsi
    assert code[11] == 0x72  # jb rel8
    assert code[13:16] == bytes.fromhex("48ff03")  # inc qword [rbx]
    assert code[16] == 0xEB  # jmp rel8
    jb_target = 13 + struct.unpack("b", code[12:13])[0]
    jmp_target = 18 + struct.unpack("b", code[17:18])[0]
    return [(11, "jb", jb_target), (16, "jmp", jmp_target)]


def test_touch_loop_branches_to_the_touch_and_the_pass() -> None:
    assert len(TOUCH_LOOP) == 18
    assert _decode_loop() == [(11, "jb", 3), (16, "jmp", 0)]


def test_touch_ranges() -> None:
    mem = 256 << 20
    assert touch_range("split", mem, 2, 0) == (0, 128 << 20)
    assert touch_range("split", mem, 2, 1) == (128 << 20, 256 << 20)
    assert touch_range("all", mem, 3, 2) == (0, mem)
    assert touch_range("hot", mem, 2, 1) == (0, 32 << 20)
    with pytest.raises(ValueError, match="unknown pattern"):
        touch_range("zigzag", mem, 2, 0)


def test_page_tables_identity_map_ram_and_control_at_cpl3() -> None:
    size = 2 << 20
    buf = (ctypes.c_char * size)()
    mapping = HostMapping(ctypes.addressof(buf), size, "shared", False, "default")
    mem = GIB + (4 << 20)  # two PDs, the second one partly used
    build_control(mapping, mem, 2)
    q = lambda off: struct.unpack_from("<Q", buf, off)[0]  # noqa: E731
    user = 0x7
    assert q(OFF_PML4) == (CTL_GPA + OFF_PDPT) | user
    assert q(OFF_PDPT) == (CTL_GPA + OFF_PD_RAM) | user
    assert q(OFF_PDPT + 8) == (CTL_GPA + OFF_PD_RAM + 4096) | user
    assert q(OFF_PDPT + 16) == 0
    assert q(OFF_PDPT + 8 * 511) == (CTL_GPA + OFF_PD_CTL) | user
    assert q(OFF_PD_CTL) == CTL_GPA | user | PTE_PS
    # PD entry i of GiB g maps gpa g GiB + i * 2 MiB, 2 MiB page, user-accessible.
    assert q(OFF_PD_RAM + 8 * 5) == (5 << 21) | user | PTE_PS
    assert q(OFF_PD_RAM + 4096 + 8) == (GIB + (2 << 20)) | user | PTE_PS
    assert q(OFF_PD_RAM + 4096 + 16) == 0  # beyond guest RAM
    assert bytes(buf[OFF_CODE : OFF_CODE + len(TOUCH_LOOP)]) == TOUCH_LOOP


def test_sregs_are_long_mode_cpl3() -> None:
    sregs = kvm.KvmSregs()
    long_mode_user_sregs(sregs)
    assert sregs.cs.l == 1 and sregs.cs.dpl == 3 and sregs.cs.db == 0
    assert sregs.ss.dpl == 3
    assert sregs.cr0 & (1 << 31) and sregs.cr0 & 1  # PG, PE
    assert sregs.cr4 & (1 << 5)  # PAE
    assert sregs.efer & (1 << 8) and sregs.efer & (1 << 10)  # LME, LMA
    assert sregs.cr3 == CTL_GPA + OFF_PML4


def test_iovecs_are_at_most_one_gib() -> None:
    pieces = split_iovecs(0x7F0000000000, 2 * GIB + (6 << 20))
    assert [length for _, length in pieces] == [GIB, GIB, 6 << 20]
    assert pieces[1][0] == 0x7F0000000000 + GIB
    assert split_iovecs(0x1000, 4096) == [(0x1000, 4096)]


def _kvm_usable() -> str | None:
    if not Path("/dev/kvm").exists():
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible (needs root or the kvm group)"
    return None


@pytest.mark.skipif(_kvm_usable() is not None, reason=str(_kvm_usable()))
def test_guest_runs_and_touches_pages() -> None:
    """A 16 MiB guest on 2 vCPUs sweeps its RAM natively (no tracing, numa_balancing untouched)."""
    from pipeline.errors import MissingFacilityError
    from pipeline.lab.guest import Guest

    try:
        guest = Guest(16 << 20, 2, "anon", False, "split")
    except (OSError, MissingFacilityError) as exc:  # e.g. no nested virtualization
        pytest.skip(f"KVM refuses a VM here: {exc}")
    try:
        guest.start()
        deadline = time.monotonic() + 10
        while min(guest.passes()) < 3 and time.monotonic() < deadline and not guest.failed():
            time.sleep(0.01)
        results = guest.stop()
        assert guest.failed() == []
        assert all(r.passes >= 3 for r in results)
        stats = guest.vcpu_stats()
        assert stats.get("insn_emulation", 0) == 0  # runs natively, not emulated
        # every 4K page of the 16 MiB was faulted in through the secondary MMU
        assert stats["pf_fixed"] >= (16 << 20) // 4096
        # each pass increments the first byte of every page of the vCPU's slice
        view = guest.ram.view()
        assert view[0] != b"\0"
        assert view[(8 << 20) + 4096] != b"\0"
        # the vCPU threads' pthread_self() lies in their own stack mappings (ADR 0350)
        maps = Path("/proc/self/maps").read_text().splitlines()
        spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in maps]
        for hva in guest.pthread_addresses():
            assert any(lo <= hva < hi for lo, hi in spans)
        # the KVM zap probe: the RAM's 4096 SPTEs are zapped by the first mprotect()
        from pipeline.lab.zapprobe import installed_sptes, kvm_zap_ns_per_spte

        assert installed_sptes(guest.stats()) >= (16 << 20) // 4096
        ns = kvm_zap_ns_per_spte(guest)
        assert ns is None or 0 < ns < 10_000
        assert installed_sptes(guest.stats()) < 16  # the control memslot's few pages stay
    finally:
        guest.close()
