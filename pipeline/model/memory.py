"""The engine's memory per guest page, and ``--max-memory`` (ADR 0380, ADR 0205).

Shared by ``replay`` (which refuses a replay whose arrays exceed the limit,
pipeline/replay/bounds.py) and ``synth`` (which refuses, before generating, a VM that no replay
could hold): per 4 KiB page the engine keeps ``pflags`` u8 + ``pnode`` i8 + ``pcpupid`` i32
(pipeline/replay/state.py), per 2 MiB granule 18 bytes of i8/i16/i32/bool state.
"""

from __future__ import annotations

import os

from pipeline.errors import DatasetError

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


def vm_state_bytes(nr_pages: int) -> int:
    """Bytes of one VM's per-page and per-granule engine state (one policy)."""
    granules = -(-nr_pages // PAGES_PER_GRANULE)
    return nr_pages * PAGE_BYTES + granules * GRANULE_BYTES


def gib_text(n: float) -> str:
    return f"{n / (1 << 30):,.1f} GiB"
