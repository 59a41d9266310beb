"""The work a synth spec asks for, bounded before anything is generated (ADR 0205).

A spec can be valid key by key and still ask for more than any machine does: 64 vCPUs touching
4 KiB granules at full rate for 1e6 s is about 6e14 rows, and a 4 PiB VM needs 6 TiB of engine
state in every replay of it. Before generating, synth estimates

* the ``accesses`` rows: per phase, its vCPUs x its epochs x the granule touches per vCPU and
  epoch (``rate_mib_per_s x epoch / granule``, as :class:`pipeline.synth.generate.PhaseGen`
  draws them; a ``sweep`` phase makes at most two ranges per vCPU and epoch, ``idle`` none),
  an upper bound since adjacent touches are merged later;
* per VM, the engine state a replay of it needs (:func:`pipeline.model.memory.vm_state_bytes`,
  the same figure ``replay --max-memory`` checks);

and refuses the spec, one line with the estimate and the limit, when the rows exceed
``--max-rows`` (default :data:`DEFAULT_MAX_ROWS`) or a VM's state exceeds ``--max-memory``
(default half the RAM, as replay).
"""

from __future__ import annotations

import math

from pipeline.errors import SpecError
from pipeline.model.memory import default_max_memory_bytes, gib_text, vm_state_bytes
from pipeline.synth.spec import Phase, SynthSpec

#: most ``accesses`` rows a spec may generate unless ``--max-rows`` says otherwise: 250x the
#: 1 TiB sample (4.1 M rows), about 15 GB of Parquet
DEFAULT_MAX_ROWS = 1_000_000_000
PAGE_BYTES = 4096


def phase_epochs(phase: Phase, spec: SynthSpec) -> int:
    """Epochs ``e < nr_epochs`` whose start ``e x epoch_ms`` lies in [start_ms, end_ms)."""
    first = -(-phase.start_ms // spec.epoch_ms)
    end = min(spec.nr_epochs, -(-phase.end_ms // spec.epoch_ms))
    return max(0, end - first)


def rows_per_vcpu_epoch(phase: Phase, epoch_ms: int) -> float:
    """Rows one vCPU of ``phase`` makes per epoch (expected; before merging)."""
    if phase.kind == "idle":
        return 0.0
    if phase.kind == "sweep":
        return 2.0
    granule_bytes = phase.granule_pages * PAGE_BYTES
    return phase.rate_mib_per_s * (1 << 20) * epoch_ms / 1000 / granule_bytes


def estimated_rows(spec: SynthSpec) -> int:
    """Upper estimate of the ``accesses`` rows ``spec`` generates."""
    total = 0.0
    for workloads in spec.workloads:
        for workload in workloads:
            for phase in workload.phases:
                per = rows_per_vcpu_epoch(phase, spec.epoch_ms)
                total += len(workload.vcpus) * phase_epochs(phase, spec) * per
    return math.ceil(total)


def check_work(spec: SynthSpec, max_rows: int | None, max_memory_bytes: int | None) -> int:
    """The estimated rows; SpecError naming the spec, the estimate and the limit above it."""
    for vm in spec.model.vms:
        nr_pages = max((r.gfn_start + r.nr_pages for r in vm.regions), default=0)
        need = vm_state_bytes(nr_pages)
        limit = default_max_memory_bytes() if max_memory_bytes is None else max_memory_bytes
        if need > limit:
            msg = (
                f"vm `{vm.name}` spans {gib_text(nr_pages * PAGE_BYTES)} of guest memory; "
                f"replaying it needs about {gib_text(need)} of engine state per policy, over "
                f"the limit of {gib_text(limit)}; shrink the VM or raise `--max-memory`"
            )
            raise SpecError(spec.path, "", msg)
    rows = estimated_rows(spec)
    limit_rows = DEFAULT_MAX_ROWS if max_rows is None else max_rows
    if rows > limit_rows:
        msg = (
            f"the workloads would generate about {rows:,} access rows ({spec.nr_epochs:,} "
            f"epochs of {spec.epoch_ms} ms), over the limit of {limit_rows:,}; shorten "
            "`duration_s`, lower `rate_mib_per_s`, use larger granules, or raise `--max-rows`"
        )
        raise SpecError(spec.path, "", msg)
    return rows
