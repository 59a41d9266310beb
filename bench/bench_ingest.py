"""Ingest throughput and peak memory on a >= 1 GB mixed-event ftrace text (`make bench`).

Generates, deterministically (seeded), a tracefs-format trace of the events ingest types
(kvm_exit, kvm_entry, kvm_mmu_spte_requested, kvm_mmu_set_spte, kvm_unmap_hva_range,
kvm_page_fault, tlb_flush, ipi_send_cpumask, sched_move_numa, mm_migrate_pages and an unknown
event) under a temporary directory, then prints, from the same run:

* `tlbreplay ingest` MB/s, CPU-seconds, the parser used (``c``: the compiled scanner in a
  thread pool; ``polars``: the fallback, in a process pool) and peak RSS (VmHWM of the main
  process plus the largest pool worker times the number of workers: a bound on the sum),
* polars reading the same file as one string column (the parse limit),
* a straightforward Python `re` loop (header regex + payload split) over the first
  ``TLBREPLAY_BENCH_RE_MB`` MB (default 256), and the ratios.

Size: ``TLBREPLAY_BENCH_INGEST_MB`` (default 1100). ``TLBREPLAY_INGEST_PARSER=polars`` measures
the fallback path. The load average is printed with each figure: the machine may be shared.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZE_MB = int(os.environ.get("TLBREPLAY_BENCH_INGEST_MB", "1100"))
RE_MB = int(os.environ.get("TLBREPLAY_BENCH_RE_MB", "256"))
BLOCK_LINES = 200_000
SEED = 20230810

COMMS = ["CPU 0/KVM", "CPU 1/KVM", "CPU 2/KVM", "CPU 3/KVM", "qemu-system-x86", "kworker/1:2"]


def make_block(rng: random.Random, t0: float) -> tuple[str, float]:
    """BLOCK_LINES lines of mixed events from time t0; returns the text and the end time."""
    out = []
    ts = t0
    for _ in range(BLOCK_LINES):
        vcpu = rng.randrange(4)
        comm = COMMS[vcpu] if rng.random() < 0.85 else rng.choice(COMMS[4:])
        pid = 4242 + vcpu
        cpu = rng.randrange(2)
        ts += rng.randrange(1, 40) * 1e-6
        k = rng.random()
        gfn = rng.randrange(1 << 18)
        if k < 0.25:
            ev = "kvm_exit"
            body = (
                f"vcpu {vcpu} reason EPT_VIOLATION rip 0xffffffff8{rng.randrange(1 << 28):07x} "
                f"info1 0x{rng.choice((0x181, 0x182, 0x184)):016x} info2 0x0000000000000000 "
                "intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000"
            )
        elif k < 0.45:
            ev = "kvm_entry"
            body = (
                f"vcpu {vcpu}, rip 0xffffffff8{rng.randrange(1 << 28):07x} "
                "intr_info 0x00000000 error_code 0x00000000"
            )
        elif k < 0.62:
            ev = "kvm_mmu_spte_requested"
            body = f"gfn {gfn:x} pfn {rng.randrange(1 << 24):x} level 1"
        elif k < 0.75:
            ev = "kvm_mmu_set_spte"
            spte, sptep = rng.randrange(1 << 52), rng.randrange(1 << 47)
            body = f"gfn {gfn:x} spte {spte:x} (rwxu) level 1 at {sptep:x}"
        elif k < 0.80:
            ev = "kvm_page_fault"
            body = (
                f"vcpu {vcpu} rip 0xffffffff8{rng.randrange(1 << 28):07x} "
                f"address 0x{gfn << 12:016x} error_code 0x{rng.choice((0x181, 0x182)):x}"
            )
        elif k < 0.84:
            ev = "kvm_unmap_hva_range"
            a = 0x7F0000000000 + (rng.randrange(1 << 10) << 21)
            body = f"mmu notifier unmap range: {a:#016x} -- {a + (1 << 21):#016x}"
        elif k < 0.90:
            ev = "tlb_flush"
            body = f"pages:{rng.choice((-1, 1, 2, 512))} reason:remote shootdown (1)"
        elif k < 0.94:
            ev = "ipi_send_cpumask"
            body = (
                "cpumask=0-1 callsite=kvm_make_all_cpus_request_except+0x125/0x180 "
                "callback=ack_kick+0x0/0x20"
            )
        elif k < 0.96:
            ev = "sched_move_numa"
            body = (
                f"pid={pid} tgid=4240 ngid=4240 src_cpu={cpu} src_nid=0 dst_cpu={1 - cpu} dst_nid=1"
            )
        elif k < 0.98:
            ev = "mm_migrate_pages"
            body = (
                "nr_succeeded=0 nr_failed=1 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 "
                "nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced"
            )
        else:
            ev = "sched_switch"
            body = (
                f"prev_comm={comm} prev_pid={pid} prev_prio=120 prev_state=S ==> "
                f"next_comm=swapper/{cpu} next_pid=0 next_prio=120"
            )
        out.append(f"{comm:>16}-{pid:<7} [{cpu:03d}] d..2. {ts:12.6f}: {ev}: {body}\n")
    return "".join(out), ts


def generate(path: Path, size_mb: int) -> int:
    """Write blocks until the file holds >= size_mb MB; deterministic for a given size."""
    rng = random.Random(SEED)
    written = 0
    ts = 1000.0
    blocks: list[bytes] = []
    with path.open("wb") as f:
        f.write(b"# tracer: nop\n#\n")
        while written < size_mb * 1_000_000:
            if len(blocks) < 8:
                text, ts = make_block(rng, ts)
                blocks.append(text.encode())
            block = blocks[len(blocks) - 1] if len(blocks) < 8 else blocks[rng.randrange(8)]
            f.write(block)
            written += len(block)
    return path.stat().st_size


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.ingest.runner import run_ingest
from pipeline.ingest import reader
if __name__ == "__main__":
    t = time.perf_counter()
    m = run_ingest([sys.argv[1]], Path(sys.argv[2]))
    wall = time.perf_counter() - t
    hwm = 0
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    print(json.dumps({"wall": wall, "cpu": cpu, "hwm": hwm,
                      "cpu_workers": kids.ru_utime + kids.ru_stime,
                      "children_maxrss": kids.ru_maxrss * 1024, "parsed": m["parsed"],
                      "lines": m["lines_total"], "quarantined": m["quarantined"],
                      "parser": m["sources"][0]["parser"], "workers": reader.WORKERS}))
"""

POLARS_CHILD = r"""
import json, sys, time
import polars as pl
t = time.perf_counter()
df = pl.read_csv(sys.argv[1], has_header=False, separator="\x1f", quote_char=None,
                 new_columns=["line"], schema_overrides={"line": pl.String})
print(json.dumps({"wall": time.perf_counter() - t, "rows": df.height}))
"""

HEADER_RE = re.compile(
    r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+(?:(\S+)\s+)?(\d+)\.(\d+): ([^\s:]+):\s*(.*)$"
)


def re_loop(path: Path, limit: int) -> tuple[float, int]:
    """A straightforward Python loop: header regex + payload split per line."""
    n = 0
    read = 0
    t = time.perf_counter()
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            read += len(line)
            m = HEADER_RE.match(line)
            if m:
                m.group(8).split(" ")
                n += 1
            if read >= limit:
                break
    return time.perf_counter() - t, read


def loadavg() -> str:
    """The 1-minute load average (the machine may be shared: wall figures depend on it)."""
    return Path("/proc/loadavg").read_text().split()[0]


def run_child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> dict[str, float]:
    """Generate the trace, run the three readers, print the figures; returns the headline ones."""
    with tempfile.TemporaryDirectory(prefix="tlbreplay-bench-ingest-") as tmp:
        src = Path(tmp) / "trace.txt"
        t = time.perf_counter()
        size = generate(src, SIZE_MB)
        mb = size / 1e6
        print(
            f"input: {mb:.0f} MB mixed-event tracefs text, generated in "
            f"{time.perf_counter() - t:.1f} s (seed {SEED})"
        )
        load = loadavg()
        ing = run_child(CHILD, str(src), str(Path(tmp) / "ds"))
        ingest_mbs = mb / ing["wall"]
        workers = int(ing["workers"]) if ing["cpu_workers"] else 0
        print(
            f"tlbreplay ingest : {ing['wall']:.2f} s  {ingest_mbs:.0f} MB/s  "
            f"{ing['parsed'] / ing['wall'] / 1e6:.2f} M lines/s  "
            f"({int(ing['lines'])} lines, {int(ing['quarantined'])} quarantined; "
            f"parser {ing['parser']}; load average {load} -> {loadavg()})"
        )
        print(
            f"cpu time         : {ing['cpu']:.1f} s (of which pool processes "
            f"{ing['cpu_workers']:.1f} s): {mb / ing['cpu']:.0f} MB per CPU-second, "
            f"{ing['cpu'] / mb * 1000:.1f} CPU-ms per MB"
        )
        rss_total = ing["hwm"] + workers * ing["children_maxrss"]
        print(
            f"peak RSS         : main {ing['hwm'] / 2**20:.0f} MiB (its threads included), "
            f"{workers} pool processes <= {ing['children_maxrss'] / 2**20:.0f} MiB each; "
            f"all processes <= {rss_total / 2**20:.0f} MiB"
        )
        load = loadavg()
        pol = run_child(POLARS_CHILD, str(src))
        pol_mbs = mb / pol["wall"]
        print(
            f"polars read_csv  : {pol['wall']:.2f} s  {pol_mbs:.0f} MB/s (one string column:"
            f" the parse limit; load average {load})"
        )
        load = loadavg()
        re_s, re_bytes = re_loop(src, RE_MB * 1_000_000)
        re_mbs = re_bytes / 1e6 / re_s
        print(
            f"python re loop   : {re_mbs:.0f} MB/s (first {re_bytes / 1e6:.0f} MB; "
            f"load average {load})"
        )
        print(
            f"ratios           : ingest/polars-read {ingest_mbs / pol_mbs:.2f}, "
            f"ingest/re-loop {ingest_mbs / re_mbs:.1f}x, PEERS D.2 split-first 161 MB/s -> "
            f"{ingest_mbs / 161:.2f}x"
        )
    return {
        "ingest input (MB)": round(mb),
        "ingest (MB/s)": round(ingest_mbs, 1),
        "ingest (MB per CPU-s)": round(mb / ing["cpu"], 1),
        "ingest peak RSS main (MiB)": round(ing["hwm"] / 2**20),
        "ingest peak RSS worker (MiB)": round(ing["children_maxrss"] / 2**20),
        "ingest peak RSS all processes (MiB)": round(rss_total / 2**20),
        "polars one-column read / ingest": round(pol_mbs / ingest_mbs, 2),
        "ingest / python re loop": round(ingest_mbs / re_mbs, 2),
        "polars one-column read (MB/s)": round(pol_mbs, 1),
        "python re loop (MB/s)": round(re_mbs, 1),
    }


if __name__ == "__main__":
    main()
