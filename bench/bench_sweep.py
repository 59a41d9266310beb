"""Sweep throughput on the default LocalCluster (2 worker processes, 1 thread each).

The workload is traces/vfio-pinned.toml (the RFC's case: an 8 GiB VM, 40 s of boot and
steady state), and the grid varies policy x scan_size_mb x pinned (every policy, 2 scan
sizes, 2 pinned fractions = 28 points, 2 workload variants).
Figures: points per minute with the cluster already up (the steady state a long sweep sees),
the cluster's start-up time, and the whole ``run_sweep`` wall time including it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.replay.policies import POLICIES
from pipeline.sweep.runner import dask_client, plan_sweep, run_sweep

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "traces" / "vfio-pinned.toml"
GRID = """\
seed = 2023
[grid]
policy = [{policies}]
scan_size_mb = [64, 256]
pinned = [0.0, 1.0]
"""


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tlbreplay-bench-sweep-") as tmp_dir:
        tmp = Path(tmp_dir)
        spec = SPEC
        grid = tmp / "grid.toml"
        grid.write_text(GRID.format(policies=", ".join(f'"{p}"' for p in POLICIES)))
        plan = plan_sweep(spec, grid)
        n = len(plan.points)
        t0 = time.perf_counter()
        with dask_client(None) as client:
            up_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            result = run_sweep(spec, grid, tmp / "res", client=client, plan=plan)
            run_s = time.perf_counter() - t1
        total_s = time.perf_counter() - t0
        if result.failed:
            msg = f"{len(result.failed)} points failed: {result.failed}"
            raise RuntimeError(msg)
    print(
        f"sweep {n} points ({len(plan.variants)} workloads, 40 s of an 8 GiB VM): "
        f"cluster up {up_s:.1f} s, points {run_s:.1f} s = {n / run_s * 60:.1f} points/min; "
        f"total with start-up and shutdown {total_s:.1f} s"
    )
    return {
        "sweep, LocalCluster 2x1, 8 GiB VM, 40 s (points/min)": n / run_s * 60,
        "sweep LocalCluster start-up (s)": up_s,
        f"sweep of {n} points incl. cluster start/stop (s)": total_s,
    }


if __name__ == "__main__":
    main()
