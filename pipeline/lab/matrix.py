"""``tlbreplay lab matrix``: the cells of the lab (backing x THP x pin, plus a control)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import InputError, TlbReplayError
from pipeline.lab import host, tracefs
from pipeline.lab.guest import PATTERNS
from pipeline.lab.run import LabConfig

BACKINGS = ("anon", "shared")


def _on_off(option: str, value: str) -> bool:
    if value not in ("on", "off"):
        raise InputError(option, f"`{value}` is not one of on, off")
    return value == "on"


def config_from_options(  # noqa: PLR0917 - mirrors the CLI options one to one
    mem_mib: int,
    vcpus: int,
    backing: str,
    thp: str,
    pin: str,
    pattern: str,
    seconds: float,
    numa_balancing: int,
    busy_loops: int = 0,
) -> LabConfig:
    """Validate CLI options into a :class:`LabConfig` (one-line errors naming the option)."""
    if backing not in BACKINGS:
        raise InputError("--backing", f"`{backing}` is not one of {', '.join(BACKINGS)}")
    if pattern not in PATTERNS:
        raise InputError("--pattern", f"`{pattern}` is not one of {', '.join(PATTERNS)}")
    if mem_mib % 2:
        raise InputError(
            "--mem-mib", f"{mem_mib} is not a multiple of 2 (guest RAM is mapped with 2 MiB pages)"
        )
    return LabConfig(
        mem_mib,
        vcpus,
        backing,
        _on_off("--thp", thp),
        _on_off("--pin", pin),
        pattern,
        seconds,
        numa_balancing,
        busy_loops=busy_loops,
    )


def matrix_configs(
    mem_mib: int, vcpus: int, seconds: float, pattern: str = "split", busy_loops: int = 0
) -> list[LabConfig]:
    """backing x THP x pin at numa_balancing=1, then the anon/4K/unpinned control at 0."""
    cells = [
        LabConfig(mem_mib, vcpus, backing, thp, pin, pattern, seconds, 1, busy_loops=busy_loops)
        for backing, thp, pin in itertools.product(BACKINGS, (False, True), (False, True))
    ]
    cells.append(
        LabConfig(mem_mib, vcpus, "anon", False, False, pattern, seconds, 0, busy_loops=busy_loops)
    )
    return cells


def reset_host() -> list[str]:
    """numa_balancing=0, tracing_on=0, the lab's events disabled with no filter; what was done."""
    done = []
    host.NUMA_BALANCING.write_text("0\n")
    done.append("kernel.numa_balancing = 0")
    root = tracefs.find_tracefs()
    (root / "tracing_on").write_text("0")
    done.append(f"{root}/tracing_on = 0")
    for spec in tracefs.EVENTS:
        event_dir = Path(root, "events", spec.system, spec.name)
        if (event_dir / "enable").exists():
            (event_dir / "enable").write_text("0")
            (event_dir / "filter").write_text("0")
    done.append(f"{len(tracefs.EVENTS)} lab events disabled, filters cleared")
    return done


class MatrixError(TlbReplayError):
    """A cell of the lab matrix failed."""


def run_argv(config: LabConfig, out: Path) -> list[str]:
    """The ``lab run`` command line of one cell (run by the same interpreter)."""
    return [
        sys.executable, "-m", "pipeline.lab.commands", "lab", "run",
        "--mem-mib", str(config.mem_mib), "--vcpus", str(config.vcpus),
        "--backing", config.backing, "--thp", "on" if config.thp else "off",
        "--pin", "on" if config.pin else "off", "--pattern", config.pattern,
        "--seconds", str(config.seconds), "--numa-balancing", str(config.numa_balancing),
        "--busy-loops", str(config.busy_loops), "--out", str(out),
    ]  # fmt: skip


def run_matrix(
    configs: Sequence[LabConfig], out_dir: Path, report: Callable[[str], None] = print
) -> None:
    """Run each cell as its own ``lab run`` process, one after the other.

    A fresh process per cell gives each guest a fresh mm: task_numa_work() state lives in the
    mm (numa_scan_seq, numa_scan_offset, numa_next_scan, the VMAs' numab_state), and carried
    over from an earlier cell it would, e.g., skip a new guest VMA as `scan_delay`
    (kernel/sched/fair.c, ``mm->numa_scan_seq && time_before(jiffies, next_scan)``).
    """
    from pipeline.lab.capture import interrupt_signals

    cwd = Path(__file__).resolve().parents[3]
    for config in configs:
        out = (out_dir / f"{config.name}.trace.zst").resolve()
        child = subprocess.Popen(run_argv(config, out), cwd=cwd)
        try:
            with interrupt_signals():
                code = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise
        if code != 0:
            msg = f"lab cell `{config.name}` failed (exit code {code}); the matrix stops"
            raise MatrixError(msg)
        report(f"{out}: done")
