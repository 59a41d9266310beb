"""The damo-style heat map of guest memory over time (``tlbreplay export --heatmap``).

Draws only (the grids come from :func:`pipeline.analyze.export.heat_grids`): one panel per
grid, guest-physical address up, time right, with a labelled colour bar; a panel of zeros
says so instead of drawing an empty square. Agg canvas, no pyplot, deterministic bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from pipeline.analyze.plots import DPI, NOTHING


def plot_heatmap(
    panels: list[tuple[str, np.ndarray]], path: Path, *, seconds: float, pages: int, vm: str
) -> Path:
    """One row per (title, gfn_bins x time_bins grid): the first is accesses, the others
    pages scanned per policy."""
    fig = Figure(figsize=(12, 1.9 * len(panels) + 1))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(f"VM {vm}: guest memory over time")
    fig.subplots_adjust(left=0.08, right=0.9, top=0.94, bottom=0.06, hspace=0.5)
    gib = pages * 4096 / (1 << 30)
    for ax, (title, grid) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("guest GiB")
        if not grid.any():
            ax.text(0.5, 0.5, NOTHING, ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            continue
        image = ax.imshow(
            grid,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            extent=(0.0, seconds, 0.0, gib),
            cmap="magma_r",
            norm=PowerNorm(0.5, vmin=0, vmax=float(grid.max())),
        )
        unit = "accesses" if title.endswith("(the workload)") else "pages scanned"
        fig.colorbar(image, ax=ax, pad=0.01).set_label(unit, fontsize=8)
    axes[-1].set_xlabel("time (s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path
