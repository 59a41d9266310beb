"""A replay's parameters (:class:`ReplayParams`, every engine knob with its kernel default and
source) and its output (:class:`ReplayOutput`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from pipeline.errors import DatasetError
from pipeline.model.hosting import VmHosting
from pipeline.model.vmmprofile import THREADS_BESIDES_VCPUS
from pipeline.replay.cost import CostModel
from pipeline.replay.kvm import ReschedModel, YieldModel
from pipeline.replay.workcost import NumaWorkCost

KNOBS = ("scan_delay_ms", "scan_period_min_ms", "scan_period_max_ms", "scan_size_mb")


@dataclass(frozen=True)
class ReplayParams:
    """Engine parameters; every field has a documented default (docs/engine.md).

    * ``epoch_ms`` 100: replay epoch; a multiple of the dataset's epoch_ms.
    * ``scan_size_mb``, ``scan_delay_ms``, ``scan_period_min_ms``, ``scan_period_max_ms``:
      override the VM rows' NUMA-balancing knobs (None: use the dataset).
    * ``yields``: the KVM yield-while-pending model (:class:`YieldModel`).
    * ``cost``: the cost model (:class:`CostModel`).
    * ``mmu``: override every VM's ``mmu`` (``tdp`` | ``shadow``; None: use the dataset).
    * ``preempt``: override every VM's host preemption model (None: use the dataset).
    * ``vmm_thread`` False: also let the VMM's other threads run task_numa_work (KERNEL.md
      §10a): those of ``VmHosting.vmm_threads`` at their measured pace (ADR 0363), else one
      main thread at ``vmm_thread_share``. Off by default: on the fit captures it adds scans
      the kernel did not make (ADR 0363).
    * ``shadow_guest_2m`` False: on a shadow MMU, assume the guest maps 2 MiB where the host
      has a THP, so SPTEs are 2M there (else 4K).
    * ``vmm_thread_share`` 0.05: the share of each epoch the VMM main thread runs (it mostly
      sleeps in ppoll()); its runtime drives task_tick_numa() (KERNEL.md §3.3).
    * ``vmm_threads`` 8: QEMU threads besides the vCPUs (main thread, iothreads, RCU, worker
      pool), counted by get_nr_threads() in the v6.12+ forced scan of an inactive VMA
      (kernel/sched/fair.c vma_is_accessed() condition (4), f22cde4371f3, KERNEL.md §3.4).
    * ``busy_vcpus`` None: treat every vCPU as running (in guest mode, gaining runtime) in
      every epoch, not only those with accesses. For real traces, whose accesses come from
      faults only: an idle-looking vCPU would otherwise never tick the scanner. None: on for a
      DATASET from a trace (:func:`from_trace`, ADR 0330), off for frames and synth datasets.
    * ``resched``: the need_resched() yields of the KVM zap walk (:class:`ReschedModel`;
      0 on an idle host, the default).
    * ``work_cost``: CPU time of task_numa_work() per SPTE zapped and PTE changed, for the
      ``node_stamp += 32 * runtime`` cap (:class:`NumaWorkCost`, ADR 0350).
    * ``hosting`` (): per-VM process and host facts (:class:`VmHosting`: the VMM's non-RAM
      VMAs, the vCPUs' CPU share, get_nr_threads(), host load, zap cost; ADR 0320). A VM
      without an entry keeps the defaults (guest RAM only, share 1.0, idle host). Empty:
      a DATASET's ``hosting.parquet`` when there is one and ``dataset_hosting`` (ADR 0330).
    * ``dataset_hosting`` True: use a DATASET's ``hosting.parquet`` (``--no-hosting``: False).
    * ``batch_epochs`` 256: epochs of ``accesses`` read at a time from a DATASET (memory
      bounded by one batch, not the dataset); the results do not depend on it.
    * ``spte_4k`` None: the share of THP-region granules backed by 4K pages, so mapped by 4K
      SPTEs (mixed SPTE levels, ADR 0371); None derives it from the boot profile (granules
      first touched only by 4K-grained accesses).
    * ``thp_fault_fallback`` 0.0: the share of THP-region granules whose THP fault fell back
      to 4K pages on the host (/proc/vmstat thp_fault_fallback; ADR 0371).
    * ``workers`` 1: processes running policies in parallel, this one included (ADR 0373;
      0: one per CPU, at most 8, when the dataset has at least 200k access rows). The
      results do not depend on it.
    * ``max_memory_bytes`` None: refuse a replay whose engine arrays are estimated above this
      (None: half the machine's RAM; pipeline/replay/bounds.py, ADR 0380).
    """

    epoch_ms: int = 100
    scan_size_mb: int | None = None
    scan_delay_ms: int | None = None
    scan_period_min_ms: int | None = None
    scan_period_max_ms: int | None = None
    yields: YieldModel = field(default_factory=YieldModel)
    cost: CostModel = field(default_factory=CostModel)
    mmu: str | None = None
    preempt: str | None = None
    vmm_thread: bool = False
    shadow_guest_2m: bool = False
    busy_vcpus: bool | None = None
    vmm_threads: int = THREADS_BESIDES_VCPUS
    vmm_thread_share: float = 0.05
    resched: ReschedModel = field(default_factory=ReschedModel)
    work_cost: NumaWorkCost = field(default_factory=NumaWorkCost)
    hosting: tuple[VmHosting, ...] = ()
    workers: int = 1
    dataset_hosting: bool = True
    batch_epochs: int = 256
    max_memory_bytes: int | None = None
    spte_4k: float | None = None
    thp_fault_fallback: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplayOutput:
    """The three result tables, conforming to schemas/epochs, vcpu_epochs, scans."""

    epochs: pl.DataFrame
    vcpu_epochs: pl.DataFrame
    scans: pl.DataFrame
    traces: dict[tuple[str, str], list[tuple[str, int, int]]] | None = None


def check_params(params: ReplayParams) -> None:
    if params.epoch_ms <= 0:
        raise DatasetError("--epoch-ms", f"must be positive, got {params.epoch_ms}")
    for name in KNOBS:
        value = getattr(params, name)
        if value is not None and value <= 0:
            raise DatasetError(f"--{name.replace('_', '-')}", f"must be positive, got {value}")
    if params.batch_epochs <= 0:
        raise DatasetError("batch_epochs", f"must be positive, got {params.batch_epochs}")
    if params.mmu not in (None, "tdp", "shadow"):
        raise DatasetError("mmu", f"unknown mmu `{params.mmu}`; choose tdp or shadow")
    if params.spte_4k is not None and not 0.0 <= params.spte_4k <= 1.0:
        raise DatasetError("spte_4k", f"must be a share in [0, 1], got {params.spte_4k}")
    if not 0.0 <= params.thp_fault_fallback <= 1.0:
        raise DatasetError(
            "--thp-fault-fallback", f"must be a share in [0, 1], got {params.thp_fault_fallback}"
        )
    if params.yields.mode not in ("process", "expected"):
        raise DatasetError("yields", f"unknown mode `{params.yields.mode}`; process or expected")
