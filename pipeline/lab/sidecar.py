"""Write the VM sidecar TOML (/work/briefs/sidecar.md format) for a captured VM.

Only the documented keys go into [host], [[vm]] and [[vm.region]]; a lab run adds a top-level
``[lab]`` table describing the guest's known workload for ``calibrate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.lab.host import HostFacts

MIB = 1 << 20
TomlValue = int | float | str | bool | Sequence["TomlValue"]


@dataclass
class RegionSpec:
    """One guest-RAM VMA."""

    name: str
    size_bytes: int
    gpa_start: int
    hva_start: int
    backing: str  # anon | shared | hugetlbfs
    thp: bool
    pinned: str = "none"  # none | all
    mempolicy: str = "default"  # enums.mempolicy


@dataclass
class VmSpec:
    name: str
    vcpus: int
    vcpu_tids: list[int]
    vmm_pid: int
    regions: list[RegionSpec] = field(default_factory=list)

    @property
    def mem_bytes(self) -> int:
        return sum(r.size_bytes for r in self.regions)


def toml_value(value: TomlValue, *, hex_int: bool = False) -> str:
    """One TOML value (bool, int, float, string or array of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex(value) if hex_int else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"TOML cannot hold {value}"
            raise ValueError(msg)
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def toml_table(header: str, items: Mapping[str, TomlValue], hex_keys: Sequence[str] = ()) -> str:
    lines = [header]
    for key, value in items.items():
        lines.append(f"{key} = {toml_value(value, hex_int=key in hex_keys)}")
    return "\n".join(lines) + "\n"


def _size_items(prefix: str, size_bytes: int) -> dict[str, TomlValue]:
    if size_bytes % MIB == 0:
        return {f"{prefix}_mib": size_bytes // MIB}
    return {f"{prefix}_bytes": size_bytes}


def host_items(facts: HostFacts, numa_balancing: int) -> dict[str, TomlValue]:
    items: dict[str, TomlValue] = {
        "nodes": facts.nodes,
        "node_mem_bytes": facts.node_mem_bytes,
        "numa_balancing": numa_balancing,
    }
    items.update(facts.knobs)
    items.update({"preempt": facts.preempt, "mmu": facts.mmu, "kernel": facts.kernel})
    return items


def render_sidecar(
    facts: HostFacts,
    vms: Sequence[VmSpec],
    *,
    numa_balancing: int,
    lab: Mapping[str, TomlValue] | None = None,
    comment: str = "",
) -> str:
    parts = [f"# {line}\n" for line in comment.splitlines()] if comment else []
    parts.append(toml_table("[host]", host_items(facts, numa_balancing)))
    for vm in vms:
        vm_items: dict[str, TomlValue] = {"name": vm.name}
        vm_items.update(_size_items("mem", vm.mem_bytes))
        vm_items.update(
            {"vcpus": vm.vcpus, "vcpu_nodes": 0, "vcpu_tids": vm.vcpu_tids, "vmm_pid": vm.vmm_pid}
        )
        parts.append("\n" + toml_table("[[vm]]", vm_items))
        for region in vm.regions:
            items: dict[str, TomlValue] = {"name": region.name}
            items.update(_size_items("size", region.size_bytes))
            items.update(
                {
                    "gpa_start": region.gpa_start,
                    "hva_start": region.hva_start,
                    "backing": region.backing,
                    "thp": region.thp,
                    "mempolicy": region.mempolicy,
                    "placement": "first-touch",
                    "pinned": region.pinned,
                }
            )
            parts.append(
                "\n" + toml_table("[[vm.region]]", items, hex_keys=("hva_start", "gpa_start"))
            )
    if lab:
        parts.append("\n" + toml_table("[lab]", lab))
    return "".join(parts)


def write_sidecar(path: Path, text: str) -> None:
    """Write atomically (temp file + rename) so a failed run leaves no partial sidecar."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
