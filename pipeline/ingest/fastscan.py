"""The compiled ingest parser: ``csrc/ftrace_scan.c`` loaded with ctypes (ADR 0110).

``scan_block()`` in C cuts every line's header exactly like :func:`polarsscan._header_fast` and
matches each event's payload against the templates below (one per variant of the event's
pretty grammar in :data:`events.SPECS`). Per line it reports one of three states:

* full: header and payload parsed; the values land in int64 slots (numbers, or the offset and
  length of a string) and become Arrow columns here with numpy;
* header: the header parsed but no template matched (raw ``-R`` payloads, unknown events,
  odd payloads, a value out of its column's range): the polars per-event grammars decide;
* defer: anything else (metadata, tgid column, non-ASCII, control bytes): the exact
  per-line grammar :func:`lines.parse_line` decides.

So rows, quarantine reasons and counts are those of the polars path (checked by the tests).
Without the shared library (``make setup`` builds it) ingest uses the polars path.

Why one module over 500 lines: the C scanner's templates, their compilation and the decoding of
its output are one contract with csrc/ftrace_scan.c; split, each half would be read only with
the other.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.ingest import polarsscan
from pipeline.ingest.events import SPECS
from pipeline.schema import conform, table_schema

LIBRARY = Path(__file__).with_name("_ftrace_scan.so")
SCAN_ABI = 1  # csrc/ftrace_scan.c SCAN_ABI: arguments, ops and states this module expects
N_SLOTS = 16
ST_DEFER, ST_HEADER, ST_FULL = 0, 1, 2

# Template ops (csrc/ftrace_scan.c enum op).
_END, _LIT, _UDEC, _SDEC, _HEX, _HEX0X, _SPAN_BEGIN, _SPAN_END = range(8)
_CLS, _CLSOPT, _CLSREP, _UNTIL_FIRST, _UNTIL_LAST, _LHEX = range(8, 14)
_NUMBER_OPS = {"udec": _UDEC, "sdec": _SDEC, "hex": _HEX, "hex0x": _HEX0X, "lhex": _LHEX}

_NOT_SPACE = "".join(chr(c) for c in range(256) if c != 32)
_ANY = "".join(chr(c) for c in range(256))
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_LOWER = "abcdefghijklmnopqrstuvwxyz_"

# A template is a list of tokens: str = literal text; (kind, column) with kind udec, sdec,
# hex, hex0x or lhex (lower-case hex) = a number; ("str", column, parts) = the text matched by
# parts, where a part is ("cls", set), ("clsopt", set), ("clsrep", set, min),
# ("until_first", text) or ("until_last", text); ("clsopt", set) outside a string is allowed
# too. Each follows one variant of the event's first grammar in events.SPECS; a repeated class
# or a number is always followed by text that cannot continue it, so greedy matching finds the
# regex's only match.
Token = Any


def _variants(
    head: list[Token], options: list[list[Token]], tail: list[Token]
) -> list[list[Token]]:
    """head + each subset of the optional parts (all first) + tail, longest variant first."""
    out: list[list[Token]] = [[]]
    for opt in options:
        out = [v + opt for v in out] + out
    return [head + v + tail for v in out]


def _numa_pair() -> list[Token]:
    toks: list[Token] = []
    for i, col in enumerate(
        f"{side}_{f}" for side in ("src", "dst") for f in ("pid", "tgid", "ngid", "cpu", "nid")
    ):
        toks += [f"{' ' if i else ''}{col}=", ("sdec", col)]
    return toks


_MOVE = ["task_pid", "tgid", "ngid", "src_cpu", "src_nid", "dst_cpu", "dst_nid"]
TEMPLATES: dict[str, list[tuple[list[Token], dict[str, Any]]]] = {
    "kvm_unmap_hva_range": [
        (
            ["mmu notifier unmap range: ", ("hex0x", "hva_start"), " -- ", ("hex0x", "hva_end")],
            {},
        )
    ],
    "kvm_page_fault": [
        (
            [
                "vcpu ",
                ("udec", "vcpu"),
                " rip 0x",
                ("hex", "rip"),
                " address 0x",
                ("hex", "gpa"),
                " error_code 0x",
                ("hex", "error_code"),
            ],
            {},
        )
    ],
    "kvm_tdp_mmu_spte_changed": [
        (
            [
                "as id ",
                ("udec", "as_id"),
                " gfn ",
                ("hex", "gfn"),
                " level ",
                ("udec", "level"),
                " old_spte ",
                ("hex", "old_spte"),
                " new_spte ",
                ("hex", "new_spte"),
            ],
            {},
        )
    ],
    "kvm_mmu_spte_requested": [
        (["gfn ", ("hex", "gfn"), " pfn ", ("hex", "pfn"), " level ", ("udec", "level")], {})
    ],
    "kvm_mmu_set_spte": [
        (
            [
                "gfn ",
                ("hex", "gfn"),
                " spte ",
                ("hex", "spte"),
                " (",
                (
                    "str",
                    "access",
                    [("cls", "r-"), ("cls", "w-"), ("cls", "x-"), ("clsopt", "u-")],
                ),
                ") level ",
                ("udec", "level"),
                " at ",
                ("hex", "sptep"),
            ],
            {},
        )
    ],
    "kvm_exit": [
        (v, {})
        for v in _variants(
            [
                "vcpu ",
                ("udec", "vcpu"),
                " reason ",
                ("str", "reason", [("until_first", " rip 0x")]),
                " rip 0x",
                ("hex", "rip"),
                " info1 0x",
                ("hex", "info1"),
                " info2 0x",
                ("hex", "info2"),
                " intr_info 0x",
                ("hex", "intr_info"),
                " error_code 0x",
                ("hex", "error_code"),
            ],
            [[" requests 0x", ("hex", "requests")]],
            [],
        )
    ],
    "kvm_entry": [
        (v, {"immediate_exit": v[-1] == "[immediate exit]"})
        for v in _variants(
            ["vcpu ", ("udec", "vcpu"), ", rip 0x", ("hex", "rip")],
            [
                [" intr_info 0x", ("hex", "intr_info"), " error_code 0x", ("hex", "error_code")],
                ["[immediate exit]"],
            ],
            [],
        )
    ],
    "tlb_flush": [
        (
            [
                "pages:",
                ("sdec", "pages"),
                " reason:",
                ("str", "reason", [("until_last", " (")]),
                " (",
                ("sdec", "reason_code"),
                ")",
            ],
            {},
        )
    ],
    "ipi_send_cpumask": [
        (
            [
                "cpumask=",
                ("str", "cpumask", [("clsrep", _NOT_SPACE, 0)]),
                " callsite=",
                ("str", "callsite", [("clsrep", _NOT_SPACE, 1)]),
                " callback=",
                ("str", "callback", [("clsrep", _NOT_SPACE, 1)]),
            ],
            {},
        )
    ],
    "sched_skip_vma_numa": [
        (
            [
                "numa_scan_offset=",
                ("hex", "numa_scan_offset"),
                " vm_start=",
                ("hex", "vm_start"),
                " vm_end=",
                ("hex", "vm_end"),
                " reason=",
                ("str", "reason", [("clsrep", _LOWER, 1)]),
            ],
            {},
        )
    ],
    "sched_move_numa": [
        (
            [
                tok
                for i, col in enumerate(_MOVE)
                for tok in (
                    f"{' ' if i else ''}{'pid' if col == 'task_pid' else col}=",
                    ("sdec", col),
                )
            ],
            {},
        )
    ],
    "sched_stick_numa": [(_numa_pair(), {})],
    "sched_swap_numa": [(_numa_pair(), {})],
    "mm_migrate_pages": [
        (v, {})
        for v in _variants(
            [
                "nr_succeeded=",
                ("udec", "nr_succeeded"),
                " nr_failed=",
                ("udec", "nr_failed"),
                " nr_thp_succeeded=",
                ("udec", "nr_thp_succeeded"),
                " nr_thp_failed=",
                ("udec", "nr_thp_failed"),
                " nr_thp_split=",
                ("udec", "nr_thp_split"),
            ],
            [[" nr_split=", ("udec", "nr_split")]],
            [
                " mode=",
                ("str", "mode", [("clsrep", _UPPER, 1)]),
                " reason=",
                ("str", "reason", [("clsrep", _LOWER, 1)]),
            ],
        )
    ],
    "mm_migrate_pages_start": [
        (
            [
                "mode=",
                ("str", "mode", [("clsrep", _UPPER, 1)]),
                " reason=",
                ("str", "reason", [("clsrep", _LOWER, 1)]),
            ],
            {},
        )
    ],
    "damon_aggregated": [
        (
            [
                "target_id=",
                ("udec", "target_id"),
                " nr_regions=",
                ("udec", "nr_regions"),
                " ",
                ("udec", "start"),
                "-",
                ("udec", "end"),
                ": ",
                ("udec", "nr_accesses"),
                " ",
                ("udec", "age"),
            ],
            {},
        )
    ],
    "page_fault_user": [
        (
            [
                "address=0x",
                ("lhex", "address"),
                " ip=0x",
                ("lhex", "ip"),
                " error_code=0x",
                ("hex", "error_code"),
            ],
            {},
        )
    ],
    "tracing_mark_write": [([("str", "buf", [("clsrep", _ANY, 0)])], {})],
    "print": [
        (["tracing_mark_write:", ("clsopt", " "), ("str", "buf", [("clsrep", _ANY, 0)])], {})
    ],
}


@dataclass(frozen=True)
class Template:
    """One compiled template: its event, the slot of each column and the constant columns."""

    event: str
    numbers: dict[str, tuple[int, str]]  # column -> (slot, kind)
    strings: dict[str, int]  # column -> first of its two slots (offset, length)
    constants: dict[str, Any]


@dataclass(frozen=True)
class Tables:
    """The template tables handed to C, as numpy arrays (kept alive with the ctypes pointers)."""

    names: np.ndarray
    name_off: np.ndarray
    ev_tmpl: np.ndarray
    tmpl_op: np.ndarray
    ops: np.ndarray
    lits: np.ndarray
    sets: np.ndarray
    templates: tuple[Template, ...]
    events: tuple[str, ...]


@cache
def tables() -> Tables:
    """Compile :data:`TEMPLATES` for every event of ``events.SPECS`` (in SPECS order)."""
    events = tuple(SPECS)
    ops: list[tuple[int, int, int, int]] = []
    lits = bytearray()
    sets: list[bytes] = []
    templates: list[Template] = []
    ev_tmpl = [0]
    tmpl_op: list[int] = []

    def lit(text: str) -> tuple[int, int]:
        at = len(lits)
        lits.extend(text.encode())
        return at, len(text)

    def cset(chars: str) -> int:
        table = bytearray(256)
        for ch in chars:
            table[ord(ch)] = 1
        sets.append(bytes(table))
        return len(sets) - 1

    def part(p: tuple[Any, ...]) -> None:
        kind = p[0]
        if kind == "cls":
            ops.append((_CLS, cset(p[1]), 0, 0))
        elif kind == "clsopt":
            ops.append((_CLSOPT, cset(p[1]), 0, 0))
        elif kind == "clsrep":
            ops.append((_CLSREP, cset(p[1]), p[2], 0))
        else:
            op = _UNTIL_FIRST if kind == "until_first" else _UNTIL_LAST
            ops.append((op, *lit(p[1]), 0))

    for event in events:
        for tokens, constants in TEMPLATES.get(event, []):
            tmpl_op.append(len(ops))
            numbers: dict[str, tuple[int, str]] = {}
            strings: dict[str, int] = {}
            slot = 0
            for tok in tokens:
                if isinstance(tok, str):
                    ops.append((_LIT, *lit(tok), 0))
                elif tok[0] == "str":
                    strings[tok[1]] = slot
                    ops.append((_SPAN_BEGIN, slot, 0, 0))
                    for p in tok[2]:
                        part(p)
                    ops.append((_SPAN_END, slot, 0, 0))
                    slot += 2
                elif tok[0] in _NUMBER_OPS:
                    numbers[tok[1]] = (slot, tok[0])
                    ops.append((_NUMBER_OPS[tok[0]], slot, 0, 0))
                    slot += 1
                else:
                    part(tok)
            assert slot <= N_SLOTS
            ops.append((_END, 0, 0, 0))
            templates.append(Template(event, numbers, strings, constants))
        ev_tmpl.append(len(templates))
    names = b"".join(e.encode() for e in events)
    name_off = np.cumsum([0, *(len(e.encode()) for e in events)])
    return Tables(
        names=np.frombuffer(names, np.uint8).copy(),
        name_off=name_off.astype(np.int32),
        ev_tmpl=np.array(ev_tmpl, np.int32),
        tmpl_op=np.array(tmpl_op, np.int32),
        ops=np.array(ops, np.int32).reshape(-1),
        lits=np.frombuffer(bytes(lits) or b"\0", np.uint8).copy(),
        sets=np.frombuffer(b"".join(sets) or bytes(256), np.uint8).copy(),
        templates=tuple(templates),
        events=events,
    )


@cache
def _library() -> ctypes.CDLL | None:
    if not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
        lib.scan_abi.restype = ctypes.c_int
        if lib.scan_abi() != SCAN_ABI:
            return None  # a stale build: `make setup` rebuilds it
    except (OSError, AttributeError):
        return None
    lib.scan_block.restype = ctypes.c_long
    lib.gather_strings.restype = ctypes.c_long
    return lib


def available() -> bool:
    """True when the compiled scanner was built (``make setup``) and loads."""
    return _library() is not None


@dataclass
class Scan:
    """The per-line columns scan_block() fills."""

    line_start: np.ndarray
    line_end: np.ndarray
    status: np.ndarray
    ts_ns: np.ndarray
    cpu: np.ndarray
    pid: np.ndarray
    comm_off: np.ndarray
    comm_len: np.ndarray
    flags_off: np.ndarray
    flags_len: np.ndarray
    ev_off: np.ndarray
    ev_len: np.ndarray
    pl_off: np.ndarray
    pl_len: np.ndarray
    event_id: np.ndarray
    tmpl: np.ndarray
    slots: np.ndarray


_I64 = ("line_start", "line_end", "ts_ns")
_I8 = ("status",)


def _allocate(n: int) -> Scan:
    cols: dict[str, np.ndarray] = {}
    for name in Scan.__dataclass_fields__:
        dtype = np.int64 if name in _I64 else np.int8 if name in _I8 else np.int32
        cols[name] = np.empty(n, dtype)
    cols["slots"] = np.empty(N_SLOTS * n, np.int64)  # viewed as (N_SLOTS, lines)
    return Scan(**cols)


_spare = threading.local()  # per thread: ingest parses blocks in a thread pool


def _buffers(n: int) -> Scan:
    """Output columns for ``n`` lines, reused across blocks (no page clearing per block).

    Every Arrow column is built from a copy (fancy indexing), so reuse is safe; a
    :class:`Scan` is valid until the next call.
    """
    have: Scan | None = getattr(_spare, "scan", None)
    if have is None or len(have.status) < n:
        have = _spare.scan = _allocate(max(n, 1 << 16))
    cols = {f: getattr(have, f)[:n] for f in Scan.__dataclass_fields__}
    cols["slots"] = have.slots[: N_SLOTS * n].reshape(N_SLOTS, n)
    return Scan(**cols)


def scan(buf: bytes | memoryview) -> Scan:
    """Run the C scanner over ``buf`` (one row per line; the last may lack its newline).

    The result is valid until the next call in this thread (its arrays are reused).
    """
    lib = _library()
    assert lib is not None, "the compiled scanner is not built (make setup)"
    if len(buf) >= 1 << 31:
        msg = "a block must be smaller than 2 GiB"
        raise ValueError(msg)
    t = tables()
    data = np.frombuffer(buf, np.uint8)  # no copy of a block read into a buffer (reader.py)
    cap = max(len(buf) // 48, 1 << 12)  # lines are rarely shorter; else scan again, wider
    while True:
        out = _buffers(cap)
        consumed = ctypes.c_long(0)
        got = lib.scan_block(
            ctypes.c_void_p(data.ctypes.data),
            ctypes.c_long(len(buf)),
            ctypes.c_long(cap),
            ctypes.c_int32(len(t.events)),
            *(ctypes.c_void_p(a.ctypes.data) for a in _table_arrays(t)),
            *(ctypes.c_void_p(getattr(out, f).ctypes.data) for f in Scan.__dataclass_fields__),
            ctypes.byref(consumed),
        )
        if consumed.value == len(buf):
            return _rows(out, got)
        cap *= 2


def _rows(s: Scan, n: int) -> Scan:
    """The first ``n`` lines of ``s``."""
    cols = {f: getattr(s, f)[..., :n] for f in Scan.__dataclass_fields__}
    return Scan(**cols)


def _table_arrays(t: Tables) -> tuple[np.ndarray, ...]:
    return (t.names, t.name_off, t.ev_tmpl, t.tmpl_op, t.ops, t.lits, t.sets)


# --------------------------------------------------------------------------- columns


def _strings(data: np.ndarray, off: np.ndarray, length: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Strings data[off:off+length] (ASCII, so valid UTF-8); null where not ``valid``."""
    lens = np.where(valid, length, 0).astype(np.int64)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    chars = np.empty(max(int(offsets[-1]), 1), np.uint8)
    starts = np.ascontiguousarray(off, np.int64)
    lib = _library()
    assert lib is not None
    bad = lib.gather_strings(
        ctypes.c_void_p(data.ctypes.data),
        ctypes.c_long(len(data)),
        ctypes.c_void_p(starts.ctypes.data),
        ctypes.c_void_p(lens.ctypes.data),
        ctypes.c_long(len(lens)),
        ctypes.c_void_p(offsets.ctypes.data),
        ctypes.c_void_p(chars.ctypes.data),
    )
    assert bad == 0, "a string span outside the block"
    nulls = int(len(valid) - np.count_nonzero(valid))
    bitmap = pa.array(valid, pa.bool_()).buffers()[1] if nulls else None
    # spans lie in one block (< 2 GiB) and do not overlap: int32 offsets suffice
    return pa.StringArray.from_buffers(
        len(lens), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(chars), bitmap, nulls
    )


_BOUNDS = {
    pa.int8(): (-(1 << 7), (1 << 7) - 1),
    pa.int16(): (-(1 << 15), (1 << 15) - 1),
    pa.int32(): (-(1 << 31), (1 << 31) - 1),
    pa.int64(): (-(1 << 63), (1 << 63) - 1),
    pa.uint8(): (0, (1 << 8) - 1),
    pa.uint16(): (0, (1 << 16) - 1),
    pa.uint32(): (0, (1 << 32) - 1),
    pa.uint64(): (0, (1 << 64) - 1),
}


def _in_range(raw: np.ndarray, kind: str, dtype: pa.DataType) -> np.ndarray:
    """Rows whose slot value fits the column type (the exact grammar's range check)."""
    lo, hi = _BOUNDS[dtype]
    if kind == "sdec":
        return (raw >= max(lo, -(1 << 63))) & (raw <= min(hi, (1 << 63) - 1))
    u = raw.view(np.uint64)
    return u <= np.uint64(hi)


def _number(raw: np.ndarray, kind: str, dtype: pa.DataType) -> pa.Array:
    values = raw if kind == "sdec" else raw.view(np.uint64)
    return pa.array(values.astype(dtype.to_pandas_dtype()), dtype)


def _common(data: np.ndarray, s: Scan, idx: np.ndarray) -> dict[str, pa.Array]:
    return {
        "ts_ns": pa.array(s.ts_ns[idx], pa.int64()),
        "cpu": pa.array(s.cpu[idx], pa.int32()),
        "pid": pa.array(s.pid[idx], pa.int32()),
        "comm": _strings(data, s.comm_off[idx], s.comm_len[idx], s.comm_len[idx] >= 0),
        "flags": _strings(data, s.flags_off[idx], s.flags_len[idx], s.flags_len[idx] > 0),
    }


def full_parts(data: np.ndarray, s: Scan) -> tuple[dict[str, list[polarsscan.Part]], np.ndarray]:
    """Typed rows of every line a template parsed. Lines with a value out of its column's
    range are returned (second item) for the per-event grammars, which quarantine or take them.
    """
    t = tables()
    out: dict[str, list[polarsscan.Part]] = {}
    demoted: list[np.ndarray] = []
    full = np.flatnonzero(s.status == ST_FULL)
    if not len(full):
        return out, np.zeros(0, np.int64)
    tmpl_of = s.tmpl[full]
    for k in np.unique(tmpl_of).tolist():
        tm = t.templates[k]
        spec = SPECS[tm.event]
        schema = table_schema(spec.table).arrow()
        idx = full[tmpl_of == k]
        raw = {col: s.slots[slot][idx] for col, (slot, _kind) in tm.numbers.items()}
        ok = np.ones(len(idx), bool)
        for col, (_slot, kind) in tm.numbers.items():
            ok &= _in_range(raw[col], kind, schema.field(col).type)
        if not ok.all():
            demoted.append(idx[~ok])
            idx = idx[ok]
            raw = {col: values[ok] for col, values in raw.items()}
            if not len(idx):
                continue
        cols = _common(data, s, idx)
        for col in spec.columns:
            dtype = schema.field(col).type
            if col in tm.numbers:
                cols[col] = _number(raw[col], tm.numbers[col][1], dtype)
            elif col in tm.strings:
                at = tm.strings[col]
                sl = s.slots
                cols[col] = _strings(data, sl[at][idx], sl[at + 1][idx], np.ones(len(idx), bool))
            elif col in tm.constants:
                cols[col] = pa.array([tm.constants[col]] * len(idx), dtype)
            else:
                cols[col] = pa.nulls(len(idx), dtype)
        part = polarsscan.Part(idx.astype(np.int64), conform(pa.table(cols), spec.table))
        out.setdefault(spec.table, []).append(part)
    rest = np.concatenate(demoted) if demoted else np.zeros(0, np.int64)
    return out, rest.astype(np.int64)


def header_frame(data: np.ndarray, s: Scan, idx: np.ndarray) -> pl.DataFrame:
    """The frame ``polarsscan._parse_events`` takes, for lines whose header C parsed."""
    cols = _common(data, s, idx)
    cols["event"] = _strings(data, s.ev_off[idx], s.ev_len[idx], np.ones(len(idx), bool))
    cols["payload"] = _strings(data, s.pl_off[idx], s.pl_len[idx], np.ones(len(idx), bool))
    table = pa.table({"row": pa.array(idx.astype(np.int64)), **cols})
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(
        pl.col(c).cast(pl.String) for c in ("comm", "flags", "event", "payload")
    )


def parse_chunk_c(
    buf: bytes | memoryview, *, source: str, first_lineno: int = 1, final: bool = False
) -> polarsscan.ChunkResult:
    """:func:`ftrace.parse_chunk` with the compiled scanner (same rows, reasons and counts).
    ``buf`` may be a view of a read buffer: nothing here copies it whole."""
    s = scan(buf)
    data = np.frombuffer(buf, np.uint8)
    open_end = len(buf) > 0 and bytes(buf[-1:]) != b"\n"
    lines = polarsscan.Lines(buf, s.line_start, s.line_end, final and open_end)
    got = polarsscan.Collected()
    parts, demoted = full_parts(data, s)
    for table, found in parts.items():
        for part in found:
            got.add(table, part)
    got.exact(lines, np.flatnonzero(s.status == ST_DEFER).tolist())
    header = np.flatnonzero(s.status == ST_HEADER)
    if len(demoted):
        header = np.sort(np.concatenate([header, demoted]))
    if len(header):
        got.events(lines, header_frame(data, s, header))
    return got.result(lines, source=source, first_lineno=first_lineno)
