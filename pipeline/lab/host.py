"""Facts about the host and the VMM process, read from /proc and /sys for the sidecar.

NUMA-balancing knobs live in debugfs (/sys/kernel/debug/sched/numa_balancing/, v5.13+); where
debugfs is not readable the kernel defaults of kernel/sched/fair.c (sysctl_numa_balancing_*) are
used and the source says so.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.model.knobs import NUMA_KNOB_DEFAULTS

DEBUGFS_NUMA = Path("/sys/kernel/debug/sched/numa_balancing")
DEBUGFS_PREEMPT = Path("/sys/kernel/debug/sched/preempt")
NUMA_BALANCING = Path("/proc/sys/kernel/numa_balancing")
VMSTAT_PREFIXES = ("numa_", "pgmigrate_", "thp_migration_", "pgpromote_")
SMAPS_KEYS = ("Rss", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Anonymous", "Locked")


@dataclass
class HostFacts:
    kernel: str
    nodes: int
    node_mem_bytes: list[int]
    preempt: str
    preempt_source: str
    mmu: str
    knobs: dict[str, int]
    knobs_source: str
    numa_balancing: int


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def numa_knobs() -> tuple[dict[str, int], str]:
    """The scanner knobs (ms / MB) and where they came from."""
    knobs: dict[str, int] = {}
    for name, default in NUMA_KNOB_DEFAULTS.items():
        text = _read(DEBUGFS_NUMA / name)
        if text is None:
            return dict(
                NUMA_KNOB_DEFAULTS
            ), "kernel defaults (debugfs sched/numa_balancing not readable)"
        knobs[name] = int(text.strip()) if text.strip() else default
    return knobs, str(DEBUGFS_NUMA)


def preempt_mode() -> tuple[str, str]:
    """none | voluntary | full, and how it was found (debugfs, cmdline, config, uname -v)."""
    text = _read(DEBUGFS_PREEMPT)
    if text:
        match = re.search(r"\((\w+)\)", text)
        if match:
            return _preempt_name(match.group(1)), str(DEBUGFS_PREEMPT)
    cmdline = _read(Path("/proc/cmdline")) or ""
    match = re.search(r"\bpreempt=(\w+)", cmdline)
    if match:
        return _preempt_name(match.group(1)), "/proc/cmdline"
    version = os.uname().version
    if "PREEMPT_RT" in version:
        return "full", "uname -v"
    try:
        config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        config = ""
    for option, name in (
        ("PREEMPT_NONE", "none"),
        ("PREEMPT_VOLUNTARY", "voluntary"),
        ("PREEMPT", "full"),
    ):
        if f"\nCONFIG_{option}=y" in config:
            return name, f"/proc/config.gz CONFIG_{option}"
    if "PREEMPT" in version.split():
        return "full", "uname -v"
    return "voluntary", "uname -v (no PREEMPT flag)"


def _preempt_name(word: str) -> str:
    return {"lazy": "full", "full": "full", "none": "none", "voluntary": "voluntary"}.get(
        word, word
    )


def kvm_mmu() -> str:
    """``shadow`` when KVM uses shadow paging (kvm_pvm, ept=N, npt=0), else ``tdp``."""
    modules = Path("/sys/module")
    if (modules / "kvm_pvm").exists():
        return "shadow"
    ept = _read(modules / "kvm_intel/parameters/ept")
    npt = _read(modules / "kvm_amd/parameters/npt")
    if (ept is not None and ept.strip() in ("N", "0")) or (
        npt is not None and npt.strip() in ("N", "0")
    ):
        return "shadow"
    return "tdp"


def node_memory() -> list[int]:
    sizes = []
    for node in sorted(
        Path("/sys/devices/system/node").glob("node[0-9]*"), key=lambda p: int(p.name[4:])
    ):
        text = _read(node / "meminfo") or ""
        match = re.search(r"MemTotal:\s+(\d+) kB", text)
        sizes.append(int(match.group(1)) * 1024 if match else 0)
    return sizes or [0]


def host_facts() -> HostFacts:
    knobs, knobs_source = numa_knobs()
    preempt, preempt_source = preempt_mode()
    mem = node_memory()
    balancing = _read(NUMA_BALANCING)
    return HostFacts(
        kernel=os.uname().release,
        nodes=len(mem),
        node_mem_bytes=mem,
        preempt=preempt,
        preempt_source=preempt_source,
        mmu=kvm_mmu(),
        knobs=knobs,
        knobs_source=knobs_source,
        numa_balancing=int(balancing) if balancing else 0,
    )


def vmstat() -> dict[str, int]:
    """/proc/vmstat counters relevant to NUMA balancing and migration."""
    values: dict[str, int] = {}
    for line in (_read(Path("/proc/vmstat")) or "").splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(VMSTAT_PREFIXES):
            values[name] = int(value)
    return values


def vmstat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


@dataclass
class Vma:
    start: int
    end: int
    perms: str
    offset: int
    path: str
    smaps: dict[str, int] = field(default_factory=dict)  # kB values of SMAPS_KEYS
    thp_eligible: bool | None = None
    vm_flags: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return self.end - self.start

    def as_dict(self) -> dict[str, object]:
        return {
            "start": hex(self.start),
            "end": hex(self.end),
            "perms": self.perms,
            "offset": self.offset,
            "path": self.path,
            "smaps_kb": self.smaps,
            "thp_eligible": self.thp_eligible,
            "vm_flags": self.vm_flags,
        }


_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$")


def read_smaps(pid: int) -> list[Vma]:
    """The VMAs of ``pid`` from /proc/PID/smaps with the THP-relevant fields."""
    text = _read(Path(f"/proc/{pid}/smaps"))
    if text is None:
        msg = f"/proc/{pid}/smaps is not readable"
        raise OSError(msg)
    vmas: list[Vma] = []
    for line in text.splitlines():
        match = _MAPS_LINE.match(line)
        if match:
            vmas.append(
                Vma(
                    int(match.group(1), 16),
                    int(match.group(2), 16),
                    match.group(3),
                    int(match.group(4), 16),
                    match.group(5),
                )
            )
            continue
        if not vmas:
            continue
        key, _, value = line.partition(":")
        if key in SMAPS_KEYS:
            vmas[-1].smaps[key] = int(value.split()[0])
        elif key == "THPeligible":
            vmas[-1].thp_eligible = value.strip() == "1"
        elif key == "VmFlags":
            vmas[-1].vm_flags = value.split()
    return vmas


def thread_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def thread_comm(pid: int, tid: int) -> str:
    return (_read(Path(f"/proc/{pid}/task/{tid}/comm")) or "").strip()


@dataclass(frozen=True)
class ThreadSched:
    """A thread's CPU time and involuntary context switches at one moment."""

    runtime_ns: int  # se.sum_exec_runtime: /proc/PID/task/TID/schedstat field 1
    nonvoluntary: int  # nivcsw: /proc/PID/task/TID/status nonvoluntary_ctxt_switches


def thread_sched(pid: int, tid: int) -> ThreadSched | None:
    """The thread's :class:`ThreadSched` (None when it is gone or unreadable).
    task_tick_numa() compares se.sum_exec_runtime with node_stamp + numa_scan_period, and a
    thread that never sleeps is switched out involuntarily at each need_resched() of its CPU
    (kernel/sched/core.c __schedule(); ADRs 0320, 0350)."""
    base = Path(f"/proc/{pid}/task/{tid}")
    stat, status = _read(base / "schedstat"), _read(base / "status")
    if not stat or not status:
        return None
    match = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)
    if match is None:
        return None
    return ThreadSched(int(stat.split()[0]), int(match.group(1)))


def sched_delta(
    before: dict[int, ThreadSched | None], after: dict[int, ThreadSched | None]
) -> dict[str, dict[str, float]]:
    """Per thread id (as a string): CPU seconds and involuntary switches between two reads."""
    out: dict[str, dict[str, float]] = {}
    for tid, a in before.items():
        b = after.get(tid)
        if a is None or b is None:
            continue
        out[str(tid)] = {
            "cpu_s": round((b.runtime_ns - a.runtime_ns) / 1e9, 6),
            "nonvoluntary": float(b.nonvoluntary - a.nonvoluntary),
            "runtime_start_ms": round(a.runtime_ns / 1e6, 1),
        }
    return out


def thread_user_sp(pid: int, tid: int, tries: int = 200) -> int | None:
    """The thread's user stack pointer from ``/proc/PID/task/TID/syscall`` (``nr args... sp
    pc`` while it is off-CPU in a syscall, ``-1 sp pc`` when blocked elsewhere); None when it
    stayed on a CPU ("running") for every try, 1 ms apart, or the file is unreadable. The VMA
    holding it is the thread's stack mapping, which with glibc also holds its TLS and rseq
    area (ADR 0350)."""
    path = Path(f"/proc/{pid}/task/{tid}/syscall")
    for _ in range(max(1, tries)):
        fields = (_read(path) or "").split()
        if len(fields) >= 3 and fields[0] != "running":
            try:
                return int(fields[-2], 16)
            except ValueError:
                return None
        if not fields:
            return None
        time.sleep(0.001)
    return None


def kvm_debugfs_stats(pid: int) -> dict[str, dict[str, int]]:
    """KVM stats in /sys/kernel/debug/kvm (global, and the VMM's ``PID-FD`` dirs) if readable."""
    root = Path("/sys/kernel/debug/kvm")
    result: dict[str, dict[str, int]] = {}
    if not root.is_dir():
        return result
    dirs = [root, *sorted(d for d in root.glob(f"{pid}-*") if d.is_dir())]
    for directory in dirs:
        values: dict[str, int] = {}
        for stat in directory.iterdir():
            if stat.is_file():
                text = _read(stat)
                if text is not None and text.strip().lstrip("-").isdigit():
                    values[stat.name] = int(text)
        if values:
            result[directory.name] = values
    return result
