"""Resource bounds of a replay, checked before anything is allocated (ADR 0380).

The engine's arrays are sized from the VM and the replayed span (pipeline/replay/state.py,
pipeline/replay/counters.py): per 4 KiB page ``pflags`` u8 + ``pnode`` i8 + ``pcpupid`` i32,
per 2 MiB granule 18 bytes of i8/i16/i32/bool state, and per epoch the counters
``[epoch, page_size, counter]`` and ``[epoch, thread, counter]`` plus the scan period per
thread, all int64. A job holds one policy's arrays for every VM; ``workers`` jobs run at
once. The estimate is refused when it exceeds ``--max-memory`` (default: half the machine's
RAM), with the estimate, the limit and what made it large.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import DatasetError
from pipeline.model.memory import (
    default_max_memory_bytes,
    gib_text,
    parse_bytes,
    vm_state_bytes,
)
from pipeline.replay.counters import EPOCH_COUNTERS, PAGE_SIZES, VCPU_COUNTERS

__all__ = ["VmSize", "check_memory", "default_max_memory_bytes", "job_bytes", "parse_bytes"]


@dataclass(frozen=True)
class VmSize:
    """What sizes one VM's arrays: its name, guest pages and vCPU threads."""

    name: str
    nr_pages: int
    vcpus: int


def job_bytes(vms: Sequence[VmSize], n_epochs: int) -> int:
    """Bytes of one policy's engine arrays for ``vms`` over ``n_epochs`` epochs."""
    total = 0
    per_epoch_vm = len(PAGE_SIZES) * len(EPOCH_COUNTERS) * 8
    for vm in vms:
        threads = vm.vcpus + 1  # the VMM main thread is the last row
        total += vm_state_bytes(vm.nr_pages)
        total += n_epochs * (per_epoch_vm + threads * (len(VCPU_COUNTERS) + 1) * 8)
    return total


def check_memory(
    vms: Sequence[VmSize], n_epochs: int, epoch_ms: int, workers: int, limit_bytes: int | None
) -> int:
    """The estimate for ``workers`` concurrent jobs; raise DatasetError above the limit."""
    limit = default_max_memory_bytes() if limit_bytes is None else limit_bytes
    estimate = job_bytes(vms, n_epochs) * max(1, workers)
    if estimate <= limit:
        return estimate
    biggest = max(vms, key=lambda v: v.nr_pages, default=None)
    what = [f"{n_epochs:,} epochs of {epoch_ms} ms ({n_epochs * epoch_ms / 1000:,.0f} s)"]
    if biggest is not None:
        what.append(f"vm `{biggest.name}` of {gib_text(biggest.nr_pages * 4096)}")
    msg = (
        f"the replay needs about {gib_text(estimate)} of memory ({', '.join(what)}, "
        f"{max(1, workers)} worker(s)), over the limit of {gib_text(limit)}; check the trace's "
        "time span and the VM sizes, use fewer `--jobs`, a longer `--epoch-ms`, or raise "
        "`--max-memory`"
    )
    raise DatasetError("replay", msg)
