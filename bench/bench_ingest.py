"""Ingest on real shapes (`make bench`): whole-process MB/s, lines/s, tree RSS, CPU per MB.

Two inputs, each ingested by the `tlbreplay ingest` CLI in a child process whose process tree
is sampled from /proc every 100 ms (peak RSS of the tree, CPU seconds of the tree):

* ``real``: the committed captures (traces/real/*.trace.zst) decompressed and concatenated,
  round after round, to >= ``TLBREPLAY_BENCH_INGEST_MB`` MB (default 1000). The rounds repeat
  timestamps, so the fault rows are out of time order: derive takes its spill path;
* ``generated``: the seeded generator, its event mix weighted by the real captures' event
  counts (110-byte lines, ~42% kvm_mmu_spte_requested, ~54% kvm_mmu_set_spte, ...).

For each, in the same run: polars reading the file as one string column (the parse limit) and
a plain Python `re` loop (header regex + payload split) over the first ``TLBREPLAY_BENCH_RE_MB``
MB (default 256), and the ratios. ``TLBREPLAY_INGEST_PARSER=polars`` measures the fallback.
The load average is printed with each figure: the machine may be shared.
"""

from __future__ import annotations

import bisect
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

SIZE_MB = int(os.environ.get("TLBREPLAY_BENCH_INGEST_MB", "1000"))
RE_MB = int(os.environ.get("TLBREPLAY_BENCH_RE_MB", "256"))
BLOCK_LINES = 200_000
SEED = 20230810

COMMS = ["CPU 0/KVM", "CPU 1/KVM", "CPU 2/KVM", "CPU 3/KVM", "qemu-system-x86", "kworker/1:2"]


#: Event kinds of the generator, in the order of its branches below.
KINDS = (
    "kvm_exit",
    "kvm_entry",
    "kvm_mmu_spte_requested",
    "kvm_mmu_set_spte",
    "kvm_page_fault",
    "kvm_unmap_hva_range",
    "tlb_flush",
    "ipi_send_cpumask",
    "sched_move_numa",
    "mm_migrate_pages",
    "sched_skip_vma_numa",
    "page_fault_user",
    "sched_switch",
)
REAL = Path(__file__).resolve().parent.parent / "traces" / "real"
_EVENT = re.compile(rb"\]\s+\S*\s*\d+\.\d+: ([a-z_]+):")


def real_captures() -> list[Path]:
    return sorted(REAL.glob("*.trace.zst"))


def real_event_counts() -> dict[str, int]:
    """Lines per event name over the committed captures."""
    import zstandard

    counts: dict[str, int] = {}
    for path in real_captures():
        with zstandard.open(path, "rb") as f:
            for name in _EVENT.findall(f.read()):
                key = name.decode()
                counts[key] = counts.get(key, 0) + 1
    return counts


def real_weights() -> list[float]:
    """Cumulative weights of KINDS from the real captures (kinds they lack get none)."""
    counts = real_event_counts()
    weights = [float(counts.get(k, 0)) for k in KINDS]
    if not sum(weights):  # no captures: the old mixed shape
        weights = [25, 20, 17, 13, 5, 4, 6, 4, 2, 2, 0, 0, 2]
    total, acc, out = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    return out


def make_block(rng: random.Random, t0: float, cumulative: list[float]) -> tuple[str, float]:
    """BLOCK_LINES lines of events drawn with ``cumulative`` weights of KINDS from time t0;
    returns the text and the end time."""
    out = []
    ts = t0
    for _ in range(BLOCK_LINES):
        vcpu = rng.randrange(4)
        comm = COMMS[vcpu] if rng.random() < 0.85 else rng.choice(COMMS[4:])
        pid = 4242 + vcpu
        cpu = rng.randrange(2)
        ts += rng.randrange(1, 40) * 1e-6
        kind = KINDS[min(bisect.bisect_right(cumulative, rng.random()), len(KINDS) - 1)]
        gfn = rng.randrange(1 << 18)
        if kind == "kvm_exit":
            ev = "kvm_exit"
            body = (
                f"vcpu {vcpu} reason EPT_VIOLATION rip 0xffffffff8{rng.randrange(1 << 28):07x} "
                f"info1 0x{rng.choice((0x181, 0x182, 0x184)):016x} info2 0x0000000000000000 "
                "intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000"
            )
        elif kind == "kvm_entry":
            ev = "kvm_entry"
            body = (
                f"vcpu {vcpu}, rip 0xffffffff8{rng.randrange(1 << 28):07x} "
                "intr_info 0x00000000 error_code 0x00000000"
            )
        elif kind == "kvm_mmu_spte_requested":
            ev = "kvm_mmu_spte_requested"
            body = f"gfn {gfn:x} pfn {rng.randrange(1 << 24):x} level 1"
        elif kind == "kvm_mmu_set_spte":
            ev = "kvm_mmu_set_spte"
            spte, sptep = rng.randrange(1 << 52), rng.randrange(1 << 47)
            body = f"gfn {gfn:x} spte {spte:x} (rwxu) level 1 at {sptep:x}"
        elif kind == "kvm_page_fault":
            ev = "kvm_page_fault"
            body = (
                f"vcpu {vcpu} rip 0xffffffff8{rng.randrange(1 << 28):07x} "
                f"address 0x{gfn << 12:016x} error_code 0x{rng.choice((0x181, 0x182)):x}"
            )
        elif kind == "kvm_unmap_hva_range":
            ev = "kvm_unmap_hva_range"
            a = 0x7F0000000000 + (rng.randrange(1 << 10) << 21)
            body = f"mmu notifier unmap range: {a:#016x} -- {a + (1 << 21):#016x}"
        elif kind == "tlb_flush":
            ev = "tlb_flush"
            body = f"pages:{rng.choice((-1, 1, 2, 512))} reason:remote shootdown (1)"
        elif kind == "ipi_send_cpumask":
            ev = "ipi_send_cpumask"
            body = (
                "cpumask=0-1 callsite=kvm_make_all_cpus_request_except+0x125/0x180 "
                "callback=ack_kick+0x0/0x20"
            )
        elif kind == "sched_move_numa":
            ev = "sched_move_numa"
            body = (
                f"pid={pid} tgid=4240 ngid=4240 src_cpu={cpu} src_nid=0 dst_cpu={1 - cpu} dst_nid=1"
            )
        elif kind == "mm_migrate_pages":
            ev = "mm_migrate_pages"
            body = (
                "nr_succeeded=0 nr_failed=1 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 "
                "nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced"
            )
        elif kind == "sched_skip_vma_numa":
            ev = "sched_skip_vma_numa"
            start = 0x55BFFD2E8000 + (rng.randrange(1 << 12) << 12)
            body = f"numa_scan_offset=0 vm_start={start:X} vm_end={start + 4096:X} reason=shared_ro"
        elif kind == "page_fault_user":
            ev = "page_fault_user"
            body = (
                f"address=0x7f5a{rng.randrange(1 << 32):08x} ip=0x7f5aecdaf8bb "
                f"error_code=0x{rng.choice((4, 6, 7)):x}"
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
    """Write blocks until the file holds >= size_mb MB; deterministic for a given size and
    set of captures (the mix is weighted by their event counts)."""
    cumulative = real_weights()
    rng = random.Random(SEED)
    written = 0
    ts = 1000.0
    blocks: list[bytes] = []
    with path.open("wb") as f:
        f.write(b"# tracer: nop\n#\n")
        while written < size_mb * 1_000_000:
            if len(blocks) < 8:
                text, ts = make_block(rng, ts, cumulative)
                blocks.append(text.encode())
            block = blocks[len(blocks) - 1] if len(blocks) < 8 else blocks[rng.randrange(8)]
            f.write(block)
            written += len(block)
    return path.stat().st_size


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


def concat_real(path: Path, size_mb: int) -> int:
    """The committed captures decompressed and concatenated, round after round, to >= size_mb."""
    import zstandard

    written = 0
    with path.open("wb") as out:
        while written < size_mb * 1_000_000:
            for capture in real_captures():
                with zstandard.open(capture, "rb") as f:
                    data = f.read()
                out.write(data)
                written += len(data)
    return path.stat().st_size


def measure(label: str, src: Path, tmp: Path) -> dict[str, float]:
    """Whole-process `tlbreplay ingest` of ``src`` beside polars and a `re` loop."""
    from bench.bench_ingest_large import run_measured

    mb = src.stat().st_size / 1e6
    out = tmp / f"ds-{label}"
    load_ingest = load = loadavg()
    exe = str(Path(sys.executable).with_name("tlbreplay"))
    ing = run_measured([exe, "ingest", str(src), "--out", str(out), "--quiet"])
    manifest = json.loads((out / "manifest.json").read_text())
    lines, parser = manifest["lines_total"], manifest["sources"][0]["parser"]
    ingest_mbs = mb / ing["wall_s"]
    print(
        f"[{label}] tlbreplay ingest: {ing['wall_s']:.2f} s  {ingest_mbs:.0f} MB/s  "
        f"{lines / ing['wall_s'] / 1e6:.2f} M lines/s ({lines} lines, parser {parser}); "
        f"{ing['cpu_s']:.1f} CPU-s = {ing['cpu_s'] / mb * 1000:.1f} CPU-ms per MB; peak RSS of "
        f"the process tree {ing['peak_rss_bytes'] / 2**20:.0f} MiB (load average {load} -> "
        f"{loadavg()})"
    )
    load = loadavg()
    pol = run_child(POLARS_CHILD, str(src))
    pol_mbs = mb / pol["wall"]
    load_re = loadavg()
    re_s, re_bytes = re_loop(src, RE_MB * 1_000_000)
    re_mbs = re_bytes / 1e6 / re_s
    print(
        f"[{label}] polars one-column read {pol_mbs:.0f} MB/s (load {load}); python re loop "
        f"{re_mbs:.0f} MB/s over {re_bytes / 1e6:.0f} MB (load {load_re}); ingest/polars "
        f"{ingest_mbs / pol_mbs:.2f}, ingest/re {ingest_mbs / re_mbs:.2f}x"
    )
    return {
        f"ingest {label} input (MB)": round(mb),
        f"ingest {label} (MB/s)": round(ingest_mbs, 1),
        f"ingest {label} (M lines/s)": round(lines / ing["wall_s"] / 1e6, 2),
        f"ingest {label} (CPU-s per GB)": round(ing["cpu_s"] / mb * 1000, 2),
        f"ingest {label} peak RSS, process tree (MiB)": round(ing["peak_rss_bytes"] / 2**20),
        f"ingest {label} / polars one-column read": round(ingest_mbs / pol_mbs, 2),
        f"ingest {label} / python re loop": round(ingest_mbs / re_mbs, 2),
        f"ingest {label} load average (start)": float(load_ingest),
    }


def main() -> dict[str, float]:
    """Both inputs, three readers each; returns the headline figures."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tlbreplay-bench-ingest-") as tmp:
        src = Path(tmp) / "real.txt"
        if real_captures():
            size = concat_real(src, SIZE_MB)
            n = len(real_captures())
            print(f"real: {size / 1e6:.0f} MB, the {n} committed captures concatenated")
            figures |= measure("real", src, Path(tmp))
            src.unlink()
        else:
            print("real: skipped, no traces/real/*.trace.zst")
        src = Path(tmp) / "generated.txt"
        t = time.perf_counter()
        size = generate(src, SIZE_MB)
        print(
            f"generated: {size / 1e6:.0f} MB, mix weighted by the real captures' event counts, "
            f"in {time.perf_counter() - t:.1f} s (seed {SEED})"
        )
        figures |= measure("generated", src, Path(tmp))
    return figures


if __name__ == "__main__":
    main()
