"""Rows (an Arrow table, or :class:`Rows` of Python values) as a rich table, CSV or JSON
text. No queries here."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    import pyarrow as pa

#: How a missing or undefined value is shown to a person (a saving against a reference of 0).
UNDEFINED = "—"


def cell_text(value: Any) -> str:
    """One value as a person reads it: ``—`` for NULL, numbers with thousands separators,
    floats to 3 decimals at most."""
    if value is None:
        return UNDEFINED
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    if isinstance(value, Decimal):
        return cell_text(_number(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def page_size_order() -> list[str]:
    """Page sizes smallest first (schemas/enums.toml), so 4K sorts before 2M and 1G."""
    from pipeline.schema import enums

    sizes: dict[str, int] = enums()["page_size"]["bytes"]
    return sorted(sizes, key=sizes.__getitem__)


def page_size_sql(column: str = "page_size") -> str:
    """A SQL sort key of ``column`` by size (unknown sizes last)."""
    names = ", ".join(f"'{n}'" for n in page_size_order())
    return f"coalesce(list_position([{names}], {column}), 99)"


def count_text(value: float) -> str:
    """A count with thousands separators (``39,235``); a fraction keeps one decimal."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _pct_text(pct: float) -> str:
    """``pct`` rounded to an integer, or with up to 3 decimals where the integer would read
    as 0 or 100 without being so (``99.6``, ``99.97``, ``0.4``)."""
    text = f"{pct:.0f}"
    for digits in (1, 2, 3):
        if abs(pct) in (0.0, 100.0) or abs(float(text)) not in (0.0, 100.0):
            break
        text = f"{pct:.{digits}f}"
    return text.removeprefix("-") if float(text) == 0 else text


def ratio_text(ratio: float) -> str:
    """``ratio`` times more: ``2.4x more``, ``31,524x more`` (ratio >= 2)."""
    return f"{ratio:,.1f}x more" if ratio < 10 else f"{ratio:,.0f}x more"


def change_text(before: float, after: float) -> str:
    """The change from ``before`` to ``after`` as a person reads it: ``-74%``, ``+12%``,
    ``2.4x more`` past doubling (never a percentage past -100% of a saving), ``—`` when
    ``before`` is 0 and ``after`` is not, ``±0%`` when nothing changed."""
    if before == after:
        return "±0%"
    if before == 0:
        return UNDEFINED
    ratio = after / before
    if ratio >= 2:
        return ratio_text(ratio)
    sign = "+" if after > before else "-"
    return f"{sign}{_pct_text(abs(100 * (after - before) / before))}%"


def saved_pct_text(pct: float | None) -> str:
    """A ``*_saved_*_pct`` value (100 x saved / reference; negative: the policy does more):
    ``74%``, ``-50%``, and past -100% the ratio (``31,524x more``); ``—`` when undefined."""
    if pct is None or not math.isfinite(pct):
        return UNDEFINED
    if pct <= -100:
        return ratio_text(1 - pct / 100)
    return f"{_pct_text(pct)}%"


def display_text(name: str, value: Any) -> str:
    """A cell of column ``name`` for a person: savings (``*_pct`` columns) via
    :func:`saved_pct_text`, everything else via :func:`cell_text`."""
    if name.endswith("_pct") and (value is None or isinstance(value, (int, float, Decimal))):
        return saved_pct_text(None if value is None else float(value))
    return cell_text(value)


def _number(value: Decimal) -> int | float:
    """A DECIMAL (DuckDB's HUGEINT sums arrive as decimal128) as an int when it is whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def _is_numeric(dtype: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype)) or bool(
        pa.types.is_decimal(dtype)
    )


@dataclass(frozen=True)
class Rows:
    """Result rows as Python values (those ``pyarrow`` gives): the column names, which
    columns hold numbers, the values of the first rows (one tuple per row, in column order:
    two columns may share a name), and how many rows there are in all (``values`` may hold
    fewer: a table shows at most ``max_rows``)."""

    names: tuple[str, ...]
    numeric: tuple[bool, ...]
    values: list[tuple[Any, ...]]
    num_rows: int

    @classmethod
    def from_arrow(cls, table: pa.Table, limit: int | None = None) -> Rows:
        """The rows of ``table`` (the values of the first ``limit`` of them)."""
        part = table if limit is None else table.slice(0, limit)
        return cls(
            tuple(table.column_names),
            tuple(_is_numeric(f.type) for f in table.schema),
            list(zip(*(column.to_pylist() for column in part.columns), strict=True)),
            table.num_rows,
        )

    def records(self) -> list[dict[str, Any]]:
        """One dict per row (of a name given twice, the last column's value)."""
        return [dict(zip(self.names, row, strict=True)) for row in self.values]


def as_rows(rows: Rows | pa.Table, limit: int | None = None) -> Rows:
    """``rows`` as :class:`Rows` (an Arrow table converted; ``limit`` as in ``from_arrow``)."""
    return rows if isinstance(rows, Rows) else Rows.from_arrow(rows, limit)


def rich_table(
    rows: Rows | pa.Table,
    *,
    title: str | None = None,
    max_rows: int = 10_000,
    hint: str = "; use --format csv",
) -> Table:
    """A rich Table of ``rows`` (numbers right-aligned); at most ``max_rows`` rows shown."""
    rows = as_rows(rows, max_rows)
    table = Table(title=title, title_justify="left", show_lines=False)
    records = [
        [display_text(k, v) for k, v in zip(rows.names, row, strict=True)]
        for row in rows.values[:max_rows]
    ]
    for i, (name, numeric) in enumerate(zip(rows.names, rows.numeric, strict=True)):
        # never shrunk with an ellipsis: a table wider than the terminal is wrapped by it
        width = max([len(name), *(len(r[i]) for r in records)])
        table.add_column(
            name,
            justify="right" if numeric else "left",
            min_width=width,
            no_wrap=True,
        )
    for cells in records:
        table.add_row(*cells)
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


def to_csv(rows: Rows | pa.Table) -> str:
    """CSV with a header line; NULL is empty, nested values are JSON."""
    rows = as_rows(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(rows.names)
    for row in rows.values:
        writer.writerow(
            ""
            if v is None
            else json.dumps(_plain(v), default=str)
            if isinstance(v, (list, dict))
            else _plain(v)
            for v in row
        )
    return buf.getvalue()


def to_json(rows: Rows | pa.Table) -> str:
    """A JSON array of row objects (NaN and infinities as null)."""
    records = [_plain(r) for r in as_rows(rows).records()]
    return json.dumps(records, indent=1, default=str) + "\n"


def to_ndjson(rows: Rows | pa.Table) -> str:
    """One JSON object per line (NaN and infinities as null): what jq and DuckDB's
    read_json read as a stream."""
    return "".join(json.dumps(_plain(r), default=str) + "\n" for r in as_rows(rows).records())


def to_parquet(rows: pa.Table) -> bytes:
    """The rows as one Parquet file (zstd), column types as DuckDB returned them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(rows, buf, compression="zstd")
    return bytes(buf.getvalue().to_pybytes())
