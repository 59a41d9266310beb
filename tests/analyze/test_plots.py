"""plots.py: each plot writes a PNG, with rows and without, the same bytes for the same rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.analyze import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SHOOTDOWNS = pl.DataFrame(
    {
        "policy": ["linux-6.5", "oracle", "linux-6.5"],
        "vm": ["vm0", "vm0", "vm1"],
        "page_size": ["4K", "4K", "2M"],
        "remote_tlb_flushes": [10, 0, 3],
        "spte_zapped": [100, 0, 3],
        "ept_violations": [50, 0, 1],
        "cost_us": [12.5, 0.0, 1.0],
    }
)
TIMELINE = pl.DataFrame(
    {
        "policy": ["linux-6.5"] * 3,
        "vm": ["vm0"] * 3,
        "epoch": [0, 1, 2],
        "t_ms": [0, 100, 200],
        "remote_tlb_flushes": [0, 4, 1],
        "scan_notifiers": [0, 4, 0],
        "scan_pte_updates": [0, 0, 0],
    }
)
BY_VCPU = pl.DataFrame(
    {
        "policy": ["linux-6.5", "linux-6.5", "oracle"],
        "vm": ["vm0"] * 3,
        "vcpu": [0, 1, 0],
        "shootdown_ipis": [5, 5, 0],
        "ept_violations": [20, 30, 0],
    }
)


def test_plots_write_pngs_deterministically(tmp_path: Path) -> None:
    for name, fn, rows in (
        ("bars", plots.plot_policy_bars, SHOOTDOWNS),
        ("timeline", plots.plot_timeline, TIMELINE),
        ("vcpu", plots.plot_by_vcpu, BY_VCPU),
    ):
        a = fn(rows, tmp_path / f"{name}-a.png", title=name)
        b = fn(rows, tmp_path / f"{name}-b.png", title=name)
        assert a.read_bytes().startswith(PNG_MAGIC)
        assert a.read_bytes() == b.read_bytes()
        empty = fn(rows.clear(), tmp_path / f"{name}-empty.png")
        assert empty.read_bytes().startswith(PNG_MAGIC)
        assert empty.read_bytes() != a.read_bytes()
