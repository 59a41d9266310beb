"""The CPU time of one task_numa_work(), for the scanner's 32x overhead cap (ADR 0350).

kernel/sched/fair.c task_numa_work() ends with (v5.x to v7.1, KERNEL.md §3.4)::

    if (unlikely(p->se.sum_exec_runtime != runtime)) {
        u64 diff = p->se.sum_exec_runtime - runtime;
        p->node_stamp += 32 * diff;
    }

so the thread that scanned waits 32 times the scan's CPU time longer before task_tick_numa()
queues its next work item ("to limit NUMA PTE scanning overhead to 3% max"), and another
thread of the mm usually wins the next scan: the lab's vCPU threads take turns (docs/lab.md).
A scan's CPU time is dominated by the MMU-notifier invalidations it sends: KVM's zap of each
SPTE plus change_pte_range() / change_huge_pmd() of the same page. :class:`NumaWorkCost`
prices them per SPTE zapped and per PTE changed without an SPTE (the VMM's own VMAs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.model.hosting import VmHosting

NODE_STAMP_OVERHEAD_FACTOR = 32  # kernel/sched/fair.c task_numa_work(): node_stamp += 32 * diff


@dataclass(frozen=True)
class NumaWorkCost:
    """CPU nanoseconds of a task_numa_work() per unit of work.

    * ``ns_per_spte_4k`` 180: one 4 KiB SPTE zapped plus its PTE made PROT_NONE;
    * ``ns_per_spte_2m`` 1400: one 2 MiB SPTE zapped plus its PMD made PROT_NONE;
    * ``ns_per_pte`` 100: one PTE changed where KVM has no SPTE (the VMM's own VMAs).

    The defaults are what `tlbreplay calibrate` measures on the lab host (Linux 6.18,
    kvm_pvm, 2 CPUs): the first two from notifier to closing host flush in the captures
    (:func:`pipeline.ingest.capture_facts.invalidate_ns_per_spte`), the third from the lab's
    mprotect() probe without SPTEs (pipeline/lab/zapprobe.py). A capture's own
    measurement (``VmHosting.scan_ns_per_spte_4k`` / ``_2m``) replaces them.
    """

    ns_per_spte_4k: float = 180.0
    ns_per_spte_2m: float = 1400.0
    ns_per_pte: float = 100.0

    def for_host(self, hosting: VmHosting) -> NumaWorkCost:
        out = self
        if hosting.scan_ns_per_spte_4k is not None:
            out = replace(out, ns_per_spte_4k=hosting.scan_ns_per_spte_4k)
        if hosting.scan_ns_per_spte_2m is not None:
            out = replace(out, ns_per_spte_2m=hosting.scan_ns_per_spte_2m)
        return out

    def work_ns(self, sptes_4k: int, sptes_2m: int, ptes_without_spte: int) -> float:
        return (
            sptes_4k * self.ns_per_spte_4k
            + sptes_2m * self.ns_per_spte_2m
            + ptes_without_spte * self.ns_per_pte
        )

    def node_stamp_delay_ms(self, sptes_4k: int, sptes_2m: int, ptes_without_spte: int) -> float:
        """``32 * diff`` of task_numa_work(), in ms of the thread's runtime."""
        work = self.work_ns(sptes_4k, sptes_2m, ptes_without_spte)
        return NODE_STAMP_OVERHEAD_FACTOR * work / 1e6
