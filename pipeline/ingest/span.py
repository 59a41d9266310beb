"""The time span a DATASET covers, as ingest recorded it (ADR 0380).

Replay must cover the trace, not only the epochs that hold accesses: a VM whose guest stops
faulting is still scanned by NUMA balancing until the trace ends (issue 16: a lab capture
whose refaults stop at 7.4 s of a 30 s window). The span is

* the sidecar's ``[lab] window_s`` from the lab's ``numa_balancing=`` marker, cut to whole
  epochs (:func:`pipeline.ingest.capture_facts.trace_window`, what ``calibrate`` replays), when the
  sidecar has one;
* else the first to the last event of any kind (``ftrace/*.parquet``).

``n_epochs`` counts the epochs (of the dataset's ``epoch_ms``, from ``t0_ns``) that start
before the span's end.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.ingest.capture_facts import trace_window


def _event_bounds(root: Path) -> tuple[int, int] | None:
    lows, highs = [], []
    for path in sorted((root / "ftrace").glob("*.parquet")):
        if "ts_ns" not in pl.read_parquet_schema(path):
            continue
        bounds = _footer_bounds(path)
        if bounds is None:
            row = pl.scan_parquet(path).select(
                pl.col("ts_ns").min().alias("lo"), pl.col("ts_ns").max().alias("hi")
            )
            bounds = row.collect().row(0)
        lo, hi = bounds
        if lo is not None and hi is not None:
            lows.append(int(lo))
            highs.append(int(hi))
    return (min(lows), max(highs)) if lows else None


def _footer_bounds(path: Path) -> tuple[int | None, int | None] | None:
    """(min, max) of ``ts_ns`` from the row groups' statistics in the Parquet footer (ingest
    writes them for number columns): no column is read. None when a row group with rows
    has none (then the column is scanned)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column = meta.schema.names.index("ts_ns")
    lo: int | None = None
    hi: int | None = None
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        lo = int(stats.min) if lo is None else min(lo, int(stats.min))
        hi = int(stats.max) if hi is None else max(hi, int(stats.max))
    return lo, hi


def _lab_window_s(vm_config: Path | None) -> float | None:
    if vm_config is None:
        return None
    try:
        doc = tomllib.loads(Path(vm_config).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None  # the sidecar was read (and its errors reported) by derive
    value = (doc.get("lab") or {}).get("window_s")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def time_span(
    root: Path, t0_ns: int | None, epoch_ms: int, vm_config: Path | None
) -> dict[str, Any]:
    """Manifest fields ``span_ns`` [first, last event], ``window_ns`` [start, end) of the
    sidecar's lab window (or None) and ``n_epochs`` (0 without any event)."""
    bounds = _event_bounds(root)
    if bounds is None or t0_ns is None:
        return {"span_ns": None, "window_ns": None, "n_epochs": 0}
    window = None
    window_s = _lab_window_s(vm_config)
    if window_s is not None:
        marks_path = root / "ftrace" / "tracing_mark_write.parquet"
        tables = {"first": pl.DataFrame({"ts_ns": [bounds[0]]})}
        if marks_path.is_file():
            tables["tracing_mark_write"] = pl.read_parquet(marks_path)
        window = trace_window(tables, window_s, epoch_ms)
    end_ns = window[1] if window is not None else bounds[1] + 1
    epoch_ns = epoch_ms * 1_000_000
    n_epochs = max(0, -(-(end_ns - t0_ns) // epoch_ns))
    return {
        "span_ns": list(bounds),
        "window_ns": list(window) if window is not None else None,
        "n_epochs": n_epochs,
    }
