"""``tlbreplay lab matrix``: the cells of the lab (backing x THP x pin, plus a control)."""

from __future__ import annotations

import itertools
from pathlib import Path

from pipeline.errors import InputError
from pipeline.ingest.lab import host, tracefs
from pipeline.ingest.lab.guest import PATTERNS
from pipeline.ingest.lab.run import LabConfig

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
    )


def matrix_configs(
    mem_mib: int, vcpus: int, seconds: float, pattern: str = "split"
) -> list[LabConfig]:
    """backing x THP x pin at numa_balancing=1, then the anon/4K/unpinned control at 0."""
    cells = [
        LabConfig(mem_mib, vcpus, backing, thp, pin, pattern, seconds, 1)
        for backing, thp, pin in itertools.product(BACKINGS, (False, True), (False, True))
    ]
    cells.append(LabConfig(mem_mib, vcpus, "anon", False, False, pattern, seconds, 0))
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
