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

import os
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import DatasetError
from pipeline.replay.counters import EPOCH_COUNTERS, PAGE_SIZES, VCPU_COUNTERS

PAGE_BYTES = 1 + 1 + 4  # pflags, pnode, pcpupid
GRANULE_BYTES = 2 + 1 + 2 + 2 + 1 + 2 + 1 + 1 + 2 + 4  # state.py: the g_* arrays
PAGES_PER_GRANULE = 512
DEFAULT_MEMORY_SHARE = 0.5


UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``--max-memory`` text: a number of bytes with an optional K, M, G or T (binary)."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        value = -1.0
    if value <= 0:
        msg = f"`{text}` is not a size; give bytes with an optional K, M, G or T, e.g. 8G"
        raise DatasetError("--max-memory", msg)
    return int(value * UNITS[unit])


def default_max_memory_bytes() -> int:
    """Half of the machine's physical memory (8 GiB when it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 8 << 30
    return int(total * DEFAULT_MEMORY_SHARE)


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
        granules = -(-vm.nr_pages // PAGES_PER_GRANULE)
        total += vm.nr_pages * PAGE_BYTES + granules * GRANULE_BYTES
        total += n_epochs * (per_epoch_vm + threads * (len(VCPU_COUNTERS) + 1) * 8)
    return total


def _gib(n: float) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


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
        what.append(f"vm `{biggest.name}` of {_gib(biggest.nr_pages * 4096)}")
    msg = (
        f"the replay needs about {_gib(estimate)} of memory ({', '.join(what)}, "
        f"{max(1, workers)} worker(s)), over the limit of {_gib(limit)}; check the trace's "
        "time span and the VM sizes, use fewer `--jobs`, a longer `--epoch-ms`, or raise "
        "`--max-memory`"
    )
    raise DatasetError("replay", msg)
