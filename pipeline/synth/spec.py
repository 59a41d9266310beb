"""The synth spec: the VM description format plus ``[[vm.workload]]``, run length and seed.

A spec is the VM model of :mod:`pipeline.model.vmmodel` plus, at the top level,
``duration_s``, ``epoch_ms`` and ``seed``, and per VM one or more ``[[vm.workload]]`` tables.
A workload names a group of vCPUs and a sequence of ``[[vm.workload.phase]]`` tables (or is one
phase itself); workloads of the same vCPUs run at the same time and their accesses add up.
docs/spec.md documents every key with its unit, default and allowed values.

Validation is strict (unknown keys, bad values and impossible windows are
:class:`~pipeline.errors.SpecError` naming the table, key, value and what is allowed), so
:mod:`pipeline.synth.generate` can stay a pure generator that never checks its input.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import SpecError
from pipeline.model.tomlsource import (
    MIB,
    PAGE_BYTES,
    Keys,
    Loc,
    PathLike,
    Source,
    read_source,
    where_path,
)
from pipeline.model.vmmodel import HPAGE_PMD_NR, Vm, VmModel, parse_vm_model

#: the phase kinds; see docs/spec.md "Phases"
KINDS = ("uniform", "zipf", "sweep", "moving", "shared", "idle")
#: keys every phase accepts; the kind-specific ones follow in ``KIND_KEYS``
PHASE_KEYS = ("kind", "duration_s", "region", "offset_*", "window_*", "write_fraction")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": ("rate_mib_per_s", "granule_kib"),
    "zipf": ("rate_mib_per_s", "granule_kib", "hot_*", "skew", "scatter"),
    "sweep": ("rate_mib_per_s", "split"),
    "moving": ("rate_mib_per_s", "granule_kib", "hot_*", "skew", "scatter", "move_every_s"),
    "shared": ("rate_mib_per_s", "granule_kib", "hot_*", "skew", "scatter"),
    "idle": (),
}
WORKLOAD_KEYS = ("name", "vcpus", "start_s", "phase")
TOP_KEYS = ("duration_s", "epoch_ms", "seed", "vmm_profile")
# the VMM process around each VM's guest RAM (ADR 0365): the default QEMU profile, or none
VMM_PROFILES = ("qemu", "none")

DEFAULT_EPOCH_MS = 100
DEFAULT_GRANULE_KIB = HPAGE_PMD_NR * PAGE_BYTES // 1024
#: a zipf/moving/shared hot set is sampled through a CDF over its granules; cap its size
MAX_HOT_GRANULES = 1 << 24
#: longest run, in epochs
MAX_EPOCHS = 10_000_000
#: most granule touches one vCPU may make in one epoch (bounds a batch's memory)
MAX_TOUCHES_PER_EPOCH = 100_000
#: fastest rate accepted (MiB/s per vCPU): 1 TiB/s
MAX_RATE_MIB_PER_S = float(1 << 20)


@dataclass(frozen=True)
class Phase:
    """One phase of a workload, resolved to absolute gfns and milliseconds.

    ``win_gfn_start``/``win_nr_pages``: the window of the region the phase touches;
    ``hot_nr_pages``: the hot set (the first part of the window) for zipf/moving/shared;
    ``granule_pages``: the unit the sampled kinds touch (a 2 MiB granule = one THP by default).
    """

    kind: str
    start_ms: int
    end_ms: int
    region: str
    win_gfn_start: int
    win_nr_pages: int
    write_fraction: float
    rate_mib_per_s: float = 0.0
    granule_pages: int = HPAGE_PMD_NR
    hot_nr_pages: int = 0
    skew: float = 0.0
    scatter: bool = True
    split: bool = True
    move_every_ms: int = 0


@dataclass(frozen=True)
class Workload:
    """A group of vCPUs (indices into the VM's vCPUs) and its phases, in time order."""

    name: str
    vcpus: tuple[int, ...]
    phases: tuple[Phase, ...]


@dataclass(frozen=True)
class SynthSpec:
    """A validated spec: the VM model, the run length and the workloads of each VM."""

    path: Path
    sha256: str
    duration_s: float
    epoch_ms: int
    seed: int
    model: VmModel
    workloads: tuple[tuple[Workload, ...], ...]  # per VM, in model.vms order
    vmm_profile: str = "qemu"

    @property
    def nr_epochs(self) -> int:
        """Epoch e covers [e*epoch_ms, (e+1)*epoch_ms); the last one may run past duration_s."""
        return math.ceil(self.duration_s * 1000 / self.epoch_ms)


def load_spec(path: str | Path, *, seed: int | None = None) -> SynthSpec:
    """Read and validate a synth spec; ``seed`` overrides the file's ``seed``."""
    p = Path(path)
    doc, source = read_source(p)
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    return parse_spec(doc, source, sha256=sha, seed=seed)


def parse_spec(
    doc: dict[str, Any], path: PathLike, *, sha256: str = "", seed: int | None = None
) -> SynthSpec:
    """Validate a parsed spec document (see :func:`load_spec`).

    ``path`` is a :class:`~pipeline.model.tomlsource.Source` when the text is at hand, so that
    errors name the line.
    """
    top = Keys(doc, path, "")
    top.only(("host", "vm", *TOP_KEYS))
    duration_s = top.positive("duration_s")
    epoch_ms = top.int_("epoch_ms", DEFAULT_EPOCH_MS, lo=1, hi=3_600_000)
    if duration_s * 1000 / epoch_ms > MAX_EPOCHS:
        top.fail(
            f"`duration_s` = {duration_s:g} at `epoch_ms` = {epoch_ms} gives more than "
            f"{MAX_EPOCHS} epochs; shorten the run or lengthen the epochs",
            "duration_s",
        )
    file_seed = top.int_("seed", 0, lo=0, hi=(1 << 63) - 1)
    vmm_profile = top.choice("vmm_profile", "qemu", VMM_PROFILES)
    run_seed = file_seed if seed is None else seed
    if run_seed < 0:
        top.bad("--seed", run_seed, "an integer >= 0")
    model = parse_vm_model(doc, path, seed=run_seed, top_keys=TOP_KEYS, vm_keys=("workload",))
    end_ms = round(duration_s * 1000)
    workloads = []
    for v, (vm, vm_table) in enumerate(zip(model.vms, doc["vm"], strict=True)):
        wkeys = Keys(vm_table, path, f"vm `{vm.name}`", (("vm", v),))
        tables = wkeys.tables("workload", "vm.workload")
        workloads.append(
            tuple(
                parse_workload(
                    t,
                    path,
                    f"vm `{vm.name}`: workload {i + 1}",
                    loc=(("vm", v), ("workload", i)),
                    vm=vm,
                    end_ms=end_ms,
                    epoch_ms=epoch_ms,
                )
                for i, t in enumerate(tables)
            )
        )
    return SynthSpec(
        path=path.path if isinstance(path, Source) else Path(path),
        sha256=sha256,
        duration_s=duration_s,
        epoch_ms=epoch_ms,
        seed=run_seed,
        model=model,
        workloads=tuple(workloads),
        vmm_profile=vmm_profile,
    )


def parse_vcpus(keys: Keys, vm: Vm) -> tuple[int, ...]:
    """``vcpus``: "all" (default) | "node:N" (every vCPU on host node N) | an index | a list."""
    value = keys.raw("vcpus", "all")
    allowed = f'"all", "node:N", a vCPU index in [0, {vm.vcpus - 1}] or a list of them'
    if value == "all":
        return tuple(range(vm.vcpus))
    if isinstance(value, str) and value.startswith("node:") and value[5:].isdigit():
        node = int(value[5:])
        group = tuple(i for i, n in enumerate(vm.vcpu_nodes) if n == node)
        if not group:
            keys.fail(f"`vcpus` = `{value}`: no vCPU of this VM runs on host node {node}")
        return group
    items = value if isinstance(value, list) else [value]
    if not items:
        keys.bad("vcpus", value, allowed)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vm.vcpus:
            keys.bad("vcpus", value, allowed)
    if len(set(items)) != len(items):
        keys.bad("vcpus", value, "a list without repeats")
    return tuple(sorted(items))


def parse_workload(
    table: object, path: PathLike, where: str, *, loc: Loc, vm: Vm, end_ms: int, epoch_ms: int
) -> Workload:
    """Validate one ``[[vm.workload]]``: its vCPU group, start and phases."""
    keys = Keys(table, path, where, loc)
    name = keys.string("name", f"w{where.rsplit(' ', 1)[-1]}")
    assert name is not None
    vcpus = parse_vcpus(keys, vm)
    start_ms = round(keys.number("start_s", 0.0) * 1000)
    phase_tables = keys.tables("phase", "vm.workload.phase")
    if phase_tables:
        keys.only(WORKLOAD_KEYS)
        wheres = [f"{where}: phase {i + 1}" for i in range(len(phase_tables))]
        locs = [(*loc, ("phase", i)) for i in range(len(phase_tables))]
    else:  # the workload is one phase: its other keys are the phase's
        phase_tables = [{k: v for k, v in keys.table.items() if k not in WORKLOAD_KEYS}]
        wheres = [where]
        locs = [loc]
    phases = []
    for i, (pt, pwhere, ploc) in enumerate(zip(phase_tables, wheres, locs, strict=True)):
        if start_ms >= end_ms:
            raise SpecError(
                where_path(path, ploc, "start_s"),
                pwhere,
                f"starts at {start_ms / 1000:g} s, at or after the end of the run "
                f"(`duration_s` = {end_ms / 1000:g})",
            )
        last = i == len(phase_tables) - 1
        phase = parse_phase(
            pt,
            path,
            pwhere,
            loc=ploc,
            vm=vm,
            vcpus=vcpus,
            start_ms=start_ms,
            run_end_ms=end_ms,
            epoch_ms=epoch_ms,
            last=last,
        )
        phases.append(phase)
        start_ms = phase.end_ms
    return Workload(name=name, vcpus=vcpus, phases=tuple(phases))


def parse_phase(
    table: object,
    path: PathLike,
    where: str,
    *,
    loc: Loc,
    vm: Vm,
    vcpus: tuple[int, ...],
    start_ms: int,
    run_end_ms: int,
    epoch_ms: int,
    last: bool,
) -> Phase:
    """Validate one phase; resolve its region window, hot set and granule to pages."""
    keys = Keys(table, path, where, loc)
    kind = keys.choice("kind", None, KINDS)
    keys.only((*PHASE_KEYS, *KIND_KEYS[kind]))
    if keys.has("duration_s"):
        duration_ms = round(keys.positive("duration_s") * 1000)
        if duration_ms < epoch_ms:
            keys.bad("duration_s", duration_ms / 1000, f"at least one epoch ({epoch_ms} ms)")
        end_ms = min(start_ms + duration_ms, run_end_ms)
    elif last:
        end_ms = run_end_ms
    else:
        keys.fail("missing `duration_s` (only the last phase of a workload may omit it)")
    region_name = keys.string("region", vm.regions[0].name)
    names = [r.name for r in vm.regions]
    if region_name not in names:
        keys.bad("region", region_name, f"one of this VM's regions: {', '.join(names)}")
    region = vm.region(str(region_name))
    offset = keys.size("offset", required=False, zero=True) or 0
    window = keys.size("window", required=False)
    window = region.size_bytes - offset if window is None else window
    if offset + window > region.size_bytes or window <= 0:
        keys.fail(
            f"the window [{offset / MIB:g}, {(offset + window) / MIB:g}) MiB does not fit in "
            f"region `{region.name}` ({region.size_bytes / MIB:g} MiB); fix `offset_*`/`window_*`"
        )
    write_fraction = keys.number("write_fraction", 0.0, hi=1.0)
    common: dict[str, Any] = {
        "kind": kind,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "region": region.name,
        "win_gfn_start": region.gfn_start + offset // PAGE_BYTES,
        "win_nr_pages": window // PAGE_BYTES,
        "write_fraction": write_fraction,
    }
    if kind == "idle":
        return Phase(**common)
    rate = keys.positive("rate_mib_per_s")
    if rate > MAX_RATE_MIB_PER_S:
        keys.bad("rate_mib_per_s", rate, f"at most {MAX_RATE_MIB_PER_S:g} MiB/s per vCPU")
    common["rate_mib_per_s"] = rate
    if kind == "sweep":
        split = keys.bool_("split", True)
        if split and len(vcpus) > window // PAGE_BYTES:
            keys.fail(f"the window has fewer pages than the {len(vcpus)} vCPUs that split it")
        return Phase(**common, split=split)
    granule_kib = keys.int_("granule_kib", DEFAULT_GRANULE_KIB, lo=4, hi=DEFAULT_GRANULE_KIB)
    if granule_kib & (granule_kib - 1):
        keys.bad("granule_kib", granule_kib, "a power of two from 4 to 2048")
    granule_pages = granule_kib * 1024 // PAGE_BYTES
    touches = rate * 1024 / granule_kib * epoch_ms / 1000
    if touches > MAX_TOUCHES_PER_EPOCH:
        keys.fail(
            f"`rate_mib_per_s` = {rate:g} with `granule_kib` = {granule_kib} makes "
            f"{touches:.0f} granule touches per vCPU and epoch; at most "
            f"{MAX_TOUCHES_PER_EPOCH} (raise `granule_kib` or lower the rate)",
            "rate_mib_per_s",
        )
    extra: dict[str, Any] = {"granule_pages": granule_pages}
    if kind != "uniform":
        hot = keys.size("hot", required=False)
        hot = window if hot is None else hot
        if hot > window:
            keys.fail(
                f"the hot set ({hot / MIB:g} MiB) is larger than its window "
                f"({window / MIB:g} MiB); fix `hot_*` or `window_*`"
            )
        if hot // PAGE_BYTES // granule_pages > MAX_HOT_GRANULES:
            keys.fail(f"the hot set has more than {MAX_HOT_GRANULES} granules; raise `granule_kib`")
        extra["hot_nr_pages"] = hot // PAGE_BYTES
        extra["skew"] = keys.number("skew", 1.0 if kind == "zipf" else 0.0, hi=10.0)
        extra["scatter"] = keys.bool_("scatter", True)
    if kind == "moving":
        move_ms = round(keys.positive("move_every_s") * 1000)
        if move_ms < epoch_ms:
            keys.bad("move_every_s", move_ms / 1000, f"at least one epoch ({epoch_ms} ms)")
        if len({vm.vcpu_nodes[v] for v in vcpus}) < 2:
            keys.fail(
                "a `moving` hot set needs vCPUs on at least two host nodes; "
                "widen `vcpus` or `vcpu_nodes`"
            )
        extra["move_every_ms"] = move_ms
    return Phase(**common, **extra)
