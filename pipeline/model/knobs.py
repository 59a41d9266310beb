"""The kernel's NUMA-balancing knob defaults, written down once (no heavy imports: the lab's VMM
process imports this, and its thread count is part of what it measures).

KERNEL.md 3.1: kernel/sched/fair.c sysctl_numa_balancing_scan_delay / _scan_period_min /
_scan_period_max / _scan_size, v6.5 and v7.1 alike.
"""

from __future__ import annotations

NUMA_KNOB_DEFAULTS: dict[str, int] = {
    "scan_delay_ms": 1000,
    "scan_period_min_ms": 1000,
    "scan_period_max_ms": 60000,
    "scan_size_mb": 256,
}
