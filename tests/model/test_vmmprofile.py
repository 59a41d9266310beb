"""The default VMM profile (ADR 0365, docs/engine.md "The default VMM profile")."""

from __future__ import annotations

import itertools

import pytest

from pipeline.model import vmmprofile as vp
from pipeline.model.hosting import SCANNED_KINDS, VmHosting

GIB = 1 << 30
RAM = (0x7F00_0000_0000, 0x7F00_0000_0000 + 4 * GIB)


@pytest.mark.parametrize("vcpus", [1, 4, 32])
def test_profile_is_a_valid_mm_around_guest_ram(vcpus: int) -> None:
    areas = vp.VmmProfile(vcpus).areas(*RAM)
    assert [a.hva_start for a in areas] == sorted(a.hva_start for a in areas)
    for a, b in itertools.pairwise(areas):
        assert a.hva_end <= b.hva_start  # no two VMAs overlap
    assert all(a.hva_end <= RAM[0] or a.hva_start >= RAM[1] for a in areas)
    # each vCPU thread's stack mapping holds its TLS (rseq area, ADR 0350), once
    assert sorted(a.tls_vcpu for a in areas if a.tls_vcpu >= 0) == list(range(vcpus))
    # get_nr_threads(): the vCPUs and QEMU's 8 other threads (ReplayParams.vmm_threads)
    assert vp.VmmProfile(vcpus).nr_threads == vcpus + 8
    # per thread: a stack and a guard page, an arena (used part + reserve)
    stacks = [a for a in areas if a.size_bytes == vp.THREAD_STACK_BYTES and a.kind == "anon"]
    assert len(stacks) == vcpus + 8 - 1  # the main thread's stack is [stack]
    assert sum(a.size_bytes == vp.ARENA_USED_BYTES for a in areas) == vcpus + 8
    # the 60 shared libraries: text skipped (file_ro), data scanned (file_rw)
    assert sum(a.kind == "file_rw" for a in areas) == vp.SHARED_LIBS + 1
    assert sum(a.kind == "file_ro" for a in areas) == vp.SHARED_LIBS + 1


def test_scan_budget_below_ram_grows_with_vcpus_not_with_ram() -> None:
    def below(vcpus: int, ram: tuple[int, int]) -> int:
        return sum(
            a.size_bytes
            for a in vp.VmmProfile(vcpus).areas(*ram)
            if a.kind in SCANNED_KINDS and a.active and a.hva_end <= ram[0]
        )

    one = below(1, RAM)
    mib = 1 << 20
    # binary data 2 + [heap] 24 + 8 thread stacks x 8 + 9 arenas x 1 + ROMs 16.375 (MiB)
    assert one == 2 * mib + 24 * mib + 8 * 8 * mib + 9 * mib + 16 * mib + 384 * 1024
    assert below(2, RAM) - one == 9 << 20  # one more vCPU: its stack and its arena
    assert below(1, (RAM[0], RAM[0] + 64 * GIB)) == one


def test_default_hosting_leaves_cpu_and_host_facts_defaulted() -> None:
    h = vp.default_hosting("vm0", 2, (RAM,))
    assert h.nr_threads == 10 and h.vmm_areas == vp.VmmProfile(2).areas(*RAM)
    base = VmHosting("vm0")
    assert h.vcpu_cpu_share == base.vcpu_cpu_share and h.host_runnable == base.host_runnable
    assert vp.default_hosting("vm0", 2, ()) == base
