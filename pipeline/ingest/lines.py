"""The exact per-line ftrace grammar: header, meta lines, lost-event marks, typed fields.

A trace line, as printed by the kernel's ``print_trace_line()`` (tracefs ``trace`` and
``trace_pipe``) and by ``trace-cmd report``, is::

    <comm>-<pid> [(<tgid>)] [<cpu>] [<flags>] <sec>.<frac>: <event>: <payload>

``flags`` is the irqs-off/need-resched/hardirq/preempt-depth column (absent with
``-o noirq-info`` and in default ``trace-cmd report`` output); ``frac`` has 6 digits
(microseconds: tracefs, default ``trace-cmd report``) or 9 (``trace-cmd report -t``).
:func:`parse_line` either parses a line or quarantines it with a reason; the fast paths send
every line they are not sure of here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pipeline.ingest.events import OTHER_TABLE, SPECS, Grammar, symbol_tables
from pipeline.schema import table_schema

HEADER_RE = re.compile(
    r"^[ ]*(?P<comm>.+?)-(?P<pid>[0-9]{1,10})[ ]+(?:\([ ]*(?:[0-9]+|-+)\)[ ]+)?"
    r"\[(?P<cpu>[0-9]{1,6})\][ ]+(?:(?P<flags>[^ ]+)[ ]+)?"
    r"(?P<sec>[0-9]{1,12})\.(?P<frac>[0-9]{1,9}):[ ](?P<event>[^ :]+):(?:[ ]+(?P<payload>.*))?\Z",
    re.DOTALL,
)
LOST_RE = re.compile(r"^[ ]*CPU:(?P<cpu>[0-9]+) \[LOST (?P<count>[0-9]+) EVENTS\][ ]*\Z")
# Non-event lines tracefs and trace-cmd print: headers, buffer-start marks, report preamble.
_META_RE = re.compile(
    r"^[ ]*(?:#.*|cpus=[0-9]+|version = [0-9]+.*|CPU [0-9]+ is empty|"
    r"CPU[0-9]+ data recorded at offset=.*|[0-9]+ bytes in size.*)?[ \r]*\Z",
    re.DOTALL,
)
MAX_TS_SEC = 9_000_000_000  # ts_ns must fit int64
PAYLOAD_BLANKS = " \r\x00\n"  # stripped from both ends of a payload
_INT_RANGE = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}


@dataclass(frozen=True)
class Event:
    """A parsed event line: header fields plus the typed payload columns of its table."""

    table: str
    ts_ns: int
    cpu: int
    pid: int
    comm: str | None
    flags: str | None
    values: dict[str, Any]


@dataclass(frozen=True)
class Comment:
    """A header, blank or metadata line; ``lost`` is (cpu, count) for a ring-buffer loss mark."""

    lost: tuple[int, int] | None = None


@dataclass(frozen=True)
class Bad:
    """A line that cannot be parsed, with the reason."""

    reason: str


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


def _type_name(table: str, column: str) -> str:
    for col in table_schema(table).columns:
        if col.name == column:
            return str(col.type)
    msg = f"no column `{column}` in table `{table}`"
    raise KeyError(msg)


_DEC_TEXT = re.compile(r"[+-]?[0-9]+")
_HEX_TEXT = re.compile(r"\+?[0-9a-fA-F]+")
_UDEC_TEXT = re.compile(r"\+?[0-9]+")
_NEG_TEXT = re.compile(r"-[0-9]+")


def _read_int(text: str, kind: str, signed: bool) -> int | None:
    """Integer text -> int with exactly the rules of polars ``str.to_integer`` used below."""
    if kind == "dec":
        return int(text) if _DEC_TEXT.fullmatch(text) else None
    if kind == "hex":
        return int(text, 16) if _HEX_TEXT.fullmatch(text) else None
    # num / wrap / enum: 0x-hex, or decimal; a minus sign only into a signed column
    if text.startswith("0x"):
        return int(text[2:], 16) if _HEX_TEXT.fullmatch(text[2:]) else None
    if text.startswith("-"):
        return int(text) if signed and kind == "num" and _NEG_TEXT.fullmatch(text) else None
    return int(text) if _UDEC_TEXT.fullmatch(text) else None


def _convert(text: str | None, kind: str, type_name: str) -> tuple[bool, Any]:
    """One captured group -> value, as the vectorized path does it. Returns (ok, value)."""
    if kind == "flag":
        return True, text is not None
    if kind == "noflag":
        return True, text is None
    if text is None:
        return True, None
    if kind == "str":
        return True, text
    value = _read_int(text, kind, type_name.startswith("int"))
    if value is None:
        return False, None
    if kind == "wrap":
        if value >= 1 << 64:
            return False, None
        return True, value - (1 << 64) if value >= 1 << 63 else value
    if kind.startswith("enum:"):
        name = symbol_tables()[kind[5:]].get(value)
        return name is not None, name
    if kind != "dec" and value >= 1 << 64:
        return False, None
    if kind == "dec" and not -(1 << 63) <= value < (1 << 63) and type_name != "uint64":
        return False, None
    lo, hi = _INT_RANGE[type_name]
    return (True, value) if lo <= value <= hi else (False, None)


def _match(grammar: Grammar, payload: str) -> dict[str, str | None] | None:
    """The named groups of ``grammar`` in ``payload``, or None when it does not match."""
    if grammar.split is None or grammar.tail is None:
        m = _compiled(grammar.pattern).match(payload)
        return None if m is None else m.groupdict()
    at = payload.find(grammar.split)
    if at < 0:
        return None
    head = _compiled(grammar.pattern).match(payload[:at])
    tail = _compiled(grammar.tail).match(payload[at + len(grammar.split) :])
    if head is None or tail is None:
        return None
    return head.groupdict() | tail.groupdict()


def parse_payload(event: str, payload: str) -> tuple[str, dict[str, Any]] | Bad:
    """Parse one payload with the event's grammars; unknown events go to ftrace/_other."""
    spec = SPECS.get(event)
    if spec is None:
        return OTHER_TABLE, {"event": event, "payload": payload}
    for grammar in spec.grammars:
        groups = _match(grammar, payload)
        if groups is None:
            continue
        values: dict[str, Any] = {}
        ok = True
        for col in spec.columns:
            kind = grammar.kinds.get(col)
            if kind is None:
                values[col] = None
                continue
            kind, _, group = kind.partition("@")
            good, value = _convert(groups[group or col], kind, _type_name(spec.table, col))
            if not good:
                ok = False
                break
            values[col] = value
        if ok:
            return spec.table, values
    return Bad(f"payload does not match the `{event}` format")


def parse_line(line: str, *, last: bool = False) -> Event | Comment | Bad:
    """Parse one line (no newline) exactly; the reference for the vectorized path."""
    text = line.rstrip("\n")
    lost = LOST_RE.match(text)
    if lost:
        return Comment((int(lost["cpu"]), int(lost["count"])))
    if _META_RE.match(text):
        return Comment()
    m = HEADER_RE.match(text)
    if m is None:
        return Bad(cut_reason(last, "not an ftrace event line"))
    pid = int(m["pid"])
    if pid > _INT_RANGE["int32"][1]:
        return Bad(cut_reason(last, "pid out of range"))
    frac = m["frac"]
    if int(m["sec"]) > MAX_TS_SEC:
        return Bad(cut_reason(last, "timestamp out of range"))
    ts_ns = int(m["sec"]) * 1_000_000_000 + int(frac) * 10 ** (9 - len(frac))
    comm = m["comm"]
    payload = (m["payload"] or "").strip(PAYLOAD_BLANKS)
    result = parse_payload(m["event"], payload)
    if isinstance(result, Bad):
        return Bad(cut_reason(last, result.reason))
    table, values = result
    return Event(
        table=table,
        ts_ns=ts_ns,
        cpu=int(m["cpu"]),
        pid=pid,
        comm=None if comm == "<...>" else comm,
        flags=m["flags"],
        values=values,
    )


def cut_reason(last: bool, reason: str) -> str:
    return f"cut-off last line (no newline at end of input): {reason}" if last else reason
