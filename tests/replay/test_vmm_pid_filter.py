"""The v6.7+ PID filter on the VMM's own VMAs (ADR 0340, ADR 0350; traces/real/, docs/lab.md)."""

from __future__ import annotations

from pipeline.model.hosting import VmHosting, VmmArea
from tests.replay.test_hosting import MIB, RAM_HVA, _scans


def test_vmm_area_is_pid_inactive_for_the_vcpu_from_the_third_pass() -> None:
    # kernel/sched/fair.c vma_is_accessed() (v6.18): a VMA's pids_active bits are set only by
    # NUMA hinting faults (mm/memory.c do_numa_page() -> vma_set_access_pid_bit()); the vCPU
    # thread never faults on the VMM's 24 MiB anon area, so the area is accessed only by
    # (1) seq - start_scan_seq < 2, (3) offset inside it, (4) seq > prev_scan_seq + 1 thread.
    # Passes 0 and 1 (rule 1): area 6144 pages + guest 232 MiB = 59392, then guest 24 MiB.
    # Pass 2: area pid_inactive, guest gets the whole 65536-page budget and the budget ends at
    # its last page (offset = guest end; the next work item wraps). Rule (4) needs
    # seq > 1 + get_nr_threads() (vcpus + the default VMM threads = 9), i.e. seq 11, so
    # passes 2..6 are guest-only 65536-page scans.
    area = VmmArea(RAM_HVA - 64 * MIB, 24 * MIB, 1 * MIB, "anon")
    scans = _scans(VmHosting("vm0", vmm_areas=(area,)), epochs=160)
    sizes = (scans["gfn_end"] - scans["gfn_start"]).to_list()
    assert sizes[:7] == [59392, 6144, 59392, 6144, 65536, 65536, 65536]


def test_a_vcpu_threads_own_stack_keeps_its_pid_bit() -> None:
    # ADR 0350: the same area as above, but it is the vCPU thread's stack mapping (its TLS
    # and rseq area, VmmArea.tls_vcpu = 0). The kernel writes the rseq area after each
    # preemption (kernel/rseq.c rseq_update_cpu_node_id()), so after every scan of the area
    # the thread takes a hinting fault there and do_numa_page() -> vma_set_access_pid_bit()
    # sets its bit: from pass 2 the area stays accessed and keeps taking 6144 pages of the
    # budget, so the 59392 / 6144 alternation of passes 0-1 goes on.
    stack = VmmArea(RAM_HVA - 64 * MIB, 24 * MIB, 1 * MIB, "anon", tls_vcpu=0)
    scans = _scans(VmHosting("vm0", vmm_areas=(stack,)), epochs=160)
    sizes = (scans["gfn_end"] - scans["gfn_start"]).to_list()
    assert sizes[:7] == [59392, 6144, 59392, 6144, 59392, 6144, 59392]
    # a vCPU the VM does not have owns nothing: the ADR 0340 behaviour
    other = VmmArea(RAM_HVA - 64 * MIB, 24 * MIB, 1 * MIB, "anon", tls_vcpu=5)
    got = _scans(VmHosting("vm0", vmm_areas=(other,)), epochs=160)
    assert (got["gfn_end"] - got["gfn_start"]).to_list()[:5] == [59392, 6144, 59392, 6144, 65536]
