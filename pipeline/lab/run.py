"""``tlbreplay lab run``: run the tiny KVM guest under NUMA balancing and capture it.

This process is the VMM (guest RAM, vCPU threads named ``CPU n/KVM`` like QEMU's). The capture
runs as a separate ``tlbreplay capture --pid <this pid>`` process, so its own reads and
allocations are not part of the traced mm. Sequence: the guest faults in all its RAM first
(every vCPU completes ``WARMUP_PASSES`` sweeps), the capture starts tracing, then
``kernel.numa_balancing`` is switched on for ``seconds`` and put back, then the capture is
stopped with SIGINT. numa_balancing is restored in a ``finally`` too, and the capture child
restores tracefs on its own exit paths, so an error or Ctrl-C never leaves either on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import MissingFacilityError, TlbReplayError
from pipeline.lab import host, tracefs
from pipeline.lab.capture import READY_MESSAGE, CapturePaths, interrupt_signals, recompress
from pipeline.lab.guest import PAGE_4K, Guest
from pipeline.lab.memory import default_mempolicy
from pipeline.lab.pin import LongTermPin
from pipeline.lab.sidecar import RegionSpec, VmSpec, render_sidecar, write_sidecar
from pipeline.lab.vmmshape import VMAS_PER_THREAD, VmmShape
from pipeline.lab.zapprobe import kvm_zap_ns_per_spte
from pipeline.model.hosting import share_and_preempt_rate

WARMUP_PASSES = 2
WARMUP_TIMEOUT_S = 60.0
CAPTURE_START_TIMEOUT_S = 60.0
CAPTURE_MARGIN_S = 120.0
KVM_STATS = (
    "remote_tlb_flush",
    "remote_tlb_flush_requests",
    "mmu_shadow_zapped",
    "mmu_cache_miss",
    "pages_4k",
    "pages_2m",
    "pf_taken",
    "pf_fixed",
    "pf_spurious",
    "pf_guest",
    "exits",
    "insn_emulation",
    "tlb_flush",
    "invlpg",
    "mmu_flooded",
    "mmu_recycled",
)


class LabError(TlbReplayError):
    """The lab guest or its capture failed."""


@dataclass(frozen=True)
class LabConfig:
    mem_mib: int = 1024
    vcpus: int = 2
    backing: str = "anon"  # anon | shared
    thp: bool = False
    pin: bool = False
    pattern: str = "split"
    seconds: float = 10.0
    numa_balancing: int = 1
    buffer_kb: int = 16384
    busy_loops: int = 0  # CPU-bound competitors for the whole cell (a loaded host)
    mempolicy: str = ""  # enums.mempolicy; "": memory.default_mempolicy(backing)
    # when numa_balancing goes on: after the guest has populated its RAM, or before the guest
    # (its RAM, memslots, vCPU threads) exists, so it faults its RAM in under the scanner
    nb_from: str = "after-population"
    vmm_threads: int = 0  # helper threads of the VMM (vmmshape.VmmShape)
    vmm_vmas: int = -1  # extra VMAs of the VMM; -1: VMAS_PER_THREAD per helper thread

    @property
    def name(self) -> str:
        """``lab-<backing>-<4k|thp>-<pin|nopin>-nb<N>``, then what differs from the first
        matrix: ``-<MiB>m-<vcpus>v-<seconds>s``, ``-<policy>``, ``-early``, ``-t<threads>``."""
        base = (
            f"lab-{self.backing}-{'thp' if self.thp else '4k'}-{'pin' if self.pin else 'nopin'}"
            f"-nb{self.numa_balancing}"
        )
        if self.mempolicy and self.mempolicy != default_mempolicy(self.backing):
            base += "-" + self.mempolicy.replace("+numa_balancing", "-nb")
        if self.nb_from != "after-population":
            base += "-early"
        if self.vmm_threads:
            base += f"-t{self.vmm_threads}"
        return base

    @property
    def extra_vmas(self) -> int:
        return self.vmm_threads * VMAS_PER_THREAD if self.vmm_vmas < 0 else self.vmm_vmas

    @property
    def regime_name(self) -> str:
        """:attr:`name` with the size, vCPUs and window (the regime sweep's cells)."""
        return f"{self.name}-{self.mem_mib}m-{self.vcpus}v-{self.seconds:g}s"


def set_numa_balancing(value: int) -> None:
    host.NUMA_BALANCING.write_text(f"{value}\n")


def get_numa_balancing() -> int:
    return int(host.NUMA_BALANCING.read_text())


def _marker(root: Path, text: str) -> None:
    with (root / "trace_marker").open("w") as f:
        f.write(f"tlbreplay lab: {text}\n")


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in KVM_STATS if k in after}


def _start_capture(config: LabConfig, out: Path) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "pipeline.lab.commands",
        "capture",
        "--pid",
        str(os.getpid()),
        "--seconds",
        str(config.seconds + CAPTURE_MARGIN_S),
        "--out",
        str(out),
        "--buffer-kb",
        str(config.buffer_kb),
        "--vm-name",
        "lab",
    ]
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
    assert child.stderr is not None
    deadline = time.monotonic() + CAPTURE_START_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = child.stderr.readline()
        if not line:
            break
        if READY_MESSAGE in line:
            return child
        seen.append(line.strip())
    child.kill()
    child.wait()
    msg = "the capture did not start: " + (" | ".join(seen) or f"exit code {child.returncode}")
    raise LabError(msg)


def _stop_capture(child: subprocess.Popen[str]) -> str:
    """SIGINT (stop early, keep the data), then wait; returns the child's remaining stderr."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
    try:
        _, err = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        child.terminate()
        _, err = child.communicate()
    return err or ""


SHMEM_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")


@contextmanager
def shmem_thp(wanted: bool) -> Iterator[None]:
    """Let MADV_HUGEPAGE give THPs to shmem (memfd) for the run: ``shmem_enabled`` must be
    ``advise`` or ``always`` (mm/shmem.c:shmem_huge_global_enabled()); restored afterwards."""
    text = SHMEM_ENABLED.read_text() if SHMEM_ENABLED.exists() else ""
    current = text.split("[")[1].split("]")[0] if "[" in text else ""
    if not wanted or current in ("advise", "always", "within_size", "force", ""):
        yield
        return
    SHMEM_ENABLED.write_text("advise")
    try:
        yield
    finally:
        SHMEM_ENABLED.write_text(current)


def run_lab(config: LabConfig, out: Path) -> dict[str, Any]:
    """Run one lab cell and capture it into ``out`` (a ``.trace.zst`` path); returns [lab]."""
    tracefs.require_root("tlbreplay lab run")
    if not Path("/dev/kvm").exists():
        msg = "/dev/kvm is missing: the lab needs a host with KVM"
        raise MissingFacilityError(msg)
    root = tracefs.find_tracefs()
    old_balancing = get_numa_balancing()
    with (
        interrupt_signals(),
        shmem_thp(config.thp and config.backing == "shared"),
        busy_loops(config.busy_loops),
    ):
        return _run(config, out, root, old_balancing)


@contextmanager
def busy_loops(n: int) -> Iterator[None]:
    """``n`` CPU-bound processes (``python -c 'while True: pass'``) for the duration: the
    loaded host of `traces/real/loaded/` (4 on 2 CPUs: a vCPU share of ~0.33). They are
    always killed, also on error or a signal."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(max(0, n))
    ]
    try:
        yield
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


def _run(config: LabConfig, out: Path, root: Path, old_balancing: int) -> dict[str, Any]:
    guest: Guest | None = None
    pin: LongTermPin | None = None
    child: subprocess.Popen[str] | None = None
    shape = VmmShape(config.vmm_threads, config.extra_vmas)
    early = config.nb_from == "before-guest"
    try:
        shape.start()
        guest = Guest(
            config.mem_mib << 20,
            config.vcpus,
            config.backing,
            config.thp,
            config.pattern,
            mempolicy=config.mempolicy or None,
        )
        if config.pin:
            pin = LongTermPin(guest.ram.hva, guest.ram.size_bytes)
        # early: the vCPU threads exist (the capture filters on their tids) but wait at the
        # gate until numa_balancing is on, so the guest faults its RAM in while the scanner
        # runs (the window includes the population, ADR 0510)
        gate = threading.Event()
        if not early:
            gate.set()
        tids = guest.start(gate)
        if not early:
            _warm_up(guest)
        vm = VmSpec("lab", config.vcpus, tids, os.getpid(), [
            RegionSpec("ram", guest.ram.size_bytes, 0, guest.ram.hva, config.backing, config.thp,
                       "all" if config.pin else "none", guest.ram.mempolicy),
        ])  # fmt: skip
        child = _start_capture(config, out)
        passes0, vm0, vcpu0 = guest.passes(), guest.stats(), guest.vcpu_stats()
        sched0 = [_sched(os.getpid(), t) for t in tids]
        # every other thread of this VMM (main loop, helpers) ticks task_tick_numa() too:
        # its runtime and CPU time over the window alone (ADR 0363)
        others = [t for t in _thread_ids(os.getpid()) if t not in tids]
        others0 = {t: host.thread_sched(os.getpid(), t) for t in others}
        t0 = time.monotonic()
        _marker(root, f"numa_balancing={config.numa_balancing}")
        set_numa_balancing(config.numa_balancing)
        gate.set()
        while time.monotonic() < t0 + config.seconds:
            if guest.failed() or child.poll() is not None:
                break
            time.sleep(0.05)
        set_numa_balancing(old_balancing)
        window_s = time.monotonic() - t0
        _marker(root, f"numa_balancing={old_balancing}")
        passes = [b - a for a, b in zip(passes0, guest.passes(), strict=True)]
        sched1 = [_sched(os.getpid(), t) for t in tids]
        others1 = {t: host.thread_sched(os.getpid(), t) for t in others}
        other_delta = host.sched_delta(others0, others1)
        deltas = host.sched_delta(
            dict(zip(tids, sched0, strict=True)), dict(zip(tids, sched1, strict=True))
        )
        share_rate = [share_and_preempt_rate(deltas[str(t)], window_s) for t in tids]
        lab: dict[str, Any] = {
            "pattern": config.pattern,
            "stride_bytes": PAGE_4K,
            "touch_start_gpa": [r[0] for r in guest.ranges],
            "touch_end_gpa": [r[1] for r in guest.ranges],
            "pinned": config.pin,
            "window_s": round(window_s, 3),
            "passes": passes,
            "passes_per_s": [round(p / window_s, 3) for p in passes],
            "thp_mapped_kb": _thp_kb(guest.ram.hva),
            "guest_page_bytes": 2 << 20,
            "vcpu_cpu_share": [share for share, _ in share_rate],
            # se.sum_exec_runtime when numa_balancing went on: task_tick_numa() compares it
            # with node_stamp + period, so it sets when the first scan comes (ADR 0320)
            "vcpu_runtime_start_ms": [round(a.runtime_ns / 1e6, 1) for a in sched0],
            "host_cpus": os.cpu_count() or 1,
            "busy_loops": config.busy_loops,
            # pthread_self() of each vCPU thread: glibc's TCB, which holds the thread's rseq
            # area, at the top of the thread's stack mapping (ADR 0350)
            "vcpu_pthread_hva": guest.pthread_addresses(),
            # involuntary context switches per second of vCPU CPU time: how often another
            # task set need_resched() on the vCPU's CPU, which is what makes a zap walk yield
            # with a flush (ReschedModel, ADR 0350)
            "vcpu_preempt_per_s": [rate for _, rate in share_rate],
            # the regime (issue 11): when numa_balancing went on, and the VMM's shape
            "numa_balancing_from": config.nb_from,
            "ram_populated": "in_capture" if early else "before_capture",
            "vmm_threads": config.vmm_threads,
            "vmm_extra_vmas": config.extra_vmas,
            "mempolicy": guest.ram.mempolicy,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            # the VMM's other threads over the window: tid, CPU seconds, runtime at the start
            "thread_tids": [int(t) for t in other_delta],
            "thread_cpu_s": [d["cpu_s"] for d in other_delta.values()],
            "thread_runtime_start_ms": [d["runtime_start_ms"] for d in other_delta.values()],
        }
        kvm_delta = {"vm": _delta(guest.stats(), vm0), "vcpu": _delta(guest.vcpu_stats(), vcpu0)}
        err = _stop_capture(child)
        child_rc, child = child.returncode, None
        failures = guest.failed()
        guest.stop()
        zap_ns = kvm_zap_ns_per_spte(guest)  # the vCPUs are stopped, the trace is closed
        if zap_ns is not None:
            lab["kvm_zap_ns_per_spte"] = round(zap_ns, 2)
    finally:
        set_numa_balancing(old_balancing)
        if child is not None:
            _stop_capture(child)
        if guest is not None:
            guest.stop()
        if pin is not None:
            pin.close()
        if guest is not None:
            guest.close()
        shape.close()
    # The guest is gone: recompressing the trace does not compete with its vCPU threads.
    if failures:
        raise LabError("; ".join(failures))
    if child_rc != 0:
        msg = f"the capture failed (exit code {child_rc}): {err.strip()}"
        raise LabError(msg)
    _finish_files(CapturePaths.for_output(out), config, vm, lab, kvm_delta)
    return lab


def _finish_files(
    paths: CapturePaths,
    config: LabConfig,
    vm: VmSpec,
    lab: dict[str, Any],
    kvm_delta: dict[str, dict[str, int]],
) -> None:
    """Recompress the trace; rewrite the sidecar with the exact layout + [lab]; add lab facts
    to capture.json."""
    recompress(paths.trace)
    meta = json.loads(paths.meta.read_text())
    comment = f"captured by tlbreplay lab run on {os.uname().release}: {meta['command']}"
    text = render_sidecar(
        host.host_facts(), [vm], numa_balancing=config.numa_balancing, lab=lab, comment=comment
    )
    write_sidecar(paths.sidecar, text)
    meta["lab"] = dict(lab, config=config.__dict__, kvm_stats_delta=kvm_delta)
    tmp = paths.meta.with_name(paths.meta.name + ".tmp")
    tmp.write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    tmp.replace(paths.meta)


def _thread_ids(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (/proc/PID/task), ascending."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except OSError:
        return []


def _sched(pid: int, tid: int) -> host.ThreadSched:
    sched = host.thread_sched(pid, tid)
    if sched is None:
        msg = f"cannot read the scheduling counters of vCPU thread {tid}"
        raise LabError(msg)
    return sched


def _thp_kb(hva: int) -> int:
    """kB of the guest RAM VMA mapped by PMDs (AnonHugePages / ShmemPmdMapped in smaps)."""
    for vma in host.read_smaps(os.getpid()):
        if vma.start == hva:
            return vma.smaps.get("AnonHugePages", 0) + vma.smaps.get("ShmemPmdMapped", 0)
    return 0


def _warm_up(guest: Guest) -> None:
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    while min(guest.passes()) < WARMUP_PASSES:
        failures = guest.failed()
        if failures:
            raise LabError("; ".join(failures))
        if time.monotonic() > deadline:
            msg = f"the guest did not complete {WARMUP_PASSES} sweeps in {WARMUP_TIMEOUT_S:g} s"
            raise LabError(msg)
        time.sleep(0.01)
