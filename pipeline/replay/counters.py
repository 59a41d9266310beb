"""Counter names and the per-VM counter arrays the engine fills (schemas/epochs.toml,
schemas/vcpu_epochs.toml).

Counters are int64 arrays indexed ``[epoch, page_size, counter]`` (epochs) and
``[epoch, thread, counter]`` (vcpu_epochs; the last thread row is the VMM main thread), so the
engine adds with numpy and the runner builds the frames once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.schema import table_schema

PAGE_SIZES = ("4K", "2M", "1G")
PS_4K, PS_2M, PS_1G = 0, 1, 2

# The counter columns of schemas/epochs.toml and schemas/vcpu_epochs.toml, in schema order: the
# tables' keys and the columns that are not event counts (a modelled cost, a period) are left
# out, so a counter added to a schema is counted here without a second list to keep in step.
EPOCH_NOT_COUNTERS = frozenset({"policy", "vm", "page_size", "epoch", "t_ms", "cost_us"})
VCPU_NOT_COUNTERS = frozenset({"policy", "vm", "vcpu", "epoch", "t_ms", "scan_period_ms"})


def schema_counters(table: str, not_counters: frozenset[str]) -> tuple[str, ...]:
    return tuple(c.name for c in table_schema(table).columns if c.name not in not_counters)


EPOCH_COUNTERS = schema_counters("epochs", EPOCH_NOT_COUNTERS)
E = {name: i for i, name in enumerate(EPOCH_COUNTERS)}

VCPU_COUNTERS = schema_counters("vcpu_epochs", VCPU_NOT_COUNTERS)
V = {name: i for i, name in enumerate(VCPU_COUNTERS)}

I64 = npt.NDArray[np.int64]


@dataclass
class Counters:
    """All counters of one VM under one policy, for the whole replay."""

    n_epochs: int
    n_threads: int
    epochs: I64 = field(init=False)
    threads: I64 = field(init=False)
    scan_period_ms: I64 = field(init=False)

    def __post_init__(self) -> None:
        self.epochs = np.zeros((self.n_epochs, len(PAGE_SIZES), len(EPOCH_COUNTERS)), np.int64)
        self.threads = np.zeros((self.n_epochs, self.n_threads, len(VCPU_COUNTERS)), np.int64)
        self.scan_period_ms = np.zeros((self.n_epochs, self.n_threads), np.int64)

    def add(self, epoch: int, page_size: int, name: str, value: int) -> None:
        if value:
            self.epochs[epoch, page_size, E[name]] += value

    def add_thread(self, epoch: int, thread: int, name: str, value: int) -> None:
        if value:
            self.threads[epoch, thread, V[name]] += value
