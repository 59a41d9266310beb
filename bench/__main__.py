"""`python -m bench [--large] [bench_NAME ...]`: run the benchmark modules, then one table.

Every ``bench/bench_*.py`` module has a ``main()`` that prints its own details and may return
a dict of headline figures (``{"ingest (MB/s)": 312.0, ...}``: name with unit -> number or
text). After all modules ran, one table lists every figure, module by module; a module whose
``main()`` returned None is listed as such (its figures are only in its printed output).

``--large`` sets ``TLBREPLAY_BENCH_LARGE=1``, which turns on the benchmarks that take minutes
(bench_ingest_large: a 10 GB trace). The machine (CPU model, cores, memory, kernel, load
average at start and end) is printed with the table so that figures are never read without it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import record

Figures = dict[str, Any]


def machine() -> dict[str, str]:
    """CPU model, cores, memory, kernel and Python: the context of every figure."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        mem = f"{mem_kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "unknown"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def table(results: list[tuple[str, Figures | None, str | None]]) -> str:
    """The one table: module, figure, value (``None`` / errors listed as such)."""
    rows: list[tuple[str, str, str]] = []
    for name, figures, error in results:
        if error is not None:
            rows.append((name, "FAILED", error))
        elif not figures:
            rows.append((name, "(returned no figures: see its output above)", ""))
        else:
            rows.extend((name, key, record.format_value(value)) for key, value in figures.items())
    w0 = max(len("module"), *(len(r[0]) for r in rows))
    w1 = max(len("figure"), *(len(r[1]) for r in rows))
    w2 = max(len("value"), *(len(r[2]) for r in rows))
    lines = [f"{'module':<{w0}}  {'figure':<{w1}}  {'value':>{w2}}", "-" * (w0 + w1 + w2 + 4)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--large" in args:
        args.remove("--large")
        os.environ["TLBREPLAY_BENCH_LARGE"] = "1"
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    unknown = sorted(set(args) - set(names))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        return 2
    load_start = load_average()
    started = time.perf_counter()
    results: list[tuple[str, Figures | None, str | None]] = []
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        if args and name not in args:
            continue
        print(f"== {name}", flush=True)
        module_load = load_average()
        try:
            module = importlib.import_module(f"bench.{name}")
            figures = module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            results.append((name, None, f"{type(exc).__name__}: {exc}"[:80]))
            continue
        results.append((name, figures if isinstance(figures, dict) else None, None))
        if isinstance(figures, dict) and figures:
            runs[name] = record.run_entry(figures, module_load, load_average())
    print()
    print("== figures")
    for key, value in machine().items():
        print(f"{key:<8} {value}")
    print(f"load     {load_start} (start), {load_average()} (end); 1, 5, 15 min averages")
    print(f"elapsed  {time.perf_counter() - started:.0f} s")
    print()
    print(table(results))
    if runs:
        record.save(runs, machine())
        print(f"\nrecorded in {record.LAST} (README: python -m bench.readme_perf README.md)")
    return 1 if any(err for _, _, err in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
