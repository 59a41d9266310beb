"""The strict TOML reader behind every VM description and workload spec: line-numbered
locations (:class:`Source`), key checks with did-you-mean hints (:class:`Keys`), sizes with
units, values shown in errors. Knows no VM semantics: :mod:`pipeline.model.vmmodel` does.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, NoReturn

from pipeline.errors import SpecError

PAGE_SHIFT = 12


PAGE_BYTES = 1 << PAGE_SHIFT


GIB = 1 << 30


MIB = 1 << 20


#: largest size accepted anywhere (the 52-bit guest physical address space)
MAX_BYTES = 1 << 52


_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


_SIZE_UNITS = {"gib": GIB, "mib": MIB, "bytes": 1}


def show(value: object) -> str:
    """A value as the user wrote it in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if value.isprintable() and "`" not in value else json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


Loc = tuple[tuple[str, int | None], ...]


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z_][A-Za-z0-9_.\- ]*?)\s*\]\]?\s*(#.*)?$")


_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


class Source:
    """A TOML file's path and text, so errors can name the line of a table or key.

    tomllib keeps no positions; this scans ``[table]`` / ``[[array]]`` headers and
    ``key =`` lines. It is best effort: keys inside inline tables get their table's line or
    none, and then the error names the file only.
    """

    def __init__(self, path: str | Path, text: str) -> None:
        self.path = Path(path)
        self.tables: dict[Loc, tuple[int, dict[str, int]]] = {(): (0, {})}
        counters: dict[tuple[Loc, str], int] = {}
        latest: dict[tuple[str, ...], Loc] = {}
        current: Loc = ()
        for lineno, line in enumerate(text.splitlines(), 1):
            header = _HEADER_RE.match(line)
            if header:
                names = tuple(n.strip() for n in header.group(2).split("."))
                parent = latest.get(names[:-1], tuple((n, None) for n in names[:-1]))
                index = None
                if header.group(1) == "[[":
                    index = counters.get((parent, names[-1]), 0)
                    counters[(parent, names[-1])] = index + 1
                current = (*parent, (names[-1], index))
                latest[names] = current
                self.tables[current] = (lineno, {})
                continue
            key = _KEY_RE.match(line)
            if key and current in self.tables:
                self.tables[current][1].setdefault(key.group(1), lineno)

    def __str__(self) -> str:
        return str(self.path)

    def line_of(self, loc: Loc, key: str | None = None) -> int | None:
        """The line of ``key`` in table ``loc``, else of the table's header, else None.

        A table written inline (``phase = [{...}]``) has no header: it gets the line of its
        key in the enclosing table.
        """
        found = self.tables.get(loc)
        if found is None:
            return self.line_of(loc[:-1], loc[-1][0]) if loc else None
        header, keys = found
        line = keys.get(key) if key is not None else None
        return line or header or None


PathLike = str | Path | Source


def where_path(path: PathLike, loc: Loc, key: str | None = None) -> str:
    """``file:line`` when the line is known, else ``file``."""
    if isinstance(path, Source):
        line = path.line_of(loc, key)
        return f"{path.path}:{line}" if line else str(path.path)
    return str(path)


class Keys:
    """One TOML table under validation: typed getters that remember which keys were read.

    ``finish()`` rejects every key that was not read, with a did-you-mean hint, so a typo is
    never silently ignored.
    """

    def __init__(self, table: object, path: PathLike, where: str, loc: Loc = ()) -> None:
        self.path = path
        self.where = where
        self.loc = loc
        if not isinstance(table, dict):
            self.fail(f"expected a table, got `{show(table)}`")
        self.table: dict[str, Any] = table
        self.known: set[str] = set()

    def fail(self, problem: str, key: str | None = None) -> NoReturn:
        raise SpecError(where_path(self.path, self.loc, key), self.where, problem)

    def bad(self, key: str, value: object, allowed: str) -> NoReturn:
        self.fail(f"`{key}` = `{show(value)}`; expected {allowed}", key)

    def has(self, key: str) -> bool:
        self.known.add(key)
        return key in self.table

    def raw(self, key: str, default: Any = None) -> Any:
        self.known.add(key)
        return self.table.get(key, default)

    def require(self, key: str) -> Any:
        if not self.has(key):
            self.fail(f"missing `{key}`")
        return self.table[key]

    def int_(
        self, key: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None
    ) -> int:
        value = self.raw(key, default)
        if value is None:
            self.fail(f"missing `{key}`")
        return self.check_int(key, value, lo=lo, hi=hi)

    def check_int(self, key: str, value: object, *, lo: int | None, hi: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, value, "an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
            self.bad(key, value, bounds)
        return value

    def number(
        self, key: str, default: float | None = None, *, lo: float = 0.0, hi: float | None = None
    ) -> float:
        """A finite int or float in [lo, hi] (default: non-negative)."""
        value = self.raw(key, default)
        if value is None:
            self.fail(f"missing `{key}`")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.bad(key, value, "a finite number")
        if value < lo or (hi is not None and value > hi):
            span = f"a number >= {lo:g}" if hi is None else f"a number in [{lo:g}, {hi:g}]"
            self.bad(key, value, span)
        return float(value)

    def positive(self, key: str, default: float | None = None) -> float:
        value = self.number(key, default)
        if value <= 0:
            self.bad(key, value, "a number > 0")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.bad(key, value, "true or false")
        return bool(value)

    def choice(self, key: str, default: str | None, choices: Iterable[str]) -> str:
        options = list(choices)
        value = self.raw(key, default)
        if value is None:
            self.fail(f"missing `{key}`; expected one of {', '.join(options)}")
        if value not in options:
            self.bad(key, value, f"one of {', '.join(options)}")
        return str(value)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key, default)
        if value is not None and not isinstance(value, str):
            self.bad(key, value, "a string")
        return None if value is None else str(value)

    def size(
        self, base: str, *, required: bool = True, what: str = "", zero: bool = False
    ) -> int | None:
        """Bytes from exactly one of ``<base>_gib``, ``<base>_mib`` or ``<base>_bytes``."""
        given = [(f"{base}_{u}", m) for u, m in _SIZE_UNITS.items() if self.has(f"{base}_{u}")]
        names = ", ".join(f"`{base}_{u}`" for u in _SIZE_UNITS)
        if len(given) > 1:
            self.fail(f"give only one of {names}", given[1][0])
        if not given:
            if required:
                self.fail(f"missing {what or 'size'}: give one of {names}")
            return None
        key, mult = given[0]
        return self.to_bytes(key, self.table[key], mult, zero=zero)

    def sizes(self, base: str, count: int) -> list[int] | None:
        """A list of ``count`` sizes (or one size for all) from one ``<base>_<unit>`` key."""
        given = [(f"{base}_{u}", m) for u, m in _SIZE_UNITS.items() if self.has(f"{base}_{u}")]
        if len(given) > 1:
            names = ", ".join(f"`{base}_{u}`" for u in _SIZE_UNITS)
            self.fail(f"give only one of {names}", given[1][0])
        if not given:
            return None
        key, mult = given[0]
        value = self.table[key]
        if not isinstance(value, list):
            return [self.to_bytes(key, value, mult)] * count
        if len(value) != count:
            self.bad(key, value, f"a list of {count} sizes (one per node) or one size")
        return [self.to_bytes(key, v, mult) for v in value]

    def to_bytes(self, key: str, value: object, mult: int, *, zero: bool = False) -> int:
        """``value * mult`` bytes: a whole number of pages, > 0 (>= 0 when ``zero``)."""
        allowed = "a size >= 0" if zero else "a size > 0"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(key, value, allowed)
        if not (value >= 0 if zero else value > 0):
            self.bad(key, value, allowed)
        nbytes = value * mult
        if nbytes > MAX_BYTES:
            self.bad(key, value, f"a size of at most {MAX_BYTES >> 50} PiB")
        if nbytes != int(nbytes) or int(nbytes) % PAGE_BYTES:
            self.bad(key, value, "a whole number of 4 KiB pages")
        return int(nbytes)

    def only(self, allowed: Iterable[str]) -> None:
        """Reject unknown keys up front, before any value is checked (a typo is reported as a
        typo, not as the consequence of a default). ``<base>_*`` expands to the size variants.
        """
        names: set[str] = set()
        for key in allowed:
            if key.endswith("_*"):
                names.update(f"{key[:-1]}{u}" for u in _SIZE_UNITS)
            else:
                names.add(key)
        self.reject_unknown(names)

    def finish(self, extra: Collection[str] = ()) -> None:
        """Reject keys nobody read (``extra``: keys another layer will read)."""
        self.reject_unknown(self.known | set(extra))

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                self.fail(f"unknown key `{key}`{hint} allowed: {', '.join(sorted(allowed))}", key)

    def tables(self, key: str, header: str) -> list[Any]:
        """An array of tables (``[[header]]``); empty when absent."""
        value = self.raw(key, [])
        if not isinstance(value, list):
            self.fail(f"`{key}` must be an array of tables: write `[[{header}]]`")
        return list(value)


def read_source(path: str | Path) -> tuple[dict[str, Any], Source]:
    """Read a TOML file: the document and its :class:`Source` (for line numbers in errors).

    A missing file or a syntax error is a one-line SpecError (tomllib names line and column).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(p, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(p, "", f"cannot read ({exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(p, "", f"not valid TOML: {exc}") from None
    return doc, Source(p, text)
