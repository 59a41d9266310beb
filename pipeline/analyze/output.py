"""Rows (an Arrow table) as a rich table, CSV or JSON text. No queries here."""

from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from typing import Any

import pyarrow as pa
from rich.table import Table


def cell_text(value: Any) -> str:
    """One value as a person reads it: NULL, integers as is, floats to 3 decimals at most."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    if isinstance(value, Decimal):
        return cell_text(_number(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _number(value: Decimal) -> int | float:
    """A DECIMAL (DuckDB's HUGEINT sums arrive as decimal128) as an int when it is whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def _is_numeric(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype)) or bool(
        pa.types.is_decimal(dtype)
    )


def rich_table(
    rows: pa.Table,
    *,
    title: str | None = None,
    max_rows: int = 10_000,
    hint: str = "; use --format csv",
) -> Table:
    """A rich Table of ``rows`` (numbers right-aligned); at most ``max_rows`` rows shown."""
    table = Table(title=title, title_justify="left", show_lines=False)
    for field in rows.schema:
        table.add_column(field.name, justify="right" if _is_numeric(field.type) else "left")
    for record in rows.slice(0, max_rows).to_pylist():
        table.add_row(*(cell_text(v) for v in record.values()))
    if rows.num_rows > max_rows:
        table.caption = f"{rows.num_rows - max_rows} more rows not shown{hint}"
    return table


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_csv(rows: pa.Table) -> str:
    """CSV with a header line; NULL is empty, nested values are JSON."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(rows.column_names)
    for record in rows.to_pylist():
        writer.writerow(
            ""
            if v is None
            else json.dumps(_plain(v), default=str)
            if isinstance(v, (list, dict))
            else _plain(v)
            for v in record.values()
        )
    return buf.getvalue()


def to_json(rows: pa.Table) -> str:
    """A JSON array of row objects (NaN and infinities as null)."""
    records = [_plain(r) for r in rows.to_pylist()]
    return json.dumps(records, indent=1, default=str) + "\n"
