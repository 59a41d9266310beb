"""Synth scale benchmark: 10 minutes of a 1 TiB VM (traces/large-1tib.toml) at 100 ms epochs.

Prints wall time, rows, rows/s, output size and peak RSS of a fresh process per run (so other
benchmarks do not pollute the RSS figure), for the 1 TiB spec and for the same workloads in a
128 GiB VM: time and memory follow the number of range rows, not the VM size.
Run: ``make bench`` or ``.venv/bin/python -m bench bench_synth``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "traces" / "large-1tib.toml"

_CHILD = """
import json, sys, time
from pathlib import Path
import pipeline.synth.runner as runner
# VmHWM is this mm's high-water mark; ru_maxrss would carry the forking parent's over exec.
def hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
base_kib = hwm_kib()
t0 = time.perf_counter()
result = runner.run_synth(Path(sys.argv[1]), Path(sys.argv[2]))
seconds = time.perf_counter() - t0
peak_kib = hwm_kib()
size = sum(p.stat().st_size for p in Path(sys.argv[2]).rglob("*") if p.is_file())
print(json.dumps({"seconds": seconds, "rows": result.manifest["counts"]["accesses"],
                  "epochs": result.manifest["parameters"]["nr_epochs"],
                  "files": result.manifest["counts"]["accesses_files"],
                  "bytes": size, "base_rss_kib": base_kib, "peak_rss_kib": peak_kib}))
"""


def small_variant(text: str) -> str:
    """The 1 TiB spec's workloads in a 128 GiB VM (windows moved inside the smaller RAM)."""
    return (
        text.replace("node_mem_gib = [768, 768]", "node_mem_gib = [96, 96]")
        .replace("mem_gib = 1024", "mem_gib = 128")
        .replace("size_gib = 1024", "size_gib = 128")
        .replace("offset_gib = 512", "offset_gib = 64")
        .replace("offset_gib = 1000", "offset_gib = 120")
    )


def run(spec: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(spec), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> dict[str, float]:
    """Run both specs, print the details; return the headline figures of each (bench table)."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        small = Path(tmp) / "large-128gib.toml"
        small.write_text(small_variant(SPEC.read_text()))
        for label, spec in (("1 TiB VM", SPEC), ("128 GiB VM", small)):
            r = run(spec, Path(tmp) / f"out-{spec.stem}")
            rows_per_s = r["rows"] / r["seconds"]
            print(
                f"synth {label:>10}: {r['epochs']:.0f} epochs x 100 ms, {r['rows']:,.0f} rows "
                f"in {r['files']:.0f} files, {r['seconds']:.2f} s "
                f"({rows_per_s / 1e6:.2f} M rows/s), "
                f"{r['bytes'] / 2**20:.1f} MiB on disk, "
                f"peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB "
                f"(after imports {r['base_rss_kib'] / 1024:.0f} MiB)",
                flush=True,
            )
            figures[f"synth {label}, 10 min: time (s)"] = round(r["seconds"], 2)
            figures[f"synth {label}: rows"] = int(r["rows"])
            figures[f"synth {label}: rows/s"] = round(rows_per_s)
            figures[f"synth {label}: peak RSS (MiB)"] = round(r["peak_rss_kib"] / 1024)
    return figures


if __name__ == "__main__":
    main()
