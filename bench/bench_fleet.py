"""Fleet throughput: a generated fleet ingested and replayed with 1 and 2 workers.

``TLBREPLAY_BENCH_FLEET_HOSTS`` hosts (default 200) from :mod:`bench.fleetgen` (30 s of one
8 GiB VM each, ~550 KB of tracefs text) are ingested (one task per capture) and replayed
under ``POLICIES`` (one task per host and policy) by the real CLI as a subprocess: ``-j 1``
runs the tasks in that process, ``-j 2`` on a LocalCluster of two worker processes. Each run
is sampled every 100 ms: wall, CPU (user+sys of the process tree), the summed RSS of the tree
and the largest RSS of one process (a worker's memory). Per-task costs are CPU seconds per
task; docs/scale.md scales them to a 1,000-host fleet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_ingest_large import tree_rss
from bench.fleetgen import make_fleet

HOSTS_ENV = "TLBREPLAY_BENCH_FLEET_HOSTS"
POLICIES = ("linux-6.5", "notify-changed")


def measured(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd``: wall and CPU seconds, peak summed and peak single-process RSS."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_tree = peak_one = 0
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        peak_tree = max(peak_tree, sum(rss.values()))
        peak_one = max(peak_one, *rss.values(), 0)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    after = os.times()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        msg = f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}"
        raise RuntimeError(msg)
    cpu = after.children_user - before.children_user
    cpu += after.children_system - before.children_system
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "tree_mib": peak_tree / 2**20,
        "one_mib": peak_one / 2**20,
    }


def du_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> dict[str, float]:
    hosts = int(os.environ.get(HOSTS_ENV, "200"))
    exe = str(Path(sys.executable).with_name("tlbreplay"))
    tmp = Path(tempfile.mkdtemp(prefix="tlbreplay-bench-fleet-"))
    out: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        make_fleet(tmp / "captures", hosts)
        in_bytes = du_bytes(tmp / "captures")
        print(
            f"generated {hosts} hosts, {in_bytes / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s"
        )
        policy_args = [a for p in POLICIES for a in ("--policy", p)]
        replay_tasks = hosts * len(POLICIES)
        for jobs in (1, 2):
            ds, res = tmp / f"ds{jobs}", tmp / f"res{jobs}"
            ing = measured(
                [exe, "ingest", str(tmp / "captures"), "--out", str(ds), "-j", str(jobs), "-q"]
            )
            rep = measured(
                [exe, "replay", str(ds), "--out", str(res), "-j", str(jobs), "-q", *policy_args]
            )
            where = "in one process" if jobs == 1 else "LocalCluster 2 workers"
            print(
                f"-j {jobs} ({where}): ingest {ing['wall_s']:.1f} s wall, {ing['cpu_s']:.1f} s "
                f"CPU, tree {ing['tree_mib']:.0f} MiB, largest process {ing['one_mib']:.0f} "
                f"MiB; replay {rep['wall_s']:.1f} s wall, {rep['cpu_s']:.1f} s CPU, tree "
                f"{rep['tree_mib']:.0f} MiB, largest process {rep['one_mib']:.0f} MiB"
            )
            out[f"fleet ingest, {hosts} hosts, -j {jobs}: hosts/min"] = hosts / ing["wall_s"] * 60
            out[f"fleet replay, {replay_tasks} (host, policy) tasks, -j {jobs}: tasks/min"] = (
                replay_tasks / rep["wall_s"] * 60
            )
            if jobs == 1:
                out["fleet ingest CPU per host (s)"] = ing["cpu_s"] / hosts
                out["fleet replay CPU per (host, policy) task (s)"] = rep["cpu_s"] / replay_tasks
                out["fleet DATASET bytes per host (KB)"] = du_bytes(ds) / hosts / 1e3
                out["fleet RESULTS bytes per (host, policy) (KB)"] = (
                    du_bytes(res) / replay_tasks / 1e3
                )
                out["fleet capture bytes per host (KB)"] = in_bytes / hosts / 1e3
            else:
                out["fleet ingest largest process, -j 2 (MiB)"] = ing["one_mib"]
                out["fleet replay largest process, -j 2 (MiB)"] = rep["one_mib"]
            shutil.rmtree(ds, ignore_errors=True)
            shutil.rmtree(res, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:<70} {value:10.2f}")
