"""The VM description format: ``[host]`` + ``[[vm]]`` + ``[[vm.region]]`` -> rows of table ``vms``.

One format serves synthetic specs (``tlbreplay synth``), ``ingest --vm-config`` sidecars and the
lab's sidecars; docs/spec.md documents every key. Parsing is strict: a bad value or an unknown
key raises :class:`~pipeline.errors.SpecError` naming the table, the key, the value and what is
allowed (with a did-you-mean hint for misspelt keys).

The host knobs keep the kernel's names and units (KERNEL.md 3.1: the ``numa_balancing``
sysctl and debugfs ``sched/numa_balancing/{scan_delay_ms, scan_period_min_ms,
scan_period_max_ms, scan_size_mb}``; defaults are the kernel's, kernel/sched/fair.c v6.5 and
v7.1). Backing and ``mof_policy`` matter because the scanner skips shmem without an
MPOL_F_MOF policy and never scans hugetlbfs (KERNEL.md 1.6a, 3.6: ``vma_migratable()``,
``vma_policy_mof()``); pinning matters because ``folio_maybe_dma_pinned()`` folios are skipped
(or not) by ``change_pte_range()`` / ``change_huge_pmd()`` (KERNEL.md 4.2, 4.3).

Why one module over 500 lines: one parser per table of one format ([host], [[vm]],
[[vm.region]]) with the cross-checks between them; the generic TOML reading is in
:mod:`pipeline.model.tomlsource`.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import SpecError
from pipeline.model.knobs import NUMA_KNOB_DEFAULTS
from pipeline.model.tomlsource import (
    _NAME_RE,
    GIB,
    MAX_BYTES,
    PAGE_BYTES,
    PAGE_SHIFT,
    Keys,
    Loc,
    PathLike,
    read_source,
    show,
    where_path,
)
from pipeline.schema import conform, enums

HPAGE_PMD_BYTES = 2 << 20
HPAGE_PMD_NR = HPAGE_PMD_BYTES // PAGE_BYTES
#: largest hva (57-bit, 5-level paging)
MAX_HVA = 1 << 57

#: default hva of a VM's first region; later regions start at the next 1 GiB boundary
DEFAULT_HVA_BASE = 0x7F00_0000_0000
#: synthetic vCPU thread ids: ``SYNTH_TID_BASE * (vm index + 1) + vcpu``
SYNTH_TID_BASE = 100_000


HOST_DEFAULTS: dict[str, int | str] = {
    "numa_balancing": 1,
    **NUMA_KNOB_DEFAULTS,
    "preempt": "voluntary",
    "mmu": "tdp",
}


"""Where a table sits in the document: ``(("vm", 0), ("region", 1))`` is the 2nd region of
the 1st VM; ``(("host", None),)`` is ``[host]``; ``()`` is the top level."""


@dataclass(frozen=True)
class Host:
    """``[host]``: NUMA topology and the kernel's NUMA-balancing knobs (KERNEL.md 3.1)."""

    nodes: int
    node_mem_bytes: tuple[int, ...]
    numa_balancing: int
    scan_delay_ms: int
    scan_period_min_ms: int
    scan_period_max_ms: int
    scan_size_mb: int
    preempt: str
    mmu: str
    kernel: str | None


@dataclass(frozen=True)
class Region:
    """``[[vm.region]]``: one VMA of guest RAM, a memslot mapping gpa -> hva."""

    name: str
    gpa_start: int
    hva_start: int
    size_bytes: int
    backing: str
    thp: bool
    mempolicy: str
    placement: str
    pinned: tuple[tuple[int, int], ...]

    @property
    def mof_policy(self) -> bool:
        """MPOL_BIND|MPOL_F_NUMA_BALANCING: the one policy with MPOL_F_MOF a VMA can be given
        (mm/mempolicy.c sanitize_mpol_flags()); the key before ``mempolicy`` existed."""
        return self.mempolicy == "bind+numa_balancing"

    @property
    def gfn_start(self) -> int:
        return self.gpa_start >> PAGE_SHIFT

    @property
    def nr_pages(self) -> int:
        return self.size_bytes >> PAGE_SHIFT


@dataclass(frozen=True)
class Vm:
    """``[[vm]]``: one VMM process (one mm) with its vCPUs and regions."""

    name: str
    mem_bytes: int
    vcpus: int
    vcpu_nodes: tuple[int, ...]
    vcpu_tids: tuple[int, ...]
    vmm_pid: int | None
    regions: tuple[Region, ...]

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        msg = f"vm `{self.name}` has no region `{name}`"
        raise KeyError(msg)


@dataclass(frozen=True)
class VmModel:
    """A parsed VM description file: the host and its VMs (in file order)."""

    host: Host
    vms: tuple[Vm, ...]


HOST_KEYS = (
    "nodes",
    "node_mem_*",
    "numa_balancing",
    "scan_delay_ms",
    "scan_period_min_ms",
    "scan_period_max_ms",
    "scan_size_mb",
    "preempt",
    "mmu",
    "kernel",
)
VM_KEYS = ("name", "mem_*", "vcpus", "vcpu_nodes", "vcpu_tids", "vmm_pid", "region")
REGION_KEYS = (
    "name",
    "size_*",
    "gpa_start",
    "hva_start",
    "backing",
    "thp",
    "mof_policy",
    "mempolicy",
    "placement",
    "pinned",
)


def parse_host(table: object, path: PathLike, guest_bytes: int) -> Host:
    """Validate ``[host]``; ``guest_bytes`` (all VMs' RAM) sizes nodes when memory is not given."""
    keys = Keys(table if table is not None else {}, path, "host", (("host", None),))
    keys.only(HOST_KEYS)
    nodes = keys.int_("nodes", 1, lo=1, hi=1024)
    node_mem = keys.sizes("node_mem", nodes)
    if node_mem is None:
        node_mem = [max(guest_bytes, GIB)] * nodes
    balancing = keys.int_("numa_balancing", int(HOST_DEFAULTS["numa_balancing"]), lo=0, hi=3)
    knobs = {
        k: keys.int_(k, int(HOST_DEFAULTS[k]), lo=0)
        for k in ("scan_delay_ms", "scan_period_min_ms", "scan_period_max_ms")
    }
    scan_size_mb = keys.int_("scan_size_mb", int(HOST_DEFAULTS["scan_size_mb"]), lo=1)
    if knobs["scan_period_min_ms"] > knobs["scan_period_max_ms"]:
        keys.fail(
            f"`scan_period_min_ms` = {knobs['scan_period_min_ms']} exceeds "
            f"`scan_period_max_ms` = {knobs['scan_period_max_ms']}"
        )
    preempt = keys.choice("preempt", str(HOST_DEFAULTS["preempt"]), enums()["preempt"]["values"])
    mmu = keys.choice("mmu", str(HOST_DEFAULTS["mmu"]), enums()["mmu"]["values"])
    kernel = keys.string("kernel")
    keys.finish()
    if sum(node_mem) < guest_bytes:
        keys.fail(
            f"the VMs need {guest_bytes / GIB:g} GiB of RAM but the nodes hold "
            f"{sum(node_mem) / GIB:g} GiB; raise `node_mem_gib`"
        )
    return Host(
        nodes=nodes,
        node_mem_bytes=tuple(node_mem),
        numa_balancing=balancing,
        scan_delay_ms=knobs["scan_delay_ms"],
        scan_period_min_ms=knobs["scan_period_min_ms"],
        scan_period_max_ms=knobs["scan_period_max_ms"],
        scan_size_mb=scan_size_mb,
        preempt=preempt,
        mmu=mmu,
        kernel=kernel,
    )


def _vcpu_nodes(keys: Keys, vcpus: int | None, nodes: int) -> tuple[int, tuple[int, ...]]:
    """``vcpus`` + ``vcpu_nodes`` (int or list); default: spread in blocks over the nodes."""
    spec = keys.raw("vcpu_nodes")
    if isinstance(spec, list):
        if vcpus is None:
            vcpus = len(spec)
        if not spec or len(spec) != vcpus:
            keys.bad("vcpu_nodes", spec, f"a list of {vcpus} node numbers (one per vCPU)")
        return vcpus, tuple(keys.check_int("vcpu_nodes", n, lo=0, hi=nodes - 1) for n in spec)
    if vcpus is None:
        keys.fail("missing `vcpus`")
    if spec is None:
        return vcpus, tuple(i * nodes // vcpus for i in range(vcpus))
    node = keys.check_int("vcpu_nodes", spec, lo=0, hi=nodes - 1)
    return vcpus, (node,) * vcpus


def parse_pinned(
    keys: Keys, value: object, gfn_start: int, nr_pages: int, rng: np.random.Generator
) -> tuple[tuple[int, int], ...]:
    """``pinned``: none | all | fraction (of 2 MiB-aligned granules, seeded) | gfn ranges.

    Returns sorted, merged, absolute ``(gfn_start, nr_pages)`` ranges inside the region.
    VFIO type1 pins all guest RAM with FOLL_PIN|FOLL_LONGTERM (KERNEL.md 4.3, 5.5); a fraction
    models a partial pin (e.g. io_uring fixed buffers); granules are 2 MiB aligned in gfn
    space because pinning one page of a THP pins its folio (``folio_maybe_dma_pinned()``).
    """
    allowed = '"none", "all", a fraction in [0, 1], or a list of [gfn_start, nr_pages]'
    gfn_end = gfn_start + nr_pages
    if value == "none":
        return ()
    if value == "all":
        return ((gfn_start, nr_pages),)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0.0 <= value <= 1.0:
            keys.bad("pinned", value, allowed)
        first = gfn_start // HPAGE_PMD_NR
        count = -(-gfn_end // HPAGE_PMD_NR) - first
        chosen = np.sort(rng.choice(count, size=round(value * count), replace=False))
        starts = np.maximum((chosen + first) * HPAGE_PMD_NR, gfn_start)
        ends = np.minimum((chosen + first + 1) * HPAGE_PMD_NR, gfn_end)
        return merge_ranges(zip(starts.tolist(), (ends - starts).tolist(), strict=True))
    if isinstance(value, list):
        ranges = []
        for item in value:
            ok = (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            )
            if not ok or item[1] <= 0:
                keys.bad("pinned", item, "a [gfn_start, nr_pages] pair with nr_pages > 0")
            if item[0] < gfn_start or item[0] + item[1] > gfn_end:
                keys.fail(
                    f"`pinned` range {show(item)} is outside the region's gfns "
                    f"[{gfn_start:#x}, {gfn_end:#x})"
                )
            ranges.append((item[0], item[1]))
        return merge_ranges(ranges)
    keys.bad("pinned", value, allowed)
    return ()


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sort ``(start, nr)`` ranges and merge overlapping or adjacent ones."""
    out: list[list[int]] = []
    for start, nr in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], start + nr - out[-1][0])
        else:
            out.append([start, nr])
    return tuple((s, n) for s, n in out)


REGION_PLACEMENTS = ("first-touch", "interleave", "node:N")
MEMPOLICIES = ("default", "bind", "bind+numa_balancing", "preferred", "interleave")


def parse_region(
    table: object,
    path: PathLike,
    where: str,
    *,
    nodes: int,
    default_name: str,
    loc: Loc,
    gpa_next: int,
    hva_next: int,
    rng: np.random.Generator,
) -> Region:
    """Validate one ``[[vm.region]]`` (see docs/spec.md for every key)."""
    keys = Keys(table, path, where, loc)
    keys.only(REGION_KEYS)
    name = keys.string("name", default_name)
    assert name is not None
    if not _NAME_RE.fullmatch(name):
        keys.bad("name", name, "letters, digits, `_`, `.` or `-`")
    size = keys.size("size", what="region size")
    assert size is not None
    backing = keys.choice("backing", "anon", enums()["backing"]["values"])
    thp = keys.bool_("thp", backing == "anon")
    if thp and backing == "hugetlbfs":
        keys.fail("`thp` = true with `backing` = hugetlbfs; hugetlbfs pages are not THP")
    mof_policy = keys.bool_("mof_policy", False)
    mempolicy = keys.choice(
        "mempolicy", "bind+numa_balancing" if mof_policy else "default", MEMPOLICIES
    )
    if mof_policy and mempolicy != "bind+numa_balancing":
        keys.fail(
            f"`mof_policy` = true with `mempolicy` = {mempolicy}; `mof_policy` = true means "
            '`mempolicy` = "bind+numa_balancing": give one of them'
        )
    gpa_start = keys.int_("gpa_start", gpa_next, lo=0, hi=MAX_BYTES - size)
    hva_start = keys.int_("hva_start", hva_next, lo=0, hi=MAX_HVA - size)
    align = HPAGE_PMD_BYTES if backing == "hugetlbfs" else PAGE_BYTES
    for key, value in (("gpa_start", gpa_start), ("hva_start", hva_start), ("size", size)):
        if value % align:
            keys.bad(key, f"{value:#x}", f"a multiple of {align // 1024} KiB for {backing}")
    if gpa_start < gpa_next:
        keys.fail(
            f"`gpa_start` = {gpa_start:#x} overlaps the previous region (ends at {gpa_next:#x});"
            " list regions in gpa order"
        )
    placement = keys.string("placement", "first-touch")
    assert placement is not None
    if placement.startswith("node:"):
        node = placement[5:]
        if not node.isdigit() or int(node) >= nodes:
            keys.bad("placement", placement, f"node:N with N in [0, {nodes - 1}]")
    elif placement not in REGION_PLACEMENTS[:2]:
        keys.bad("placement", placement, "one of " + ", ".join(REGION_PLACEMENTS))
    pinned = parse_pinned(
        keys, keys.raw("pinned", "none"), gpa_start >> PAGE_SHIFT, size >> PAGE_SHIFT, rng
    )
    keys.finish()
    return Region(
        name=name,
        gpa_start=gpa_start,
        hva_start=hva_start,
        size_bytes=size,
        backing=backing,
        thp=thp,
        mempolicy=mempolicy,
        placement=placement,
        pinned=pinned,
    )


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


MAX_REGIONS = 65_536
"""Regions per VM at most (ADR 0008): far above a real VMM's memslots (KVM allows 32767
per address space, include/linux/kvm_host.h KVM_MEM_SLOTS_NUM); the checks below are
O(R log R)."""


def parse_vm(
    table: object,
    path: PathLike,
    index: int,
    *,
    nodes: int,
    seed: int,
    extra_keys: Collection[str] = (),
) -> Vm:
    """Validate one ``[[vm]]`` and its regions; ``extra_keys`` are left to the caller."""
    keys = Keys(table, path, f"vm {index + 1}", (("vm", index),))
    name = keys.raw("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        keys.bad("name", name if name is not None else "", "a name of letters, digits, _ . -")
    keys.where = f"vm `{name}`"
    keys.only((*VM_KEYS, *extra_keys))
    mem = keys.size("mem", required=False)
    vcpus_raw = keys.raw("vcpus")
    vcpus = None if vcpus_raw is None else keys.check_int("vcpus", vcpus_raw, lo=1, hi=4096)
    vcpus, vcpu_nodes = _vcpu_nodes(keys, vcpus, nodes)
    vmm_pid = keys.raw("vmm_pid")
    if vmm_pid is not None:
        vmm_pid = keys.check_int("vmm_pid", vmm_pid, lo=1, hi=1 << 22)
    tids = keys.raw("vcpu_tids")
    if tids is None:
        vcpu_tids = tuple(SYNTH_TID_BASE * (index + 1) + i for i in range(vcpus))
    else:
        if not isinstance(tids, list) or len(tids) != vcpus or len(set(map(str, tids))) != vcpus:
            keys.bad("vcpu_tids", tids, f"a list of {vcpus} distinct thread ids")
        vcpu_tids = tuple(keys.check_int("vcpu_tids", t, lo=1, hi=1 << 22) for t in tids)
    region_tables = keys.tables("region", "vm.region")
    if not region_tables:
        if mem is None:
            keys.fail("missing guest RAM size: give `mem_gib` (or `mem_mib`, `mem_bytes`)")
        region_tables = [{"name": "ram", "size_bytes": mem}]
    if len(region_tables) > MAX_REGIONS:
        keys.fail(f"{len(region_tables)} regions; at most {MAX_REGIONS} per VM")
    regions: list[Region] = []
    gpa_next, hva_next = 0, DEFAULT_HVA_BASE
    for i, rt in enumerate(region_tables):
        region = parse_region(
            rt,
            path,
            f"vm `{name}`: region {i + 1}",
            nodes=nodes,
            default_name="ram" if len(region_tables) == 1 else f"region{i + 1}",
            loc=(("vm", index), ("region", i)),
            gpa_next=gpa_next,
            hva_next=hva_next,
            rng=np.random.default_rng([seed, index, i]),
        )
        regions.append(region)
        gpa_next = region.gpa_start + region.size_bytes
        hva_next = _align_up(max(hva_next, region.hva_start + region.size_bytes), GIB)
    _check_regions(keys, regions, mem)
    keys.finish(extra_keys)
    return Vm(
        name=name,
        mem_bytes=sum(r.size_bytes for r in regions),
        vcpus=vcpus,
        vcpu_nodes=vcpu_nodes,
        vcpu_tids=vcpu_tids,
        vmm_pid=vmm_pid,
        regions=tuple(regions),
    )


def _check_regions(keys: Keys, regions: list[Region], mem: int | None) -> None:
    seen: set[str] = set()
    for r in regions:
        if r.name in seen:
            keys.fail(f"two regions are named `{r.name}`; region names must be unique")
        seen.add(r.name)
    by_hva = sorted(regions, key=lambda r: r.hva_start)
    for a, b in itertools.pairwise(by_hva):
        if a.hva_start + a.size_bytes > b.hva_start:
            keys.fail(f"regions `{a.name}` and `{b.name}` overlap in hva; fix `hva_start`")
    total = sum(r.size_bytes for r in regions)
    if mem is not None and total != mem:
        keys.fail(
            f"the regions add up to {total / GIB:g} GiB but the VM has {mem / GIB:g} GiB; "
            "regions must tile guest RAM"
        )


def parse_vm_model(
    doc: Mapping[str, Any],
    path: PathLike,
    *,
    seed: int = 0,
    top_keys: Collection[str] = (),
    vm_keys: Collection[str] = (),
) -> VmModel:
    """Validate a whole file. ``top_keys`` / ``vm_keys``: extra keys another layer reads.

    ``seed`` draws the granules of fractional ``pinned`` values (one stream per region).
    """
    top = Keys(dict(doc), path, "")
    top.only(("host", "vm", *top_keys))
    vm_tables = top.tables("vm", "vm")
    if not vm_tables:
        top.fail("no `[[vm]]` table: describe at least one VM")
    host_table = top.raw("host", {})
    nodes = Keys(host_table, path, "host", (("host", None),)).int_("nodes", 1, lo=1, hi=1024)
    vms = [
        parse_vm(t, path, i, nodes=nodes, seed=seed, extra_keys=vm_keys)
        for i, t in enumerate(vm_tables)
    ]
    names = [v.name for v in vms]
    seen: set[str] = set()
    for i, n in enumerate(names):  # O(V): the second VM of a name is the one named
        if n not in seen:
            seen.add(n)
        else:
            loc = (("vm", i),)
            raise SpecError(
                where_path(path, loc), f"vm `{n}`", "two VMs have this name; names must be unique"
            )
    host = parse_host(host_table, path, sum(v.mem_bytes for v in vms))
    top.finish(top_keys)
    return VmModel(host=host, vms=tuple(vms))


def vms_frame(model: VmModel, *, inferred: bool = False) -> pl.DataFrame:
    """Rows of table ``vms`` (schemas/vms.toml), one per VM, conformed."""
    h = model.host
    rows = [
        {
            "vm": vm.name,
            "mem_bytes": vm.mem_bytes,
            "vcpus": vm.vcpus,
            "vcpu_nodes": list(vm.vcpu_nodes),
            "vcpu_tids": list(vm.vcpu_tids),
            "host_nodes": h.nodes,
            "host_node_mem_bytes": list(h.node_mem_bytes),
            "regions": [
                {
                    "name": r.name,
                    "gpa_start": r.gpa_start,
                    "hva_start": r.hva_start,
                    "size_bytes": r.size_bytes,
                    "backing": r.backing,
                    "thp": r.thp,
                    "mof_policy": r.mof_policy,
                    "placement": r.placement,
                    "pinned": [{"gfn_start": s, "nr_pages": n} for s, n in r.pinned],
                    "mempolicy": r.mempolicy,
                }
                for r in vm.regions
            ],
            "numa_balancing": h.numa_balancing,
            "scan_delay_ms": h.scan_delay_ms,
            "scan_period_min_ms": h.scan_period_min_ms,
            "scan_period_max_ms": h.scan_period_max_ms,
            "scan_size_mb": h.scan_size_mb,
            "preempt": h.preempt,
            "mmu": h.mmu,
            "kernel": h.kernel,
            "inferred": inferred,
        }
        for vm in model.vms
    ]
    from pipeline.schema import table_schema

    frame = pl.DataFrame(rows, schema=table_schema("vms").polars())
    out = pl.from_arrow(conform(frame, "vms"))
    assert isinstance(out, pl.DataFrame)
    return out


#: top-level tables a sidecar may carry for other stages: ``[lab]`` (written by ``tlbreplay
#: lab``: the guest's known workload, read by calibrate)
SIDECAR_EXTRA_TABLES = ("lab",)


def parse_vm_tables(doc: Mapping[str, Any], path: PathLike) -> pl.DataFrame:
    """Validate the ``[host]`` and ``[[vm]]`` tables of a sidecar; rows of table ``vms``.

    Besides ``host`` and ``vm`` only the tables of ``SIDECAR_EXTRA_TABLES`` are allowed at the
    top level (and left to their readers). Callers that add keys of their own (the synth spec)
    use :func:`parse_vm_model` with ``top_keys``/``vm_keys``.
    """
    for key in SIDECAR_EXTRA_TABLES:
        if key in doc and not isinstance(doc[key], dict):
            raise SpecError(
                where_path(path, (), key), "", f"`{key}` must be a table: write `[{key}]`"
            )
    return vms_frame(parse_vm_model(doc, path, top_keys=SIDECAR_EXTRA_TABLES))


def load_vm_file(path: str | Path) -> pl.DataFrame:
    """Read and validate a VM description file (a sidecar); rows of table ``vms``."""
    doc, source = read_source(path)
    return parse_vm_tables(doc, source)
