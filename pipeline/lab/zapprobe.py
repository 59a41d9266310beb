"""The KVM zap walk's cost per SPTE on this host, measured apart from the host PTE walk.

A trace shows when an MMU-notifier invalidation starts (kvm_unmap_hva_range) and when the
host flush that ends change_protection() comes, but no event ends KVM's part in between: on a
shadow MMU kvm_zap_rmap() has no tracepoint (ADR 0350). The span bounds the KVM walk from
above. This probe measures the KVM part alone, after the capture window, with the vCPUs
stopped and their SPTEs still installed:

1. ``mprotect(RAM, PROT_READ)``: mm/mprotect.c change_protection() ->
   mmu_notifier_invalidate_range_start() -> virt/kvm/kvm_main.c
   kvm_mmu_notifier_invalidate_range_start() -> kvm_unmap_gfn_range() zaps every SPTE of the
   range (arch/x86/kvm/mmu/mmu.c kvm_rmap_zap_gfn_range() / tdp_mmu_zap_leafs()), then
   change_pte_range() write-protects every PTE;
2. ``mprotect(RAM, PROT_READ | PROT_WRITE)``, then ``mprotect(RAM, PROT_READ)`` again: the
   same walks, but KVM finds no SPTE left.

(1) minus the second ``PROT_READ`` is the zap of the SPTEs that were installed (KVM's own
``pages_4k`` + ``pages_2m`` VM stats before and after), per SPTE. The calls are timed in the
calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID, which includes the kernel's work in the
syscall), not wall time: on a loaded host a preempted mprotect() would otherwise count the
other tasks' time, as a first loaded run did (175 ns per SPTE instead of ~55). On the lab
host (6.18, kvm_pvm) the zap costs 40-60 ns per 4 KiB SPTE, about a third of the ~160 ns the
whole invalidation takes per page.
"""

from __future__ import annotations

import time
from typing import Protocol

from pipeline.lab.memory import PROT_READ, PROT_WRITE, HostMapping

MIN_4K_SPTES = 1024  # below this (a THP-backed guest: 2 MiB SPTEs) the difference is noise


class ProbedVm(Protocol):
    ram: HostMapping

    def stats(self) -> dict[str, int]: ...


def installed_sptes(stats: dict[str, int]) -> int:
    return sum(int(stats.get(k, 0)) for k in ("pages_4k", "pages_2m", "pages_1g"))


def kvm_zap_ns_per_spte(vm: ProbedVm) -> float | None:
    """Nanoseconds of the KVM zap walk per installed SPTE of ``vm``'s RAM (None: too few 4 KiB
    SPTEs to measure, or the difference is not positive). Leaves the RAM read-write, with its
    SPTEs zapped; call it only once the guest is stopped (a vCPU writing to the read-only
    RAM would make KVM_RUN fail)."""
    before = vm.stats()
    if int(before.get("pages_4k", 0)) < MIN_4K_SPTES:
        return None
    t0 = time.thread_time_ns()
    vm.ram.protect(PROT_READ)
    t1 = time.thread_time_ns()
    zapped = installed_sptes(before) - installed_sptes(vm.stats())
    vm.ram.protect(PROT_READ | PROT_WRITE)
    t2 = time.thread_time_ns()
    vm.ram.protect(PROT_READ)
    t3 = time.thread_time_ns()
    vm.ram.protect(PROT_READ | PROT_WRITE)
    kvm_ns = (t1 - t0) - (t3 - t2)
    if zapped <= 0 or kvm_ns <= 0:
        return None
    return kvm_ns / zapped
