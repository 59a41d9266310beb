"""``tlbreplay lab matrix``: the cells of the lab (backing x THP x pin, plus a control)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pipeline.errors import InputError, TlbReplayError
from pipeline.lab import host, tracefs
from pipeline.lab.guest import PATTERNS
from pipeline.lab.run import LabConfig

T = TypeVar("T")
BACKINGS = ("anon", "shared")
NB_FROM = ("after-population", "before-guest")
MEMPOLICIES = ("", "default", "bind", "bind+numa_balancing", "preferred", "interleave")


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
    *,
    mempolicy: str = "",
    nb_from: str = "after-population",
    vmm_threads: int = 0,
    vmm_vmas: int = -1,
) -> LabConfig:
    """Validate CLI options into a :class:`LabConfig` (one-line errors naming the option)."""
    if backing not in BACKINGS:
        raise InputError("--backing", f"`{backing}` is not one of {', '.join(BACKINGS)}")
    if pattern not in PATTERNS:
        raise InputError("--pattern", f"`{pattern}` is not one of {', '.join(PATTERNS)}")
    if mempolicy not in MEMPOLICIES:
        raise InputError("--mempolicy", f"`{mempolicy}` is not one of {', '.join(MEMPOLICIES[1:])}")
    if nb_from not in NB_FROM:
        raise InputError("--nb-from", f"`{nb_from}` is not one of {', '.join(NB_FROM)}")
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
        mempolicy=mempolicy,
        nb_from=nb_from,
        vmm_threads=vmm_threads,
        vmm_vmas=vmm_vmas,
    )


def regime_configs(
    *,
    mem_mib: Sequence[int],
    vcpus: Sequence[int],
    nb_from: Sequence[str],
    vmm_threads: Sequence[int],
    seconds: Sequence[float],
    cells: Sequence[tuple[str, bool, bool]],
    busy_loops: int = 0,
) -> list[LabConfig]:
    """The cross product of the swept dimensions (issue 11): VM size x vCPUs x when
    numa_balancing goes on x the VMM's helper threads x window, for each (backing, THP, pin)
    cell, in that order; each validated as by ``lab run``."""
    out = []
    for mem, n, start, threads, secs, (backing, thp, pin) in itertools.product(
        mem_mib, vcpus, nb_from, vmm_threads, seconds, cells
    ):
        out.append(
            config_from_options(
                mem, n, backing, "on" if thp else "off", "on" if pin else "off", "split",
                secs, 1, busy_loops, nb_from=start, vmm_threads=threads,
            )
        )  # fmt: skip
    return out


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


# held-out-2: a second held-out set, captured before the engine changes it judges
# (traces/real/regimes2/SPLIT.toml, ADR 0512).
PLAN_SETS = ("fit", "held-out", "held-out-2")
PLAN_KEYS = (
    "set", "backing", "thp", "pin", "mem_mib", "vcpus", "nb_from", "vmm_threads", "vmm_vmas",
    "seconds", "mempolicy", "busy_loops",
)  # fmt: skip


def plan_configs(path: Path) -> list[tuple[str, LabConfig]]:
    """The ``[[cell]]`` tables of a regime plan (traces/real/regimes/SPLIT.toml): each cell's
    set (fit / held-out) and :class:`LabConfig`, validated as by ``lab run``."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(path, f"cannot read the plan: {exc}") from exc
    out = []
    for i, cell in enumerate(doc.get("cell") or [], start=1):
        extra = set(cell) - set(PLAN_KEYS)
        if extra:
            raise InputError(path, f"cell {i}: unknown key `{sorted(extra)[0]}`")
        which = str(cell.get("set", ""))
        if which not in PLAN_SETS:
            raise InputError(path, f"cell {i}: `set` = {which!r}; use fit, held-out or held-out-2")
        try:
            config = config_from_options(
                int(cell["mem_mib"]), int(cell["vcpus"]), str(cell["backing"]),
                "on" if cell["thp"] else "off", "on" if cell["pin"] else "off", "split",
                float(cell["seconds"]), 1, int(cell.get("busy_loops", 0)),
                mempolicy=str(cell.get("mempolicy", "")),
                nb_from=str(cell.get("nb_from", "after-population")),
                vmm_threads=int(cell.get("vmm_threads", 0)),
                vmm_vmas=int(cell.get("vmm_vmas", -1)),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"cell {i}: lacks or mistypes {exc}") from exc
        out.append((which, config))
    if not out:
        raise InputError(path, "no [[cell]] tables")
    return out


def parse_list(option: str, text: str, kind: Callable[[str], T]) -> list[T]:
    """A comma list option (``256,1024``) as values of ``kind``; one-line error otherwise."""
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InputError(option, f"`{text}` is not a comma list: {exc}") from exc
    if not values:
        raise InputError(option, "give at least one value")
    return values


def parse_cells(text: str) -> list[tuple[str, bool, bool]]:
    """``anon-4k-pin,shared-thp-nopin`` -> (backing, thp, pin) per cell."""
    out = []
    for part in parse_list("--cells", text, str):
        bits = part.split("-")
        if (
            len(bits) != 3
            or bits[0] not in BACKINGS
            or bits[1] not in ("4k", "thp")
            or bits[2] not in ("pin", "nopin")
        ):
            raise InputError("--cells", f"`{part}` is not <anon|shared>-<4k|thp>-<pin|nopin>")
        out.append((bits[0], bits[1] == "thp", bits[2] == "pin"))
    return out


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
        "--mempolicy", config.mempolicy, "--nb-from", config.nb_from,
        "--vmm-threads", str(config.vmm_threads), "--vmm-vmas", str(config.vmm_vmas),
    ]  # fmt: skip


def run_matrix(
    configs: Sequence[LabConfig],
    out_dir: Path,
    report: Callable[[str], None] = print,
    *,
    regime_names: bool = False,
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
        name = config.regime_name if regime_names else config.name
        out = (out_dir / f"{name}.trace.zst").resolve()
        child = subprocess.Popen(run_argv(config, out), cwd=cwd)
        try:
            with interrupt_signals():
                code = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise
        if code != 0:
            msg = f"lab cell `{name}` failed (exit code {code}); the matrix stops"
            raise MatrixError(msg)
        report(f"{out}: done")
