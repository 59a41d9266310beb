"""Helpers of the issue-16 tests: a small spec, the CLI as a subprocess, process checks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "tlbreplay"

SPEC = """\
duration_s = {duration_s}
epoch_ms = 100
seed = {seed}

[host]
nodes = 2
node_mem_gib = [4, 4]
numa_balancing = 1
scan_delay_ms = 1000
scan_period_min_ms = 1000
scan_period_max_ms = 60000
scan_size_mb = 256
preempt = "full"
mmu = "tdp"

[[vm]]
name = "vm0"
mem_gib = 1
vcpus = 4
vcpu_nodes = [0, 0, 1, 1]

[[vm.region]]
name = "ram"
size_gib = 1
backing = "anon"
thp = false
placement = "first-touch"
pinned = "none"

[[vm.workload]]
name = "hot"
vcpus = "all"
kind = "zipf"
hot_gib = 1
skew = 1.0
rate_mib_per_s = 200
write_fraction = 0.3
"""


def write_spec(path: Path, *, duration_s: int = 4, seed: int = 7) -> Path:
    path.write_text(SPEC.format(duration_s=duration_s, seed=seed))
    return path


def tlbreplay(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(EXE), *map(str, args)], capture_output=True, text=True, check=False, timeout=600
    )
    if check:
        assert res.returncode == 0, res.stderr
    return res


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; zombies excluded)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: object, timeout_s: float = 60.0) -> bool:
    """Poll ``predicate()`` until true (event-driven waits for process states, not timing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def leftovers(root: Path) -> list[str]:
    """Temporary entries a run may not leave behind: ``.tmp`` names anywhere under root."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))
