"""Large-input ingest: a generated ftrace text file of ``TLBREPLAY_BENCH_LARGE_GB`` GB.

Off by default (it takes minutes): run ``python -m bench --large`` or set
``TLBREPLAY_BENCH_LARGE=1``. Generates the trace in ``$TMPDIR`` (default /tmp), runs
``tlbreplay ingest`` on it as a subprocess, samples the summed RSS of the whole process tree
(the ingest pool's workers included) every 100 ms, and deletes the trace and the DATASET
afterwards. Figures: MB/s, peak tree RSS, CPU use (user+sys / wall: 2.0 = both cores busy).

The trace is v6.5 tracefs text (the grammar of tests/data/ftrace/v6.5_tracefs.txt): mostly
EPT-violation exits (kvm_exit, kvm_page_fault, kvm_mmu_spte_requested, kvm_entry) on 8 vCPUs
of one VM, with a NUMA-balancing scan every ~10k lines (kvm_unmap_hva_range, tlb_flush,
ipi_send_cpumask). Deterministic for a given size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENV = "TLBREPLAY_BENCH_LARGE"
SIZE_ENV = "TLBREPLAY_BENCH_LARGE_GB"
HEADER = (
    "# tracer: nop\n#\n#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
    "#              | |         |   |||||     |         |\n"
)
LINES_PER_BLOCK = 40_000
RIP = "0xffffffff8100abcd"


def _block(rng: np.random.Generator, t0_us: int, n: int) -> tuple[str, int]:
    """``n`` fault cycles (4 lines each) plus scan events; returns text and the next time."""
    vcpu = rng.integers(0, 8, n)
    gfn = rng.integers(0, 1 << 21, n)  # 8 GiB of guest RAM
    ts = t0_us + np.arange(n, dtype=np.int64) * 4
    out: list[str] = []
    add = out.append
    for v, g, t in zip(vcpu.tolist(), gfn.tolist(), ts.tolist(), strict=True):
        comm = f"       CPU {v}/KVM-{4242 + v}"
        cpu = f"[{v % 2:03d}]"
        sec, us = divmod(t, 1_000_000)
        add(
            f"{comm}    {cpu} d..1. {sec:6d}.{us:06d}: kvm_exit: vcpu {v} reason EPT_VIOLATION "
            f"rip {RIP} info1 0x0000000000000181 info2 0x0000000000000000 intr_info 0x00000000 "
            "error_code 0x00000000\n"
        )
        add(
            f"{comm}    {cpu} ..... {sec:6d}.{us + 1:06d}: kvm_page_fault: vcpu {v} rip {RIP} "
            f"address 0x{g << 12:016x} error_code 0x182\n"
        )
        add(
            f"{comm}    {cpu} ..... {sec:6d}.{us + 2:06d}: kvm_mmu_spte_requested: gfn {g:x} "
            f"pfn {g + 0x200000:x} level 1\n"
        )
        add(f"{comm}    {cpu} d..1. {sec:6d}.{us + 3:06d}: kvm_entry: vcpu {v}, rip {RIP}\n")
    t_end = int(ts[-1]) + 4
    sec, us = divmod(t_end, 1_000_000)
    hva = 0x7F0000000000 + (int(rng.integers(0, 32)) << 28)
    qemu = " qemu-system-x86-4240    [001]"
    out.append(
        f"{qemu} ...1. {sec:6d}.{us:06d}: kvm_unmap_hva_range: mmu notifier unmap range: "
        f"0x{hva:014x} -- 0x{hva + (1 << 28):014x}\n"
        f"{qemu} d..1. {sec:6d}.{us + 1:06d}: tlb_flush: pages:-1 reason:remote ipi send (4)\n"
        f"{qemu} d..1. {sec:6d}.{us + 2:06d}: ipi_send_cpumask: cpumask=0-1 "
        "callsite=kvm_make_all_cpus_request_except+0x125/0x180 callback=ack_kick+0x0/0x20\n"
    )
    return "".join(out), t_end + 4


def make_trace(path: Path, size_bytes: int, seed: int = 6) -> int:
    """Write a v6.5 tracefs text trace of about ``size_bytes`` to ``path``; returns its size."""
    rng = np.random.default_rng(seed)
    t_us = 100_000_000
    written = 0
    with open(path, "w", encoding="ascii") as f:
        f.write(HEADER)
        while written < size_bytes:
            text, t_us = _block(rng, t_us, LINES_PER_BLOCK // 4)
            f.write(text)
            written += len(text)
    return path.stat().st_size


def tree_rss_bytes(pid: int) -> int:
    """Summed RSS of ``pid`` and all its descendants (from /proc), 0 once it is gone."""
    return sum(tree_rss(pid).values())


def tree_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of ``pid`` and each of its descendants (from /proc), by pid."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(entry.name)
        children.setdefault(int(fields[1]), []).append(p)
        rss[p] = int(fields[21]) * page
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in rss:
            found[p] = rss[p]
        todo.extend(children.get(p, []))
    return found


def print_rss_timeline(samples: list[tuple[float, int]], wall: float, buckets: int = 10) -> None:
    """The peak tree RSS in each tenth of the run (where the memory goes, phase by phase)."""
    for i in range(buckets):
        lo, hi = wall * i / buckets, wall * (i + 1) / buckets
        peak = max((r for t, r in samples if lo <= t < hi), default=0)
        print(f"  {lo:6.0f}-{hi:6.0f} s: peak RSS of the process tree {peak / 2**20:7.0f} MiB")


def run_measured(cmd: list[str], interval_s: float = 0.1) -> dict[str, float]:
    """Run ``cmd``; wall seconds, CPU seconds (user+sys of the tree) and peak tree RSS."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        samples.append((time.perf_counter() - start, tree_rss_bytes(proc.pid)))
        time.sleep(interval_s)
    wall = time.perf_counter() - start
    peak = max((r for _, r in samples), default=0)
    print_rss_timeline(samples, wall)
    after = os.times()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        msg = f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}"
        raise RuntimeError(msg)
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_bytes": float(peak)}


def main() -> dict[str, float] | None:
    if os.environ.get(ENV) != "1":
        print(f"skipped: set {ENV}=1 or run `python -m bench --large` (takes minutes)")
        return None
    size_gb = float(os.environ.get(SIZE_ENV, "10"))
    tmp = Path(tempfile.mkdtemp(prefix="tlbreplay-large-"))
    try:
        trace = tmp / "large.trace"
        t0 = time.perf_counter()
        size = make_trace(trace, int(size_gb * 1e9))
        print(f"generated {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s: {trace}")
        exe = str(Path(sys.executable).with_name("tlbreplay"))
        fig = run_measured([exe, "ingest", str(trace), "--out", str(tmp / "ds"), "--quiet"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb_s = size / 1e6 / fig["wall_s"]
    out = {
        "large ingest input (GB)": size / 1e9,
        "large ingest (MB/s)": mb_s,
        "large ingest wall (s)": fig["wall_s"],
        "large ingest peak RSS, process tree (MiB)": fig["peak_rss_bytes"] / 2**20,
        "large ingest CPU use (cores)": fig["cpu_s"] / fig["wall_s"],
    }
    for k, v in out.items():
        print(f"{k:<45} {v:10.2f}")
    return out


if __name__ == "__main__":
    main()
