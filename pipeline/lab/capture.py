"""``tlbreplay capture``: record a live KVM VMM's NUMA-balancing activity with tracefs.

Enables the tracepoints of KERNEL.md 9 (pipeline.lab.tracefs.EVENTS) filtered to the VMM's
threads, sizes the per-CPU buffers, streams ``trace_pipe`` into a zstd file whose first line is a
``# kernel ...`` comment, snapshots /proc/vmstat, the VMM's smaps and KVM's debugfs stats before
and after, and writes the VM sidecar for ``tlbreplay ingest --vm-config``. Every tracefs setting
it changes is restored on exit, also on error, Ctrl-C or SIGTERM.

Files written for ``--out DIR/NAME.trace.zst``: the trace, ``NAME.toml`` (sidecar),
``NAME.vmstat.json`` (vmstat before/after/delta) and ``NAME.capture.json`` (VMAs, thread
names, KVM stats, enabled events and filters, ring-buffer overruns).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import zstandard

from pipeline.errors import InputError, OutputError
from pipeline.lab import host, tracefs
from pipeline.lab.sidecar import RegionSpec, VmSpec, render_sidecar, write_sidecar

DEFAULT_BUFFER_KB = 16384
SAVED_CMDLINES = 32768
READ_CHUNK = 1 << 20
ZSTD_LEVEL = 12
VCPU_COMM = re.compile(r"^(CPU \d+/KVM|vcpu\d*)")
MIN_RAM_MIB = 64
READY_MESSAGE = "tlbreplay: capture: tracing"
LOST_LINE = re.compile(rb"CPU:(\d+) \[LOST (\d+) EVENTS\]")


@dataclass(frozen=True)
class CapturePaths:
    trace: Path
    sidecar: Path
    vmstat: Path
    meta: Path

    @classmethod
    def for_output(cls, out: Path) -> CapturePaths:
        """``DIR/NAME.trace.zst`` -> the trace and its ``NAME.toml/.vmstat.json/.capture.json``."""
        name = out.name
        for suffix in (".zst", ".trace", ".txt"):
            name = name.removesuffix(suffix)
        stem = out.with_name(name)
        return cls(
            out,
            stem.with_suffix(".toml"),
            Path(f"{stem}.vmstat.json"),
            Path(f"{stem}.capture.json"),
        )

    def all(self) -> tuple[Path, ...]:
        return (self.trace, self.sidecar, self.vmstat, self.meta)


@dataclass
class CaptureResult:
    paths: CapturePaths
    lines: int
    trace_bytes: int
    lost_events: dict[int, int] = field(default_factory=dict)
    overruns: dict[int, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0


def check_pid(pid: int) -> None:
    if not Path(f"/proc/{pid}").is_dir():
        msg = f"no process with pid {pid}"
        raise InputError(f"/proc/{pid}", msg)


def classify_vma(vma: host.Vma) -> str:
    """anon | shared | hugetlbfs for a guest-RAM VMA (VmFlags ``ht`` = hugetlb, ``sh`` = shared)."""
    if "ht" in vma.vm_flags:
        return "hugetlbfs"
    if "sh" in vma.vm_flags or vma.path.startswith(("/memfd:", "/dev/shm", "/SYSV")):
        return "shared"
    return "anon"


def numa_maps_mempolicy(field: str) -> str:
    """A /proc/PID/numa_maps policy field as enums.mempolicy (mm/mempolicy.c mpol_to_str():
    ``mode[=flags][:nodes]``; MPOL_LOCAL, which has no MPOL_F_MOF either, as "preferred")."""
    mode, _, rest = field.partition("=")
    mode = mode.split(":")[0]
    flags = rest.split(":")[0]
    if mode == "bind":
        return "bind+numa_balancing" if "balancing" in flags else "bind"
    if mode in ("prefer", "local", "prefer (many)"):
        return "preferred"
    if mode in ("interleave", "weighted"):
        return "interleave"
    return "default"


def vma_mempolicies(pid: int) -> dict[int, str]:
    """Each VMA's mempolicy by start address (/proc/PID/numa_maps); {} when unreadable."""
    out: dict[int, str] = {}
    try:
        text = Path(f"/proc/{pid}/numa_maps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            out[int(fields[0], 16)] = numa_maps_mempolicy(fields[1])
    return out


def detect_vm(
    pid: int,
    vmas: Sequence[host.Vma],
    *,
    name: str,
    min_ram_mib: int = MIN_RAM_MIB,
    pinned: str = "none",
) -> VmSpec:
    """Guess a VMM's guest RAM and vCPU threads (QEMU's ``CPU n/KVM`` threads; large rw VMAs).

    Guest RAM = every read-write VMA of at least ``min_ram_mib`` that is private anonymous,
    memfd/shm or hugetlbfs, in address order with contiguous guest-physical addresses: a guess
    (QEMU's below/above-4G split is not visible in /proc); pass the lab's exact layout instead
    where it is known.
    """
    tids = host.thread_ids(pid)
    vcpu_tids = [t for t in tids if VCPU_COMM.match(host.thread_comm(pid, t))]
    policies = vma_mempolicies(pid)
    regions: list[RegionSpec] = []
    gpa = 0
    for vma in vmas:
        anonymous = vma.path == "" or vma.path.startswith(("/memfd:", "/dev/shm", "/dev/hugepages"))
        if vma.perms[:2] != "rw" or vma.size_bytes < min_ram_mib << 20 or not anonymous:
            continue
        backing = classify_vma(vma)
        thp = (
            vma.smaps.get("AnonHugePages", 0) + vma.smaps.get("ShmemPmdMapped", 0) > 0
            or "hg" in vma.vm_flags
        )
        regions.append(
            RegionSpec(
                f"ram{len(regions)}",
                vma.size_bytes,
                gpa,
                vma.start,
                backing,
                thp,
                pinned,
                policies.get(vma.start, "default"),
            )
        )
        gpa += vma.size_bytes
    return VmSpec(name, max(1, len(vcpu_tids)), vcpu_tids or tids, pid, regions)


def recompress(path: Path, level: int = 17) -> int:
    """Recompress a zstd file in place at ``level`` (atomic); returns the new size in bytes."""
    tmp = path.with_name(path.name + ".recompress")
    try:
        with path.open("rb") as src, tmp.open("wb") as dst:
            reader = zstandard.ZstdDecompressor().stream_reader(src)
            compressor = zstandard.ZstdCompressor(level=level, threads=-1)
            with compressor.stream_writer(dst, closefd=False) as writer:
                while chunk := reader.read(READ_CHUNK):
                    writer.write(chunk)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


@contextmanager
def interrupt_signals() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt so ``finally`` blocks run.

    SIGINT is set explicitly: a process started in the background by a non-interactive shell
    inherits SIGINT ignored, and Python then leaves it ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


SAMPLED_COUNTERS = (
    "numa_pte_updates",
    "numa_huge_pte_updates",
    "numa_hint_faults",
    "numa_hint_faults_local",
    "numa_pages_migrated",
    "pgmigrate_success",
    "pgmigrate_fail",
)
SAMPLE_INTERVAL_NS = 5_000_000


class VmstatSampler:
    """/proc/vmstat NUMA counters sampled every 5 ms, CLOCK_MONOTONIC stamped (= trace_clock mono).

    /proc/vmstat is host-wide: other processes' NUMA scans add to it. The samples let
    ``calibrate`` attribute increments to the VM's own scan windows (times from the trace).
    Rows are kept only when a counter changed: ``[ts_ns, *SAMPLED_COUNTERS]``.
    """

    def __init__(self, interval_ns: int = SAMPLE_INTERVAL_NS) -> None:
        self.fd = os.open("/proc/vmstat", os.O_RDONLY)
        self.buf = bytearray(1 << 16)
        self.interval_ns = interval_ns
        self.next_ns = 0
        self.rows: list[list[int]] = []
        self._last: list[int] = []
        self._pattern = re.compile(
            rb"^(" + b"|".join(c.encode() for c in SAMPLED_COUNTERS) + rb") (\d+)$", re.M
        )

    def tick(self) -> None:
        now = time.monotonic_ns()
        if now < self.next_ns:
            return
        self.next_ns = now + self.interval_ns
        n = os.preadv(self.fd, [self.buf], 0)
        found = {
            m.group(1).decode(): int(m.group(2)) for m in self._pattern.finditer(self.buf, 0, n)
        }
        values = [found.get(c, 0) for c in SAMPLED_COUNTERS]
        if values != self._last:
            self.rows.append([now, *values])
            self._last = values

    def close(self) -> None:
        os.close(self.fd)


class PipeReader:
    """Copies trace_pipe into a compressed sink through one preallocated buffer.

    No per-read allocation: a large ``bytes`` per read would be an mmap/munmap pair in the
    reading process, and in a VMM process every munmap is an MMU notifier (a traced
    ``kvm_unmap_hva_range``): the capture would trace itself.
    """

    def __init__(self, pipe_fd: int, sink: Any, sampler: VmstatSampler | None = None) -> None:
        self.fd = pipe_fd
        self.sampler = sampler
        self.sink = sink
        self.buf = bytearray(READ_CHUNK)
        self.view = memoryview(self.buf)
        self.lines = 0
        self.bytes = 0
        self.lost: dict[int, int] = {}

    def drain(self, until: float | None = None) -> None:
        """Read what is buffered (stop at EAGAIN, or at ``until`` while events keep coming)."""
        while until is None or time.monotonic() < until:
            if self.sampler is not None:
                self.sampler.tick()
            try:
                n = os.readv(self.fd, [self.buf])
            except BlockingIOError:
                return
            if n == 0:
                return
            chunk = self.view[:n]
            self.sink.write(chunk)
            self.lines += self.buf.count(b"\n", 0, n)
            self.bytes += n
            for match in LOST_LINE.finditer(chunk):
                cpu = int(match.group(1))
                self.lost[cpu] = self.lost.get(cpu, 0) + int(match.group(2))

    def stream(self, deadline: float) -> bool:
        """Copy until ``deadline``; returns True when stopped early by Ctrl-C/SIGINT/SIGTERM.

        Sleeps on a timer between drains instead of polling the pipe: a reader waiting in
        poll() is woken by the first event after it sleeps (kernel/trace/ring_buffer.c
        rb_wakeups()), so each kvm_unmap_hva_range would wake it at once, and on a busy
        host its wake-up preempts the very thread that is zapping: the zap walk then flushes
        and yields (ADR 0350). A timer wake-up is uncorrelated with the scans, like any other
        background task. The 16 MiB per-CPU buffers hold far more than one interval."""
        try:
            while time.monotonic() < deadline:
                time.sleep(SAMPLE_INTERVAL_NS / 1e9)
                self.drain(until=deadline)
        except KeyboardInterrupt:
            return True
        return False


def header_line(pid: int, seconds: float, command: str) -> str:
    return (
        f"# kernel {os.uname().release}; captured by tlbreplay capture (pid {pid}, {seconds:g} s, "
        f"trace_clock mono); command {command}\n"
    )


def capture(
    pid: int,
    seconds: float,
    out: Path,
    *,
    vms: Sequence[VmSpec] | None = None,
    buffer_kb: int = DEFAULT_BUFFER_KB,
    command: str | None = None,
    numa_balancing: int | None = None,
    events: Sequence[tracefs.EventSpec] = tracefs.EVENTS,
) -> CaptureResult:
    """Trace VMM ``pid`` for ``seconds`` into ``out`` (+ sidecar and snapshots beside it).

    ``vms`` is the VM layout for the sidecar (default: :func:`detect_vm`); ``numa_balancing``
    the mode to record (default: the current sysctl). SIGINT/SIGTERM/SIGHUP end the window
    early and keep what was captured; any error removes the partial outputs.
    """
    tracefs.require_root("tlbreplay capture")
    root = tracefs.find_tracefs()
    check_pid(pid)
    paths = CapturePaths.for_output(out)
    if not out.parent.is_dir():
        raise OutputError(out.parent, "the output directory does not exist")
    command = command or shlex.join(sys.argv)
    tids = host.thread_ids(pid)
    before_vmstat = host.vmstat()
    before_vmas = host.read_smaps(pid)
    thread_sp = {str(t): host.thread_user_sp(pid, t) for t in tids}
    before_kvm = host.kvm_debugfs_stats(pid)
    sampler = VmstatSampler()
    facts = host.host_facts()
    tmp = {p: p.with_name(p.name + ".partial") for p in paths.all()}
    interrupted = False
    try:
        with interrupt_signals(), tracefs.tracing_session(root) as session:
            session.configure(events, tids, pid, buffer_kb, SAVED_CMDLINES)
            pipe_fd = os.open(root / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
            try:
                with (
                    tmp[paths.trace].open("wb") as raw,
                    zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw) as sink,
                ):
                    sink.write(header_line(pid, seconds, command).encode())
                    reader = PipeReader(pipe_fd, sink, sampler)
                    session.start()
                    start = time.monotonic()
                    # the baseline row, before anything the caller does once we are ready
                    sampler.tick()
                    sched_before = {t: host.thread_sched(pid, t) for t in tids}
                    print(
                        f"{READY_MESSAGE} pid {pid} for {seconds:g} s (Ctrl-C stops early)",
                        file=sys.stderr,
                        flush=True,
                    )
                    interrupted = reader.stream(start + seconds)
                    elapsed = time.monotonic() - start
                    sched_after = {t: host.thread_sched(pid, t) for t in tids}
                    session.stop()
                    reader.drain()
                overruns = {
                    cpu: int(s.get("overrun", "0")) for cpu, s in tracefs.cpu_stats(root).items()
                }
            finally:
                os.close(pipe_fd)
                sampler.close()
            enabled, missing, filters = (
                list(session.enabled),
                list(session.missing),
                dict(session.filters),
            )
        after_vmstat = host.vmstat()
        after_vmas = host.read_smaps(pid) if Path(f"/proc/{pid}").is_dir() else []
        after_kvm = host.kvm_debugfs_stats(pid)
        vm_list = list(vms) if vms is not None else [detect_vm(pid, before_vmas, name="vm0")]
        balancing = numa_balancing if numa_balancing is not None else facts.numa_balancing
        comment = f"captured by tlbreplay capture on {facts.kernel}: {command}"
        write_sidecar(
            tmp[paths.sidecar],
            render_sidecar(facts, vm_list, numa_balancing=balancing, comment=comment),
        )
        vmstat_doc = {
            "before": before_vmstat,
            "after": after_vmstat,
            "delta": host.vmstat_delta(before_vmstat, after_vmstat),
            "samples_columns": ["ts_ns", *SAMPLED_COUNTERS],
            "samples": sampler.rows,
        }
        tmp[paths.vmstat].write_text(json.dumps(vmstat_doc, separators=(",", ":")) + "\n")
        meta = {
            "kernel": facts.kernel,
            "command": command,
            "pid": pid,
            "seconds": round(elapsed, 3),
            "interrupted": interrupted,
            "tracefs": str(root),
            "buffer_size_kb": buffer_kb,
            "events": enabled,
            "missing_events": missing,
            "filters": filters,
            "threads": {
                str(t): host.thread_comm(pid, t)
                for t in tids
                if Path(f"/proc/{pid}/task/{t}").exists()
            },
            # each thread's user stack pointer at the start (null: it never left the CPU
            # while we looked): the VMA holding it holds the thread's TLS and rseq area
            "thread_sp": thread_sp,
            # each thread's CPU seconds, involuntary switches and runtime at the start, over
            # the capture: a vCPU's CPU share and preemption rate (ADRs 0320, 0350)
            "thread_sched": host.sched_delta(sched_before, sched_after),
            "lost_events": reader.lost,
            "overruns": overruns,
            "lines": reader.lines,
            "host": {
                "preempt_source": facts.preempt_source,
                "knobs_source": facts.knobs_source,
                "mmu": facts.mmu,
            },
            "vmas_before": [v.as_dict() for v in before_vmas],
            "vmas_after": [v.as_dict() for v in after_vmas],
            "kvm_debugfs_before": before_kvm,
            "kvm_debugfs_after": after_kvm,
        }
        tmp[paths.meta].write_text(json.dumps(meta, separators=(",", ":")) + "\n")
        for final, partial in tmp.items():
            partial.replace(final)
    except BaseException:
        for partial in tmp.values():
            partial.unlink(missing_ok=True)
        raise
    return CaptureResult(
        paths, reader.lines, paths.trace.stat().st_size, reader.lost, overruns, interrupted, elapsed
    )


__all__ = [
    "CapturePaths",
    "CaptureResult",
    "capture",
    "detect_vm",
]
