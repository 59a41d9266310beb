"""The report's plots, drawn with matplotlib's Agg canvas. Runs no queries: each ``plot_*``
takes the rows of one view (as polars) and writes one PNG.

No pyplot: figures are plain ``Figure`` objects on an Agg canvas, so there is no global state,
no display is needed, and the PNG bytes depend only on the rows (no timestamp or version in
the file's metadata).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

#: Counters drawn in the per-policy bars, with axis labels.
BAR_COUNTERS = (
    ("remote_tlb_flushes", "KVM TLB shootdowns (remote flushes)", "flushes"),
    ("spte_zapped", "SPTEs zapped", "SPTEs"),
    ("ept_violations", "EPT violations (refaults)", "violations"),
    ("cost_us", "modelled cost (µs)", "µs"),
)
#: What a panel says when every policy's value is 0 (e.g. the numa_balancing=0 control).
NOTHING = "nothing happened: 0 under every policy"
DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _empty(ax: Axes, text: str = "no rows") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _panels(
    labels: list[str], shape: tuple[int, int], *, title: str, size: tuple[float, float]
) -> tuple[Figure, list[Axes]]:
    """A figure with one titled panel per label (row-major), the x axis shared by columns."""
    fig = Figure(figsize=size)
    # a fixed layout (constrained layout costs as much as drawing): the right margin holds
    # the legend, the bottom one rotated tick labels
    fig.subplots_adjust(left=0.1, right=0.84, top=0.92, bottom=0.1, hspace=0.4, wspace=0.2)
    grid = fig.subplots(*shape, sharex="col", squeeze=False)
    axes: list[Axes] = list(grid.flat)
    if title:
        fig.suptitle(title)
    for ax, label in zip(axes, labels, strict=True):
        ax.set_title(label, fontsize=10)
    return fig, axes


def _legend(fig: Figure, ax: Axes, title: str) -> None:
    handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper right", fontsize=8, title=title)


def _page_rank(page_size: str) -> int:
    """4K before 2M before 1G (by size, not as text)."""
    from pipeline.analyze.output import page_size_order

    order = page_size_order()
    return order.index(page_size) if page_size in order else len(order)


def _policies(rows: pl.DataFrame) -> list[str]:
    """Policies in the order of their first row (the caller's display order)."""
    return [str(p) for p in rows["policy"].unique(maintain_order=True).to_list()]


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _value_labels(ax: Axes, names: list[str], totals: list[float]) -> None:
    """Each bar's total above it, a zero included (a bar of height 0 is otherwise invisible)."""
    top = max(totals, default=0.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    for x, total in enumerate(totals):
        text = f"{total:,.0f}" if total >= 10 or total == int(total) else f"{total:.1f}"
        ax.annotate(
            text,
            (x, total),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(range(len(names)), names)


def plot_policy_bars(shootdowns: pl.DataFrame, path: Path, *, title: str = "") -> Path:
    """Stacked bars per policy (in row order), one panel per counter of :data:`BAR_COUNTERS`.

    ``shootdowns``: rows of view ``shootdowns`` (policy, vm, page_size and the counters); each
    bar is stacked by (vm, page_size).
    """
    fig, axes = _panels(
        [label for _, label, _ in BAR_COUNTERS], (2, 2), title=title, size=(12, 7.5)
    )
    policies = _policies(shootdowns)
    stacks = (
        sorted(
            shootdowns.select("vm", "page_size").unique().rows(),
            key=lambda r: (r[0], _page_rank(r[1])),
        )
        if shootdowns.height
        else []
    )
    colors = _colors(len(stacks))
    for ax, (counter, _, unit) in zip(axes, BAR_COUNTERS, strict=True):
        if not policies:
            _empty(ax)
            continue
        if not any(float(v or 0) for v in shootdowns[counter].to_list()):
            _empty(ax, NOTHING)
            continue
        bottom = [0.0] * len(policies)
        for color, (vm, page_size) in zip(colors, stacks, strict=True):
            part = shootdowns.filter((pl.col("vm") == vm) & (pl.col("page_size") == page_size))
            by_policy = dict(zip(part["policy"].to_list(), part[counter].to_list(), strict=True))
            heights = [float(by_policy.get(p) or 0) for p in policies]
            ax.bar(policies, heights, bottom=bottom, color=color, label=f"{vm} {page_size}")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        _value_labels(ax, policies, bottom)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, axes[0], "vm, page size")
    return _save(fig, path)


def plot_timeline(timeline: pl.DataFrame, path: Path, *, title: str = "") -> Path:
    """The run epoch by epoch, VMs summed: cumulative KVM shootdowns per policy (lines), then
    per-epoch shootdowns, scanner notifiers and pages made PROT_NONE as heat maps (one row
    per policy, so no policy hides another).

    ``timeline``: rows of view ``timeline`` (policy, vm, epoch, t_ms, remote_tlb_flushes,
    scan_notifiers, scan_pte_updates, ...), policies in display order.
    """
    heat = (
        ("remote_tlb_flushes", "KVM TLB shootdowns per epoch", "flushes per epoch"),
        (
            "scan_notifiers",
            "scanner notifiers (invalidate_range_start) per epoch",
            "notifiers per epoch",
        ),
        ("scan_pte_updates", "pages made PROT_NONE per epoch", "pages per epoch"),
    )
    labels = ["KVM TLB shootdowns, cumulative", *(label for _, label, _ in heat)]
    fig, axes = _panels(labels, (4, 1), title=title, size=(12, 11))
    if timeline.height == 0 or not any(
        timeline[c].sum() for c, _, _ in heat if c in timeline.columns
    ):
        for ax in axes:
            _empty(ax, NOTHING)
        return _save(fig, path)
    policies = _policies(timeline)
    per_policy = timeline.group_by("policy", "t_ms").agg(pl.col(c).sum() for c, _, _ in heat)
    t_ms = sorted(per_policy["t_ms"].unique().to_list())
    column = {t: i for i, t in enumerate(t_ms)}
    row = {p: i for i, p in enumerate(policies)}
    seconds = np.array(t_ms, dtype=float) / 1000
    step = float(seconds[1] - seconds[0]) if len(seconds) > 1 else 0.1
    extent = (float(seconds[0]), float(seconds[-1]) + step, len(policies) - 0.5, -0.5)
    for ax, (counter, _, unit) in zip(axes[1:], heat, strict=True):
        grid = np.zeros((len(policies), len(t_ms)))
        for policy, t, value in per_policy.select("policy", "t_ms", counter).iter_rows():
            grid[row[policy], column[t]] = value
        image = ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            extent=extent,
            cmap="magma_r",
            norm=PowerNorm(0.5, vmin=0, vmax=max(float(grid.max()), 1.0)),
        )
        ax.set_yticks(range(len(policies)), policies, fontsize=8)
        ax.set_ylabel("policy")
        fig.colorbar(image, ax=ax, pad=0.01).set_label(unit, fontsize=8)
        if counter == "remote_tlb_flushes":
            for color, policy in zip(_colors(len(policies)), policies, strict=True):
                axes[0].step(
                    seconds + step,
                    np.cumsum(grid[row[policy]]),
                    where="post",
                    color=color,
                    label=policy,
                )
    axes[0].grid(alpha=0.3)
    axes[0].set_ylabel("flushes so far")
    axes[-1].set_xlabel("time (s)")
    _legend(fig, axes[0], "policy")
    return _save(fig, path)


def plot_by_vcpu(
    by_vcpu: pl.DataFrame, path: Path, *, title: str = "", max_vcpus: int = 64
) -> Path:
    """Per-vCPU shootdown IPIs received and EPT violations taken, grouped bars per policy.

    ``by_vcpu``: rows of view ``by_vcpu`` (policy, vm, vcpu, shootdown_ipis, ept_violations,
    ...). At most ``max_vcpus`` (vm, vcpu) groups are drawn, the first in (vm, vcpu) order.
    """
    panels = (
        ("shootdown_ipis", "shootdown IPIs received per vCPU", "IPIs"),
        ("ept_violations", "EPT violations per vCPU", "violations"),
    )
    fig, axes = _panels([label for _, label, _ in panels], (2, 1), title=title, size=(12, 7))
    if by_vcpu.height == 0 or not any(by_vcpu[c].sum() for c, _, _ in panels):
        for ax in axes:
            _empty(ax, NOTHING)
        return _save(fig, path)
    groups = by_vcpu.select("vm", "vcpu").unique().sort("vm", "vcpu").rows()[:max_vcpus]
    labels = [f"{vm}/{vcpu}" for vm, vcpu in groups]
    policies = _policies(by_vcpu)
    colors = _colors(len(policies))
    width = 0.8 / max(len(policies), 1)
    for ax, (counter, _, unit) in zip(axes, panels, strict=True):
        ax.set_ylabel(unit)
        for k, (color, policy) in enumerate(zip(colors, policies, strict=True)):
            part = by_vcpu.filter(pl.col("policy") == policy)
            values = {(vm, vcpu): v for vm, vcpu, v in part.select("vm", "vcpu", counter).rows()}
            xs = [i + k * width - 0.4 + width / 2 for i in range(len(groups))]
            ax.bar(
                xs, [float(values.get(g) or 0) for g in groups], width, color=color, label=policy
            )
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(groups)), labels, rotation=60, fontsize=7)
    axes[-1].set_xlabel("vm/vcpu")
    _legend(fig, axes[0], "policy")
    return _save(fig, path)
