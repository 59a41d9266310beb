"""tracefs control for ``capture``: find/mount it, enable events with filters, restore on exit.

Every file the capture writes is read first and written back on exit (:class:`TracingSession`),
also when the body raises or the user presses Ctrl-C. Events and their formats are KERNEL.md 9.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import MissingFacilityError

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
MAX_PID_TERMS = 120  # beyond this many threads the filter string gets unwieldy: no pid filter


@dataclass(frozen=True)
class EventSpec:
    """One tracepoint to enable and how to restrict it to the VMM.

    ``scope``: "all" (no filter), "pid" (``common_pid`` is a VMM thread), or the name of a
    payload field holding a tgid (``tgid``/``src_tgid``) compared with the VMM's pid.
    """

    system: str
    name: str
    scope: str = "pid"
    extra: str = ""  # an additional filter term, ANDed


# KERNEL.md 9: what the engine and the observed views need. kvm_unmap_hva_range stays
# unfiltered: it fires in whichever task changes the mm (task_numa_work() in a VMM thread, but
# also khugepaged, kcompactd, reclaim), and ingest clips it to guest RAM by address.
EVENTS: tuple[EventSpec, ...] = (
    EventSpec("kvm", "kvm_unmap_hva_range", "all"),
    EventSpec("kvmmmu", "kvm_mmu_spte_requested"),
    EventSpec("kvmmmu", "kvm_mmu_set_spte"),
    EventSpec("kvmmmu", "kvm_mmu_prepare_zap_page", "all"),
    EventSpec("kvmmmu", "kvm_tdp_mmu_spte_changed"),
    EventSpec("kvm", "kvm_page_fault"),
    EventSpec("kvm", "kvm_exit"),
    # reason 0 (flush on task switch) fires on every context switch (and on every guest
    # entry/exit under kvm_pvm): not a shootdown, dropped at the source.
    EventSpec("tlb", "tlb_flush", extra="reason != 0"),
    EventSpec("ipi", "ipi_send_cpumask"),
    EventSpec("sched", "sched_skip_vma_numa"),
    EventSpec("sched", "sched_move_numa", "tgid"),
    EventSpec("sched", "sched_stick_numa", "src_tgid"),
    EventSpec("sched", "sched_swap_numa", "src_tgid"),
    EventSpec("migrate", "mm_migrate_pages"),
    EventSpec("exceptions", "page_fault_user"),
    # Not sched_switch, sched_stat_runtime or rseq:rseq_update (ADR 0350): they fire on
    # every preemption of a vCPU thread, each event wakes this reader, whose wake-up preempts
    # a vCPU again; in the lab that fed back to 14,000 switches/s per vCPU (from 125) and
    # slowed the guest by 30%.
)


def find_tracefs(*, mount: bool = True) -> Path:
    """The tracefs mount point; mounts it on /sys/kernel/tracing when it is empty (root only)."""
    for root in TRACEFS_MOUNTS:
        if (root / "trace_pipe").exists():
            return root
    if os.geteuid() != 0:
        msg = "tracefs is not mounted and mounting it needs root; run as root"
        raise MissingFacilityError(msg)
    root = TRACEFS_MOUNTS[0]
    if mount and root.is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)], check=False)
        if (root / "trace_pipe").exists():
            return root
    tried = ", ".join(map(str, TRACEFS_MOUNTS))
    msg = f"tracefs not found (tried {tried}); does the kernel have CONFIG_TRACING?"
    raise MissingFacilityError(msg)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        msg = f"`{what}` needs root (tracefs, /proc/sys/kernel, /dev/kvm); run it as root"
        raise MissingFacilityError(msg)


def pid_filter(tids: Sequence[int], vmm_pid: int, spec: EventSpec) -> str:
    """The ``filter`` expression for ``spec`` restricting it to the VMM (empty: no filter)."""
    terms: list[str] = []
    if spec.scope == "pid" and 0 < len(tids) <= MAX_PID_TERMS:
        terms.append("(" + " || ".join(f"common_pid == {t}" for t in sorted(set(tids))) + ")")
    elif spec.scope not in ("pid", "all"):
        terms.append(f"{spec.scope} == {vmm_pid}")
    if spec.extra:
        terms.append(f"({spec.extra})")
    return " && ".join(terms)


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def buffer_kb(text: str) -> str:
    """``buffer_size_kb`` as it can be written back ("7 (expanded: 1408)" -> "1408")."""
    if "expanded:" in text:
        return text.split("expanded:")[1].strip(" )\n")
    return text.strip()


@dataclass
class TracingSession:
    """Saved tracefs state and the changes made by one capture."""

    root: Path
    saved: dict[str, str] = field(default_factory=dict)
    saved_filters: dict[str, str] = field(default_factory=dict)
    enabled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    filters: dict[str, str] = field(default_factory=dict)

    SETTINGS = (
        "tracing_on",
        "buffer_size_kb",
        "saved_cmdlines_size",
        "trace_clock",
        "options/event-fork",
    )

    def save(self) -> None:
        for name in self.SETTINGS:
            path = self.root / name
            if path.exists():
                self.saved[name] = _read(path)
        self.saved["set_event"] = _read(self.root / "set_event")

    def configure(
        self,
        events: Sequence[EventSpec],
        tids: Sequence[int],
        vmm_pid: int,
        buffer_size_kb: int,
        cmdlines: int,
    ) -> None:
        """Stop tracing, clear the buffer, size it, enable ``events`` with VMM filters."""
        _write(self.root / "tracing_on", "0")
        _write(self.root / "set_event", "")
        _write(self.root / "buffer_size_kb", str(buffer_size_kb))
        _write(self.root / "saved_cmdlines_size", str(cmdlines))
        if "trace_clock" in self.saved:
            _write(self.root / "trace_clock", "mono")
        if "options/event-fork" in self.saved:
            _write(self.root / "options/event-fork", "1")
        _write(self.root / "trace", "")
        for spec in events:
            event_dir = self.root / "events" / spec.system / spec.name
            key = f"{spec.system}:{spec.name}"
            if not (event_dir / "enable").exists():
                self.missing.append(key)
                continue
            self.saved_filters[key] = _read(event_dir / "filter").strip()
            expr = pid_filter(tids, vmm_pid, spec)
            _write(event_dir / "filter", expr or "0")
            if expr:
                self.filters[key] = expr
            _write(event_dir / "enable", "1")
            self.enabled.append(key)

    def start(self) -> None:
        _write(self.root / "tracing_on", "1")

    def stop(self) -> None:
        _write(self.root / "tracing_on", "0")

    def restore(self) -> list[str]:
        """Put back every saved setting; returns the problems met (restore never raises)."""
        problems: list[str] = []

        def attempt(path: Path, value: str) -> None:
            try:
                _write(path, value)
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}")

        attempt(self.root / "tracing_on", "0")
        attempt(self.root / "set_event", "")
        for key, old in self.saved_filters.items():
            system, name = key.split(":")
            attempt(self.root / "events" / system / name / "filter", "0" if old == "none" else old)
        for line in self.saved.get("set_event", "").split():
            try:
                with (self.root / "set_event").open("a") as f:
                    f.write(line)
            except OSError as exc:
                problems.append(f"set_event {line}: {exc.strerror}")
        for name in self.SETTINGS:
            if name in self.saved and name != "tracing_on":
                value = self.saved[name]
                if name == "buffer_size_kb":
                    value = buffer_kb(value)
                elif name == "trace_clock":
                    value = value.split("[")[1].split("]")[0]
                attempt(self.root / name, value.strip())
        if "tracing_on" in self.saved:
            attempt(self.root / "tracing_on", self.saved["tracing_on"].strip())
        return problems


@contextmanager
def tracing_session(root: Path) -> Iterator[TracingSession]:
    """Save tracefs state, yield the session, restore everything on the way out."""
    session = TracingSession(root)
    session.save()
    try:
        yield session
    finally:
        problems = session.restore()
        if problems:
            import sys

            print("tlbreplay: warning: could not restore " + "; ".join(problems), file=sys.stderr)


def cpu_stats(root: Path) -> dict[int, dict[str, str]]:
    """per_cpu/cpuN/stats (entries, overrun, dropped events, ...) per CPU."""
    stats: dict[int, dict[str, str]] = {}
    for cpu_dir in sorted((root / "per_cpu").glob("cpu*")):
        values: dict[str, str] = {}
        for line in _read(cpu_dir / "stats").splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                values[key.strip()] = value.strip()
        stats[int(cpu_dir.name[3:])] = values
    return stats
