"""Per-VM state as numpy arrays: one VM is one QEMU mm (KERNEL.md §10).

Two levels, so that work follows the touched and scanned memory and not the VM size:

* per 2 MiB granule (one PMD): region, THP-mapped, populated count, pinned count, uniform
  node, PROT_NONE count, 2M SPTE present, present 4K SPTE count, last_cpupid of a THP;
* per 4 KiB page (``np.zeros``, i.e. calloc: the OS only backs the parts ever written):
  flags (populated, PROT_NONE, 4K SPTE present, ever faulted in, pinned), node, last_cpupid.

A granule with ``g_npop == 512`` is fully populated whatever its page bits say; a granule
with ``g_node >= 0`` has all its pages on that node and its per-page nodes are not
materialized. Pinned pages populated at t=0 use only the granule level, so a 1 TiB pinned VM
costs no per-page memory until the guest touches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import DatasetError
from pipeline.replay.counters import PS_2M, PS_4K

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SHIFT = 21
PAGES_PER_PMD = 1 << (PMD_SHIFT - PAGE_SHIFT)  # 512
PUD_SIZE = 1 << 30
P4D_SIZE = 1 << 39
PMD_SIZE = 1 << PMD_SHIFT

# per-page flag bits
P_POP = np.uint8(1)
P_PROTNONE = np.uint8(2)
P_SPTE = np.uint8(4)
P_FAULTED = np.uint8(8)
P_PINNED = np.uint8(16)

NODE_NONE = -1  # granule has no pages on a uniform node: use the per-page nodes
CPUPID_UNSET = 0  # last_cpupid stored as 1 + nid * 256 + (pid & 0xff); 0 = unset (-1 in the kernel)

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


def encode_cpupid(nid: npt.NDArray[Any] | int, pid8: npt.NDArray[Any] | int) -> Any:
    """Models include/linux/mm.h cpu_pid_to_cpupid() (v6.5 = v7.1, KERNEL.md §8.3): cpu +
    the low LAST__PID_SHIFT = 8 bits of the pid.

    The kernel keeps the cpu; the model keeps its node, which is all cpupid_to_nid() needs.
    """
    return 1 + np.asarray(nid, np.int32) * 256 + (np.asarray(pid8, np.int32) & 0xFF)


def region_mempolicy(reg: dict[str, Any]) -> str:
    """A ``vms`` region's mempolicy; datasets written before issue 11 have only
    ``mof_policy`` (true: MPOL_BIND|MPOL_F_NUMA_BALANCING, else none)."""
    policy = reg.get("mempolicy")
    if policy:
        return str(policy)
    return "bind+numa_balancing" if reg.get("mof_policy") else "default"


@dataclass(frozen=True)
class Region:
    """One VMA of guest RAM (schemas/vms.toml ``regions``)."""

    index: int
    name: str
    gfn_start: int
    nr_pages: int
    hva_start: int
    backing: str  # anon | shared | hugetlbfs
    thp: bool
    mof_policy: bool  # mempolicy == "bind+numa_balancing"
    placement: str  # first-touch | interleave | node:N
    pinned_starts: I64
    pinned_ends: I64
    mempolicy: str = "default"  # enums.mempolicy

    @property
    def gfn_end(self) -> int:
        return self.gfn_start + self.nr_pages

    @property
    def hva_end(self) -> int:
        return self.hva_start + self.nr_pages * PAGE_SIZE

    @property
    def is_cow(self) -> bool:
        """include/linux/mm.h is_cow_mapping(): private writable (anon) mappings."""
        return self.backing == "anon"

    @property
    def is_anon(self) -> bool:
        return self.backing == "anon"

    @property
    def pmd_mapped(self) -> bool:
        """THP regions and hugetlbfs map 2 MiB at the host."""
        return self.thp or self.backing == "hugetlbfs"

    @property
    def page_size(self) -> int:
        """Page-size attribution of range-level events (docs/engine.md)."""
        return PS_2M if self.pmd_mapped else PS_4K

    def hva_to_gfn(self, hva: int) -> int:
        return self.gfn_start + (hva - self.hva_start) // PAGE_SIZE

    def gfn_to_hva(self, gfn: int) -> int:
        return self.hva_start + (gfn - self.gfn_start) * PAGE_SIZE


@dataclass(frozen=True)
class VmConfig:
    """One row of table ``vms``, validated, with regions sorted by hva (VMA order)."""

    name: str
    vcpus: int
    vcpu_nodes: npt.NDArray[np.int16]
    vcpu_tids: npt.NDArray[np.int32]
    host_nodes: int
    node_mem_pages: I64
    regions: tuple[Region, ...]
    nr_pages: int
    numa_balancing: int
    scan_delay_ms: int
    scan_period_min_ms: int
    scan_period_max_ms: int
    scan_size_mb: int
    preempt: str
    mmu: str

    @property
    def nr_granules(self) -> int:
        return -(-self.nr_pages // PAGES_PER_PMD)


def vm_config(row: dict[str, Any], where: str = "vms") -> VmConfig:
    """Build a :class:`VmConfig` from a ``vms`` row; bad geometry is a :class:`DatasetError`."""
    name = str(row["vm"])
    vcpus = int(row["vcpus"])
    nodes = np.asarray(row["vcpu_nodes"], np.int16)
    if nodes.size != vcpus:
        raise DatasetError(
            where, f"vm `{name}`: `vcpu_nodes` has {nodes.size} entries, want {vcpus}"
        )
    tids_raw = row.get("vcpu_tids")
    tids = np.asarray(tids_raw if tids_raw else np.arange(vcpus) + 1000, np.int32)
    if tids.size != vcpus:
        raise DatasetError(where, f"vm `{name}`: `vcpu_tids` has {tids.size} entries, want {vcpus}")
    host_nodes = int(row["host_nodes"])
    if nodes.size and (nodes.min() < 0 or nodes.max() >= host_nodes):
        raise DatasetError(where, f"vm `{name}`: a vCPU node is outside 0..{host_nodes - 1}")
    node_mem = np.asarray(row["host_node_mem_bytes"], np.int64) // PAGE_SIZE
    if node_mem.size != host_nodes:
        raise DatasetError(where, f"vm `{name}`: `host_node_mem_bytes` needs {host_nodes} entries")
    regions = []
    for i, reg in enumerate(sorted(row["regions"], key=lambda r: int(r["hva_start"]))):
        gpa, hva, size = int(reg["gpa_start"]), int(reg["hva_start"]), int(reg["size_bytes"])
        if gpa % PMD_SIZE or hva % PMD_SIZE or size % PMD_SIZE or size <= 0:
            raise DatasetError(
                where,
                f"vm `{name}` region `{reg['name']}`: gpa_start, hva_start and size must be "
                "positive multiples of 2 MiB (the engine tracks 2 MiB granules)",
            )
        pins = reg.get("pinned") or []
        ps = np.asarray([int(p["gfn_start"]) for p in pins], np.int64)
        pe = ps + np.asarray([int(p["nr_pages"]) for p in pins], np.int64)
        placement = str(reg["placement"])
        if placement not in ("first-touch", "interleave") and not placement.startswith("node:"):
            raise DatasetError(where, f"vm `{name}`: unknown placement `{placement}`")
        regions.append(
            Region(
                index=i,
                name=str(reg["name"]),
                gfn_start=gpa >> PAGE_SHIFT,
                nr_pages=size >> PAGE_SHIFT,
                hva_start=hva,
                backing=str(reg["backing"]),
                thp=bool(reg["thp"]),
                mof_policy=bool(reg["mof_policy"]),
                placement=placement,
                mempolicy=region_mempolicy(reg),
                pinned_starts=ps,
                pinned_ends=pe,
            )
        )
    nr_pages = max([r.gfn_end for r in regions], default=0)
    return VmConfig(
        name=name,
        vcpus=vcpus,
        vcpu_nodes=nodes,
        vcpu_tids=tids,
        host_nodes=host_nodes,
        node_mem_pages=node_mem,
        regions=tuple(regions),
        nr_pages=nr_pages,
        numa_balancing=int(row["numa_balancing"]),
        scan_delay_ms=int(row["scan_delay_ms"]),
        scan_period_min_ms=int(row["scan_period_min_ms"]),
        scan_period_max_ms=int(row["scan_period_max_ms"]),
        scan_size_mb=int(row["scan_size_mb"]),
        preempt=str(row["preempt"]),
        mmu=str(row["mmu"]),
    )


@dataclass
class HostState:
    """Pages in use per host node, shared by the VMs of one replay (capacity checks)."""

    capacity_pages: I64
    used_pages: I64 = field(init=False)

    def __post_init__(self) -> None:
        self.used_pages = np.zeros_like(self.capacity_pages)

    def free(self) -> I64:
        return self.capacity_pages - self.used_pages

    def place(self, wanted: npt.NDArray[np.int16], nr_pages: int) -> npt.NDArray[np.int16]:
        """Nodes for new allocations of ``nr_pages`` each, falling back to the freest node.

        Models the page allocator's zonelist fallback in its simplest form: what does not fit
        on the preferred node goes to the node with the most free pages (over-commit when
        every node is full, so the replay never stops).
        """
        k = self.capacity_pages.size
        out = wanted.astype(np.int16).copy()
        need = np.bincount(out, minlength=k).astype(np.int64) * nr_pages
        free = self.free()
        for nid in range(k):
            if need[nid] <= free[nid]:
                continue
            sel = np.flatnonzero(out == nid)
            spill = sel[max(int(free[nid]) // nr_pages, 0) :]
            avail = (free - need).astype(np.float64)
            avail[nid] = -np.inf
            target = int(np.argmax(avail))
            if spill.size == 0 or avail[target] < nr_pages:
                continue
            out[spill] = target
            need[nid] -= spill.size * nr_pages
            need[target] += spill.size * nr_pages
        self.used_pages += np.bincount(out, minlength=k).astype(np.int64) * nr_pages
        return out

    def move(self, src: npt.NDArray[np.int16], dst: npt.NDArray[np.int16], nr_pages: int) -> None:
        """Account migrated pages: ``nr_pages`` each from ``src`` to ``dst``."""
        k = self.capacity_pages.size
        self.used_pages -= np.bincount(src, minlength=k).astype(np.int64) * nr_pages
        self.used_pages += np.bincount(dst, minlength=k).astype(np.int64) * nr_pages

    def has_room(self, dst: npt.NDArray[np.int16], nr_pages: int) -> npt.NDArray[np.bool_]:
        """Models mm/migrate.c migrate_balanced_pgdat() via numamigrate_isolate_page() (v6.5)
        / migrate_misplaced_folio_prepare() (v7.x) (KERNEL.md §8.4): the target node must
        have room for the folio (watermarks are folded into the capacity). Vectorized: a
        batch is granted in order until the node is full."""
        k = self.capacity_pages.size
        free = self.free()
        if (np.bincount(dst, minlength=k) <= free // nr_pages).all():
            return np.ones(dst.size, bool)  # every node has room for its whole batch
        ok = np.zeros(dst.size, bool)
        for nid in range(k):
            sel = np.flatnonzero(dst == nid)
            n_ok = max(int(free[nid]) // nr_pages, 0)
            ok[sel[:n_ok]] = True
        return ok


class VmState:
    """The arrays of one VM (see the module docstring)."""

    def __init__(self, cfg: VmConfig, host: HostState) -> None:
        self.cfg = cfg
        self.host = host
        n, ng = cfg.nr_pages, cfg.nr_granules
        self.pflags = np.zeros(n, np.uint8)
        self.pnode = np.zeros(n, np.int8)
        self.pcpupid = np.zeros(n, np.int32)
        self.g_region = np.full(ng, -1, np.int16)
        self.g_thp = np.zeros(ng, bool)
        self.g_npop = np.zeros(ng, np.int16)
        self.g_npinned = np.zeros(ng, np.int16)
        self.g_node = np.full(ng, NODE_NONE, np.int8)
        self.g_nprot = np.zeros(ng, np.int16)
        self.g_spte2m = np.zeros(ng, bool)
        self.g_faulted2m = np.zeros(ng, bool)
        self.g_nspte = np.zeros(ng, np.int16)
        self.g_cpupid = np.zeros(ng, np.int32)
        # THP mapped by 4K SPTEs in the secondary MMU (mixed SPTE levels, spte_levels.py)
        self.g_spte4k = np.zeros(ng, bool)
        # THP-region granule backed by 4K host pages (a THP fault fell back, spte_levels.py)
        self.g_small = np.zeros(ng, bool)
        self.rss_pages = 0
        self.interleave_next = 0
        for reg in cfg.regions:
            g0, g1 = reg.gfn_start // PAGES_PER_PMD, reg.gfn_end // PAGES_PER_PMD
            self.g_region[g0:g1] = reg.index
            self._init_pins(reg)

    # -- geometry ---------------------------------------------------------------------------
    def region_of_granule(self, g: int) -> Region:
        return self.cfg.regions[int(self.g_region[g])]

    # -- pinning and population at t=0 ----------------------------------------------------
    def _init_pins(self, reg: Region) -> None:
        """Pinned pages are faulted in at t=0 (pin_user_pages), placed per the region."""
        for s0, e0 in zip(reg.pinned_starts.tolist(), reg.pinned_ends.tolist(), strict=True):
            s, e = max(s0, reg.gfn_start), min(e0, reg.gfn_end)
            if e <= s:
                continue
            gs, ge = s // PAGES_PER_PMD, -(-e // PAGES_PER_PMD)
            for g in (gs, ge - 1):  # partial granules at the edges get page bits
                lo, hi = max(s, g * PAGES_PER_PMD), min(e, (g + 1) * PAGES_PER_PMD)
                if hi - lo < PAGES_PER_PMD:
                    fresh = (self.pflags[lo:hi] & P_PINNED) == 0
                    self.pflags[lo:hi] |= P_PINNED
                    self.g_npinned[g] += int(fresh.sum())
            full_lo, full_hi = -(-s // PAGES_PER_PMD), e // PAGES_PER_PMD
            if full_hi > full_lo:
                self.g_npinned[full_lo:full_hi] = PAGES_PER_PMD
        g0, g1 = reg.gfn_start // PAGES_PER_PMD, reg.gfn_end // PAGES_PER_PMD
        pinned_g = np.flatnonzero(self.g_npinned[g0:g1] > 0) + g0
        if pinned_g.size == 0:
            return
        if reg.pmd_mapped:
            self.populate_granules(pinned_g, self.placement_nodes(reg, pinned_g, None))
            return
        full = pinned_g[self.g_npinned[pinned_g] == PAGES_PER_PMD]
        if full.size:
            self.populate_granules(full, self.placement_nodes(reg, full, None), thp=False)
        part = pinned_g[self.g_npinned[pinned_g] < PAGES_PER_PMD]
        for g in part.tolist():
            base = g * PAGES_PER_PMD
            pages = base + np.flatnonzero(self.pflags[base : base + PAGES_PER_PMD] & P_PINNED)
            self.populate_pages(
                pages,
                np.full(pages.size, self.placement_nodes(reg, np.asarray([g]), None)[0], np.int16),
            )

    def placement_nodes(
        self, reg: Region, granules: I64, toucher_nodes: npt.NDArray[np.int16] | None
    ) -> npt.NDArray[np.int16]:
        """Node of new memory, the region's initial layout (ADR 0310): first-touch (the
        touching vCPU's node: the default policy's local allocation, mm/mempolicy.c
        alloc_pages_vma() v6.5 / alloc_pages_mpol() v7.x), interleave (2 MiB granules
        round-robin over the host nodes; the kernel's MPOL_INTERLEAVE goes by 4K pgoff for
        4K pages and by THP for THPs), or node:N. ``placement`` is not a mempolicy: only
        ``mof_policy`` is (fault.bind_masks(), KERNEL.md §3.6, §8.3)."""
        nodes = self.cfg.host_nodes
        if reg.placement.startswith("node:"):
            return np.full(granules.size, int(reg.placement[5:]) % nodes, np.int16)
        if reg.placement == "interleave" or toucher_nodes is None:
            if reg.placement == "interleave":
                return (granules % nodes).astype(np.int16)
            # first-touch pinned at t=0: the VMM pins from its main thread; use vCPU 0's node
            return np.full(
                granules.size, int(self.cfg.vcpu_nodes[0]) if self.cfg.vcpus else 0, np.int16
            )
        return toucher_nodes.astype(np.int16)

    def populate_granules(
        self, granules: I64, nodes: npt.NDArray[np.int16], *, thp: bool = True
    ) -> None:
        """Populate whole granules on a uniform node (a THP, or 512 pinned 4K pages)."""
        if granules.size == 0:
            return
        nodes = self.host.place(nodes, PAGES_PER_PMD)
        self.g_thp[granules] = thp
        self.g_npop[granules] = PAGES_PER_PMD
        self.g_node[granules] = nodes
        self.rss_pages += PAGES_PER_PMD * int(granules.size)

    def populate_pages(self, pages: I64, nodes: npt.NDArray[np.int16]) -> None:
        """Populate 4K pages (distinct, not yet populated) on the given nodes."""
        if pages.size == 0:
            return
        nodes = self.host.place(nodes, 1)
        g = pages // PAGES_PER_PMD
        self.materialize_nodes(np.unique(g))
        self.pflags[pages] |= P_POP
        self.pnode[pages] = nodes
        np.add.at(self.g_npop, g, 1)
        self.rss_pages += int(pages.size)

    def materialize_nodes(self, granules: I64) -> None:
        """Turn uniform-node granules into per-page nodes before a per-page change."""
        uni = granules[self.g_node[granules] >= 0]
        for g in uni.tolist():
            self.pnode[g * PAGES_PER_PMD : (g + 1) * PAGES_PER_PMD] = self.g_node[g]
            self.g_node[g] = NODE_NONE
            if self.g_npop[g] == PAGES_PER_PMD and not self.g_thp[g]:
                self.pflags[g * PAGES_PER_PMD : (g + 1) * PAGES_PER_PMD] |= P_POP

    # -- per-page views -------------------------------------------------------------------
    def page_populated(self, pages: I64) -> B:
        g = pages // PAGES_PER_PMD
        out: B = (self.g_npop[g] == PAGES_PER_PMD) | ((self.pflags[pages] & P_POP) != 0)
        return out

    def page_pinned(self, pages: I64) -> B:
        g = pages // PAGES_PER_PMD
        out: B = (self.g_npinned[g] == PAGES_PER_PMD) | ((self.pflags[pages] & P_PINNED) != 0)
        return out

    def page_nodes(self, pages: I64) -> npt.NDArray[np.int16]:
        g = pages // PAGES_PER_PMD
        gn = self.g_node[g]
        return np.where(gn >= 0, gn, self.pnode[pages]).astype(np.int16)

    def set_page_nodes(self, pages: I64, nodes: npt.NDArray[np.int16]) -> None:
        self.materialize_nodes(np.unique(pages // PAGES_PER_PMD))
        self.pnode[pages] = nodes
