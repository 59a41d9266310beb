"""Sensitivity of a sweep: the ``sweep_*`` views and one plot per varied grid key.

A sweep RESULTS (``tlbreplay sweep``, docs/scale.md) is a RESULTS directory whose tables carry
a ``point`` hive partition, plus ``points.parquet``. :func:`pipeline.analyze.views.connect`
adds the ``points`` source view and the views of ``sql/sweep/*.sql`` for it (ADR 0410);
:func:`write_sensitivity` draws, for every key the grid
varies, the shootdowns saved against linux-6.5 and linux-7.1 and the mean shootdowns per
policy as a function of the key's value (the other keys averaged out).

Usage without the report: ``python -m pipeline.analyze.sweep_plots RESULTS OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.analyze.views import POINTS, SWEEP_SQL_DIR, connect, is_sweep
from pipeline.errors import QueryError

__all__ = ["POINTS", "SWEEP_SQL_DIR", "attach_sweep", "is_sweep", "write_sensitivity"]

DPI = 100
SENSITIVITY_SQL = (
    "SELECT * FROM sweep_sensitivity ORDER BY key, value_num NULLS LAST, value, policy, baseline"
)


def attach_sweep(con: duckdb.DuckDBPyConnection, results: Path) -> None:
    """Check that ``con`` (made by :func:`connect` over a sweep ``results``) has the sweep
    views; :func:`connect` adds them, so there is nothing left to do."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE schema_name = 'main' "
        "AND view_name IN ('points', 'sweep_savings')"
    ).fetchall()
    if found != [(2,)]:
        msg = f"{results}: not a sweep RESULTS (no `{POINTS}`), or the connection is not its own"
        raise QueryError(msg)


def sensitivity_rows(results: Path) -> pl.DataFrame:
    """Rows of ``sweep_sensitivity`` (see sql/sweep/10_sweep.sql for the columns)."""
    con, _ = connect(results)
    try:
        frame = pl.from_arrow(con.sql(SENSITIVITY_SQL).to_arrow_table())
    finally:
        con.close()
    assert isinstance(frame, pl.DataFrame)
    return frame


def plot_sensitivity(rows: pl.DataFrame, key: str, path: Path) -> Path:
    """Three panels against ``key``: % saved vs linux-6.5, vs linux-7.1, mean shootdowns."""
    sub = rows.filter(pl.col("key") == key)
    numeric = sub["value_num"].null_count() == 0
    values = sorted(set(sub["value"].to_list()), key=lambda v: (float(v) if numeric else 0, v))
    xpos = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3, squeeze=False)[0]
    panels = (
        ("linux-6.5", "flushes_saved_pct", "shootdowns saved vs linux-6.5 (%)"),
        ("linux-7.1", "flushes_saved_pct", "shootdowns saved vs linux-7.1 (%)"),
        ("linux-6.5", "remote_tlb_flushes", "KVM TLB shootdowns (mean)"),
    )
    for ax, (baseline, column, label) in zip(axes, panels, strict=True):
        part = sub.filter(pl.col("baseline") == baseline)
        if part.height == 0:
            ax.text(0.5, 0.5, f"{baseline} not in the grid", ha="center", transform=ax.transAxes)
        for policy in sorted(set(part["policy"].to_list())):
            line = part.filter(pl.col("policy") == policy)
            pairs = sorted(
                (xpos[v], y)
                for v, y in zip(line["value"].to_list(), line[column].to_list(), strict=True)
                if y is not None
            )
            if pairs:
                ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", label=policy)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(key)
        finite = [abs(y) for y in part[column].to_list() if y is not None]
        if finite and max(finite) > 1000:
            ax.set_yscale("symlog", linthresh=100)
        if not numeric:
            ax.set_xticks(list(xpos.values()), list(xpos))
        elif (
            values
            and all(float(v) > 0 for v in values)
            and max(map(float, values)) >= 8 * min(map(float, values))
        ):
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8, title="policy")
    fig.suptitle(f"Sensitivity to {key} (mean over the other grid keys)")
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def write_sensitivity(results: Path, out: Path) -> list[Path]:
    """``sensitivity_<key>.png`` in ``out`` for every varied key; [] for a non-sweep RESULTS."""
    if not is_sweep(results):
        return []
    rows = sensitivity_rows(results)
    keys = sorted(set(rows["key"].to_list()))
    return [plot_sensitivity(rows, k, Path(out) / f"sensitivity_{k}.png") for k in keys]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m pipeline.analyze.sweep_plots RESULTS OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    for written in write_sensitivity(Path(sys.argv[1]), Path(sys.argv[2])):
        print(written)
