"""Pure ftrace text grammar: the line header and one payload grammar per event. Never opens files.

A trace line, as printed by the kernel's ``print_trace_line()`` (tracefs ``trace`` and
``trace_pipe``) and by ``trace-cmd report``, is::

    <comm>-<pid> [(<tgid>)] [<cpu>] [<flags>] <sec>.<frac>: <event>: <payload>

``flags`` is the irqs-off/need-resched/hardirq/preempt-depth column (absent with
``-o noirq-info`` and in default ``trace-cmd report`` output); ``frac`` has 6 digits
(microseconds: tracefs, default ``trace-cmd report``) or 9 (``trace-cmd report -t``). The
payload is the event's ``TP_printk`` output (KERNEL.md section 9; formats checked against
``/sys/kernel/tracing/events/*/*/format`` on Linux 6.18 and the v6.5 sources), or, with
``trace-cmd report -R``, the raw ``field=value`` list.

:func:`parse_chunk` parses a block of complete lines with the compiled scanner
(:mod:`pipeline.ingest.fastscan`, ADR 0110) when it is built, else with
:func:`parse_chunk_polars`: its fast path cuts the headers of all lines at once with polars
string kernels and extracts payload fields with one polars regex per event. Any line a fast
path is not sure of goes to the exact per-line grammar (:func:`parse_line`), which either
parses it or quarantines it with a reason. All paths give the same answer for every line
(checked by the property tests).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.schema import conform, enums, table_schema

COMMON_COLUMNS = ("ts_ns", "cpu", "pid", "comm", "flags")
OTHER_TABLE = "ftrace/_other"

# --------------------------------------------------------------------------- event grammars

# Field kinds: how a captured group becomes a value.
#   dec   decimal, optional minus      hex   hex digits (any 0x is outside the group)
#   num   0x-hex or decimal (raw -R)   str   text as printed
#   flag  true when the group matched  noflag  true when the group did not match
#   wrap  0x-hex or decimal read as u64, stored as the two's-complement int64 (raw %ld)
#   enum:<name>  raw number mapped through a symbolic table (``_SYMBOLS``)
_MIGRATE_MODES = {0: "MIGRATE_ASYNC", 1: "MIGRATE_SYNC_LIGHT", 2: "MIGRATE_SYNC"}
# include/trace/events/migrate.h MIGRATE_REASON (v6.5 stops at demotion, v7.x adds damon).
_MIGRATE_REASONS = {
    0: "compaction",
    1: "memory_failure",
    2: "memory_hotplug",
    3: "syscall_or_cpuset",
    4: "mempolicy_mbind",
    5: "numa_misplaced",
    6: "contig_range",
    7: "longterm_pin",
    8: "demotion",
    9: "damon",
}


@cache
def _symbols() -> dict[str, dict[int, str]]:
    e = enums()
    return {
        "migrate_mode": _MIGRATE_MODES,
        "migrate_reason": _MIGRATE_REASONS,
        "tlb_flush_reason": {int(k): v for k, v in e["tlb_flush_reason"]["codes"].items()},
        "numab_skip_reason": dict(enumerate(e["numab_skip_reason"]["values"])),
    }


@dataclass(frozen=True)
class Grammar:
    """One payload format: an anchored regex with named groups and how to read each group.

    With ``split``, the payload is cut at the first occurrence of that text: ``pattern``
    matches what comes before it and ``tail`` what comes after (both paths do exactly this;
    it keeps the regexes one-pass, hence fast, when a free-text field precedes fixed ones).
    """

    pattern: str
    kinds: Mapping[str, str]
    split: str | None = None
    tail: str | None = None


@dataclass(frozen=True)
class EventSpec:
    """An ftrace event: the table it goes to and its payload grammars, pretty first then raw."""

    event: str
    table: str
    grammars: tuple[Grammar, ...]
    source: str

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in table_schema(self.table).names if c not in COMMON_COLUMNS)


# Group bodies: hex digits, signed and unsigned decimals, a raw -R value.
H = r"[0-9a-fA-F]+"
D = r"-?[0-9]+"
U = r"[0-9]+"
NUM = r"[^ ]+"


def _g(pattern: str, **kinds: str) -> Grammar:
    return Grammar(pattern, kinds)


def _split(pattern: str, split: str, tail: str, **kinds: str) -> Grammar:
    return Grammar(pattern, kinds, split=split, tail=tail)


def _raw(pairs: list[tuple[str, str, str]], optional: tuple[str, ...] = ()) -> Grammar:
    """A ``trace-cmd report -R`` grammar: ``rawname=value`` for each (rawname, column, kind)."""
    parts, kinds = [], {}
    for i, (raw, col, kind) in enumerate(pairs):
        body = f"{' ' if i else ''}{raw}=(?P<{col}>{NUM})"
        parts.append(f"(?:{body})?" if raw in optional else body)
        kinds[col] = kind
    return Grammar("^" + "".join(parts) + "$", kinds)


_KVM_MMU = "arch/x86/kvm/mmu/mmutrace.h"
SPECS: dict[str, EventSpec] = {
    spec.event: spec
    for spec in (
        EventSpec(
            "kvm_unmap_hva_range",
            "ftrace/kvm_unmap_hva_range",
            (
                # %#016lx prints 0 without the 0x prefix, hence the optional prefix.
                _g(
                    rf"^mmu notifier unmap range: (?:0x)?(?P<hva_start>{H}) -- "
                    rf"(?:0x)?(?P<hva_end>{H})$",
                    hva_start="hex",
                    hva_end="hex",
                ),
                _raw([("start", "hva_start", "num"), ("end", "hva_end", "num")]),
            ),
            "include/trace/events/kvm.h kvm_unmap_hva_range (v6.5, v7)",
        ),
        EventSpec(
            "kvm_page_fault",
            "ftrace/kvm_page_fault",
            (
                _g(
                    rf"^vcpu (?P<vcpu>{U}) rip 0x(?P<rip>{H}) address 0x(?P<gpa>{H}) "
                    rf"error_code 0x(?P<error_code>{H})$",
                    vcpu="dec",
                    rip="hex",
                    gpa="hex",
                    error_code="hex",
                ),
                _raw(
                    [
                        ("vcpu_id", "vcpu", "num"),
                        ("guest_rip", "rip", "num"),
                        ("fault_address", "gpa", "num"),
                        ("error_code", "error_code", "num"),
                    ]
                ),
            ),
            "arch/x86/kvm/trace.h kvm_page_fault (v6.5, v7)",
        ),
        EventSpec(
            "kvm_tdp_mmu_spte_changed",
            "ftrace/kvm_tdp_mmu_spte_changed",
            (
                _g(
                    rf"^as id (?P<as_id>{U}) gfn (?P<gfn>{H}) level (?P<level>{U}) "
                    rf"old_spte (?P<old_spte>{H}) new_spte (?P<new_spte>{H})$",
                    as_id="dec",
                    gfn="hex",
                    level="dec",
                    old_spte="hex",
                    new_spte="hex",
                ),
                _raw(
                    [
                        ("gfn", "gfn", "num"),
                        ("old_spte", "old_spte", "num"),
                        ("new_spte", "new_spte", "num"),
                        ("level", "level", "num"),
                        ("as_id", "as_id", "num"),
                    ]
                ),
            ),
            f"{_KVM_MMU} kvm_tdp_mmu_spte_changed (v6.5, v7)",
        ),
        EventSpec(
            "kvm_mmu_spte_requested",
            "ftrace/kvm_mmu_spte_requested",
            (
                _g(
                    rf"^gfn (?P<gfn>{H}) pfn (?P<pfn>{H}) level (?P<level>{U})$",
                    gfn="hex",
                    pfn="hex",
                    level="dec",
                ),
                _raw([("gfn", "gfn", "num"), ("pfn", "pfn", "num"), ("level", "level", "num")]),
            ),
            f"{_KVM_MMU} kvm_mmu_spte_requested (v6.5, v7)",
        ),
        EventSpec(
            "kvm_mmu_set_spte",
            "ftrace/kvm_mmu_set_spte",
            (
                _g(
                    rf"^gfn (?P<gfn>{H}) spte (?P<spte>{H}) \((?P<access>[r-][w-][x-][u-]?)\) "
                    rf"level (?P<level>{U}) at (?P<sptep>{H})$",
                    gfn="hex",
                    spte="hex",
                    access="str",
                    level="dec",
                    sptep="hex",
                ),
            ),
            f"{_KVM_MMU} kvm_mmu_set_spte (v6.5, v7)",
        ),
        EventSpec(
            "kvm_mmu_prepare_zap_page",
            "ftrace/kvm_mmu_prepare_zap_page",
            (
                _g(
                    rf"^sp gen (?P<mmu_valid_gen>{U}) gfn (?P<gfn>{H}) l(?P<level>{U}) "
                    rf"(?P<gpte_bytes>{U})-byte q(?P<quadrant>{U})(?P<direct> direct)? "
                    r"(?P<access>[w-][u-][x-])(?P<invalid> invalid)? (?P<efer_nx>!)?nxe "
                    rf"(?P<ad_disabled>!)?ad root (?P<root_count>{U}) (?P<unsync>un)?sync$",
                    mmu_valid_gen="dec",
                    gfn="hex",
                    level="dec",
                    gpte_bytes="dec",
                    quadrant="dec",
                    direct="flag",
                    access="str",
                    invalid="flag",
                    efer_nx="noflag",
                    ad_disabled="flag",
                    root_count="dec",
                    unsync="flag",
                ),
            ),
            f"{_KVM_MMU} KVM_MMU_PAGE_PRINTK (v6.5, v7)",
        ),
        EventSpec(
            "kvm_exit",
            "ftrace/kvm_exit",
            (
                # v7 appends `requests 0x%016llx`; the reason may contain spaces ("DE excp").
                _split(
                    rf"^vcpu (?P<vcpu>{U}) reason (?P<reason>.+)$",
                    " rip 0x",
                    rf"^(?P<rip>{H}) info1 0x(?P<info1>{H}) info2 0x(?P<info2>{H}) "
                    rf"intr_info 0x(?P<intr_info>{H}) error_code 0x(?P<error_code>{H})"
                    rf"(?: requests 0x(?P<requests>{H}))?$",
                    vcpu="dec",
                    reason="str",
                    rip="hex",
                    info1="hex",
                    info2="hex",
                    intr_info="hex",
                    error_code="hex",
                    requests="hex",
                ),
            ),
            "arch/x86/kvm/trace.h kvm_exit (v6.5; v7 adds requests)",
        ),
        EventSpec(
            "kvm_entry",
            "ftrace/kvm_entry",
            (
                # v6.5: "vcpu %u, rip 0x%lx"; v6.9+ appends "[immediate exit]";
                # v7 adds " intr_info 0x%08x error_code 0x%08x" before it.
                _g(
                    rf"^vcpu (?P<vcpu>{U}), rip 0x(?P<rip>{H})"
                    rf"(?: intr_info 0x(?P<intr_info>{H}) error_code 0x(?P<error_code>{H}))?"
                    r"(?P<immediate_exit>\[immediate exit\])?$",
                    vcpu="dec",
                    rip="hex",
                    intr_info="hex",
                    error_code="hex",
                    immediate_exit="flag",
                ),
            ),
            "arch/x86/kvm/trace.h kvm_entry (v6.5, v6.9, v7)",
        ),
        EventSpec(
            "tlb_flush",
            "ftrace/tlb_flush",
            (
                # The strings changed case in v7 ("local MM shootdown"); the code did not.
                _g(
                    rf"^pages:(?P<pages>{D}) reason:(?P<reason>.+) \((?P<reason_code>{D})\)$",
                    pages="dec",
                    reason="str",
                    reason_code="dec",
                ),
                # `trace-cmd report` of a trace.dat: libtraceevent's tlb plugin prints
                # "pages=%ld reason=%s (%d)" with its own lower-case strings, and an empty
                # string for codes it does not know (4, 5): seen on 6.18 with trace-cmd 3.1.6.
                _g(
                    rf"^pages=(?P<pages>{D}) reason=(?P<reason>.*) \((?P<reason_code>{D})\)$",
                    pages="dec",
                    reason="str",
                    reason_code="dec",
                ),
                _g(
                    rf"^reason=(?P<reason_code>{NUM}) pages=(?P<pages>{NUM})$",
                    reason_code="num",
                    pages="wrap",
                    reason="enum:tlb_flush_reason@reason_code",
                ),
            ),
            "include/trace/events/tlb.h tlb_flush (v6.5, v7 strings differ)",
        ),
        EventSpec(
            "ipi_send_cpumask",
            "ftrace/ipi_send_cpumask",
            (
                _g(
                    r"^cpumask=(?P<cpumask>[^ ]*) callsite=(?P<callsite>[^ ]+) "
                    r"callback=(?P<callback>[^ ]+)$",
                    cpumask="str",
                    callsite="str",
                    callback="str",
                ),
            ),
            "include/trace/events/ipi.h ipi_send_cpumask (v6.5, v7)",
        ),
        EventSpec(
            "sched_skip_vma_numa",
            "ftrace/sched_skip_vma_numa",
            (
                _g(
                    rf"^numa_scan_offset=(?P<numa_scan_offset>{H}) vm_start=(?P<vm_start>{H}) "
                    rf"vm_end=(?P<vm_end>{H}) reason=(?P<reason>[a-z_]+)$",
                    numa_scan_offset="hex",
                    vm_start="hex",
                    vm_end="hex",
                    reason="str",
                ),
                _raw(
                    [
                        ("numa_scan_offset", "numa_scan_offset", "num"),
                        ("vm_start", "vm_start", "num"),
                        ("vm_end", "vm_end", "num"),
                        ("reason", "reason", "enum:numab_skip_reason"),
                    ]
                ),
            ),
            "include/trace/events/sched.h sched_skip_vma_numa (v6.7+, v7)",
        ),
        *(
            EventSpec(
                name,
                f"ftrace/{name}",
                (
                    _g(
                        rf"^pid=(?P<task_pid>{D}) tgid=(?P<tgid>{D}) ngid=(?P<ngid>{D}) "
                        rf"src_cpu=(?P<src_cpu>{D}) src_nid=(?P<src_nid>{D}) "
                        rf"dst_cpu=(?P<dst_cpu>{D}) dst_nid=(?P<dst_nid>{D})$",
                        **dict.fromkeys(
                            ("task_pid", "tgid", "ngid", "src_cpu", "src_nid", "dst_cpu"),
                            "dec",
                        ),
                        dst_nid="dec",
                    ),
                    _raw(
                        [
                            ("pid", "task_pid", "num"),
                            *(
                                (c, c, "num")
                                for c in ("tgid", "ngid", "src_cpu", "src_nid", "dst_cpu")
                            ),
                            ("dst_nid", "dst_nid", "num"),
                        ]
                    ),
                ),
                "include/trace/events/sched.h sched_move_numa (v6.5, v7)",
            )
            for name in ("sched_move_numa",)
        ),
        *(
            EventSpec(
                name,
                f"ftrace/{name}",
                (
                    _g(
                        "^"
                        + " ".join(
                            f"{side}_{f}=(?P<{side}_{f}>{D})"
                            for side in ("src", "dst")
                            for f in ("pid", "tgid", "ngid", "cpu", "nid")
                        )
                        + "$",
                        **{
                            f"{side}_{f}": "dec"
                            for side in ("src", "dst")
                            for f in ("pid", "tgid", "ngid", "cpu", "nid")
                        },
                    ),
                    _raw(
                        [
                            (f"{side}_{f}", f"{side}_{f}", "num")
                            for side in ("src", "dst")
                            for f in ("pid", "tgid", "ngid", "cpu", "nid")
                        ]
                    ),
                ),
                f"include/trace/events/sched.h {name} (sched_numa_pair_template; v6.5, v7)",
            )
            for name in ("sched_stick_numa", "sched_swap_numa")
        ),
        EventSpec(
            "mm_migrate_pages",
            "ftrace/mm_migrate_pages",
            (
                # v7.x inserts nr_split=%lu after nr_thp_split.
                _g(
                    rf"^nr_succeeded=(?P<nr_succeeded>{U}) nr_failed=(?P<nr_failed>{U}) "
                    rf"nr_thp_succeeded=(?P<nr_thp_succeeded>{U}) "
                    rf"nr_thp_failed=(?P<nr_thp_failed>{U}) nr_thp_split=(?P<nr_thp_split>{U})"
                    rf"(?: nr_split=(?P<nr_split>{U}))? mode=(?P<mode>[A-Z_]+) "
                    r"reason=(?P<reason>[a-z_]+)$",
                    nr_succeeded="dec",
                    nr_failed="dec",
                    nr_thp_succeeded="dec",
                    nr_thp_failed="dec",
                    nr_thp_split="dec",
                    nr_split="dec",
                    mode="str",
                    reason="str",
                ),
                _raw(
                    [
                        ("succeeded", "nr_succeeded", "num"),
                        ("failed", "nr_failed", "num"),
                        ("thp_succeeded", "nr_thp_succeeded", "num"),
                        ("thp_failed", "nr_thp_failed", "num"),
                        ("thp_split", "nr_thp_split", "num"),
                        ("large_folio_split", "nr_split", "num"),
                        ("mode", "mode", "enum:migrate_mode"),
                        ("reason", "reason", "enum:migrate_reason"),
                    ],
                    optional=("large_folio_split",),
                ),
            ),
            "include/trace/events/migrate.h mm_migrate_pages (v6.5; v7 adds nr_split)",
        ),
        EventSpec(
            "mm_migrate_pages_start",
            "ftrace/mm_migrate_pages_start",
            (
                _g(
                    r"^mode=(?P<mode>[A-Z_]+) reason=(?P<reason>[a-z_]+)$",
                    mode="str",
                    reason="str",
                ),
                _raw(
                    [
                        ("mode", "mode", "enum:migrate_mode"),
                        ("reason", "reason", "enum:migrate_reason"),
                    ]
                ),
            ),
            "include/trace/events/migrate.h mm_migrate_pages_start (v6.5, v7)",
        ),
        EventSpec(
            "damon_aggregated",
            "ftrace/damon_aggregated",
            (
                _g(
                    rf"^target_id=(?P<target_id>{U}) nr_regions=(?P<nr_regions>{U}) "
                    rf"(?P<start>{U})-(?P<end>{U}): (?P<nr_accesses>{U}) (?P<age>{U})$",
                    **dict.fromkeys(
                        ("target_id", "nr_regions", "start", "end", "nr_accesses", "age"), "dec"
                    ),
                ),
                _raw(
                    [
                        (c, c, "num")
                        for c in ("target_id", "nr_regions", "start", "end", "nr_accesses", "age")
                    ]
                ),
            ),
            "include/trace/events/damon.h damon_aggregated (v6.5, v7)",
        ),
        EventSpec(
            "page_fault_user",
            "ftrace/page_fault_user",
            (
                # %ps of a user address prints it as 0x-hex; a symbol would be quarantined.
                _g(
                    r"^address=(?P<address>0x[0-9a-f]+) ip=(?P<ip>0x[0-9a-f]+) "
                    rf"error_code=0x(?P<error_code>{H})$",
                    address="num",
                    ip="num",
                    error_code="hex",
                ),
                _raw(
                    [
                        ("address", "address", "num"),
                        ("ip", "ip", "num"),
                        ("error_code", "error_code", "num"),
                    ]
                ),
            ),
            "arch/x86/include/asm/trace/exceptions.h (v6.5), "
            "include/trace/events/exceptions.h (v7)",
        ),
        EventSpec(
            "tracing_mark_write",
            "ftrace/tracing_mark_write",
            (_g(r"^(?P<buf>.*)$", buf="str"),),
            "kernel/trace/trace_output.c trace_print_print (ftrace:print, tracefs)",
        ),
        EventSpec(
            "print",
            "ftrace/tracing_mark_write",
            (_g(r"^tracing_mark_write: ?(?P<buf>.*)$", buf="str"),),
            "ftrace:print as named by trace-cmd report",
        ),
    )
}


def event_tables() -> list[str]:
    """Every table ingest writes under ftrace/ (one per known event, then _other)."""
    return [*sorted({s.table for s in SPECS.values()}), OTHER_TABLE]


# --------------------------------------------------------------------------- line grammar

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
        name = _symbols()[kind[5:]].get(value)
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
        return Bad(_cut(last, "not an ftrace event line"))
    pid = int(m["pid"])
    if pid > _INT_RANGE["int32"][1]:
        return Bad(_cut(last, "pid out of range"))
    frac = m["frac"]
    if int(m["sec"]) > MAX_TS_SEC:
        return Bad(_cut(last, "timestamp out of range"))
    ts_ns = int(m["sec"]) * 1_000_000_000 + int(frac) * 10 ** (9 - len(frac))
    comm = m["comm"]
    payload = (m["payload"] or "").strip(PAYLOAD_BLANKS)
    result = parse_payload(m["event"], payload)
    if isinstance(result, Bad):
        return Bad(_cut(last, result.reason))
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


def _cut(last: bool, reason: str) -> str:
    return f"cut-off last line (no newline at end of input): {reason}" if last else reason


# --------------------------------------------------------------------------- vectorized path


@dataclass
class ChunkResult:
    """What one chunk of lines produced; counts satisfy lines == parsed + comments + quarantined."""

    tables: dict[str, pa.Table]
    quarantine: pa.Table
    lines: int = 0
    parsed: int = 0
    comments: int = 0
    quarantined: int = 0
    lost: dict[int, int] = field(default_factory=dict)
    first_ts_ns: int | None = None


def _lines_series(buf: bytes, starts: np.ndarray) -> pl.Series:
    """Each line of ``buf`` (with its newline, if any) as one string, zero-copy into Arrow."""
    offsets = np.empty(len(starts) + 1, np.int64)
    offsets[:-1] = starts
    offsets[-1] = len(buf)
    arr = pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(buf))
    series = pl.from_arrow(arr)
    assert isinstance(series, pl.Series)
    return series.alias("line")


# A metadata line (see _META_RE) never has an event line's structure, except through these
# prefixes; a comm starting with one is left to the exact grammar.
_META_PREFIX = r"^(?:#|version = [0-9]|CPU[0-9]+ data recorded at offset=|[0-9]+ bytes in size)"
_MID_RE = r"^ +(?:[^ ]+ +)?[0-9]{1,12}\.[0-9]{1,9}$"  # between "]" and ": ": flags, timestamp


def _header_fast(lines: pl.Series, *, ascii_only: bool) -> tuple[np.ndarray, pl.DataFrame]:
    """Split the headers of all lines at once with polars string kernels.

    Each piece is cut at the first ``[``, ``]``, ``": "`` and the pid's dash, then checked
    against its part of the grammar; a line whose pieces do not all check out is left to
    :func:`parse_line` (tgid column, odd comms, non-ASCII, metadata). Returns the mask of
    lines handled here and a frame (row, common columns, event, payload) for them.
    """
    line = pl.col("line")
    frame = pl.DataFrame({"line": lines}).with_row_index("row")
    pos = frame.select(
        "row",
        "line",
        line.str.find(": ", literal=True).alias("k1"),
        line.str.find("[", literal=True).alias("lb"),
        (pl.lit(True) if ascii_only else line.str.len_bytes() == line.str.len_chars()).alias(
            "ascii"
        ),
    )
    pos = pos.with_columns(
        (line.str.slice(pl.col("lb")).str.find("]", literal=True) + pl.col("lb")).alias("rb"),
        (line.str.slice(pl.col("k1") + 2).str.find(": ", literal=True) + pl.col("k1") + 2).alias(
            "k2"
        ),
        line.str.slice(0, pl.col("lb")).str.find(r"-[0-9]{1,10} +$").alias("d"),
    )
    pos = pos.filter(
        pl.col("ascii")
        & (pl.col("d") < pl.col("lb"))
        & (pl.col("rb") < pl.col("k1"))
        & (pl.col("k1") + 2 < pl.col("k2"))
    )
    head = line.str.slice(0, pl.col("lb"))
    mid = line.str.slice(pl.col("rb") + 1, pl.col("k1") - pl.col("rb") - 1)
    pieces = pos.select(
        "row",
        head.str.slice(0, pl.col("d")).str.strip_chars_start(" ").alias("comm"),
        head.str.slice(pl.col("d") + 1).str.strip_chars_end(" ").alias("pid"),
        line.str.slice(pl.col("lb") + 1, pl.col("rb") - pl.col("lb") - 1).alias("cpu"),
        mid.alias("mid"),
        line.str.slice(pl.col("k1") + 2, pl.col("k2") - pl.col("k1") - 2).alias("event"),
        line.str.slice(pl.col("k2") + 2).str.strip_chars(PAYLOAD_BLANKS).alias("payload"),
    )
    sure = (
        pl.col("cpu").str.contains(r"^[0-9]{1,6}$")
        & pl.col("mid").str.contains(_MID_RE)
        & pl.col("event").str.contains(r"^[^ :]+$")
        & (pl.col("comm") != "")
        & ~pl.col("comm").str.contains(_META_PREFIX)
    )
    pieces = pieces.filter(sure)
    mid = pl.col("mid")
    pieces = pieces.with_columns(mid.str.find(r" [0-9]+\.[0-9]+$").alias("ts_at"))
    pieces = pieces.with_columns(
        mid.str.slice(0, pl.col("ts_at")).str.strip_chars(" ").alias("flags"),
        mid.str.slice(pl.col("ts_at") + 1).alias("ts"),
    ).with_columns(pl.col("ts").str.find(".", literal=True).alias("dot"))
    ts = pl.col("ts")
    pieces = pieces.with_columns(
        pl.col("pid").str.to_integer(dtype=pl.Int64, strict=False).alias("pid"),
        ts.str.slice(0, pl.col("dot")).str.to_integer(dtype=pl.Int64, strict=False).alias("sec"),
        ts.str.slice(pl.col("dot") + 1)
        .str.pad_end(9, "0")
        .str.to_integer(dtype=pl.Int64, strict=False)
        .alias("frac_ns"),
    ).filter((pl.col("pid") <= (1 << 31) - 1) & (pl.col("sec") <= MAX_TS_SEC))
    out = pieces.select(
        pl.col("row").cast(pl.Int64),
        (pl.col("sec") * 1_000_000_000 + pl.col("frac_ns")).alias("ts_ns"),
        pl.col("cpu").str.to_integer(dtype=pl.Int32, strict=False).alias("cpu"),
        pl.col("pid").cast(pl.Int32),
        pl.when(pl.col("comm") != "<...>").then(pl.col("comm")).alias("comm"),
        pl.when(pl.col("flags") != "").then(pl.col("flags")).alias("flags"),
        "event",
        "payload",
    )
    fast = np.zeros(lines.len(), bool)
    fast[out["row"].to_numpy()] = True
    return fast, out


def _convert_expr(group: str, kind: str, dtype: pl.DataType) -> pl.Expr:
    """The polars twin of :func:`_convert` for a whole column of captured groups."""
    g = pl.col(group)
    if kind == "flag":
        return g.is_not_null()
    if kind == "noflag":
        return g.is_null()
    if kind == "str":
        return g
    if kind == "dec":
        wide = pl.UInt64 if dtype == pl.UInt64 else pl.Int64
        return g.str.to_integer(base=10, dtype=wide, strict=False).cast(dtype, strict=False)
    if kind == "hex":
        return g.str.to_integer(base=16, dtype=pl.UInt64, strict=False).cast(dtype, strict=False)
    unsigned = (
        pl.when(g.str.starts_with("0x"))
        .then(g.str.slice(2).str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        .when(g.str.starts_with("-"))
        .then(None)
        .otherwise(g.str.to_integer(base=10, dtype=pl.UInt64, strict=False))
    )
    if kind == "num":
        if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64):
            negative = g.str.to_integer(base=10, dtype=pl.Int64, strict=False)
            return (
                pl.when(g.str.starts_with("-"))
                .then(negative)
                .otherwise(unsigned.cast(pl.Int64, strict=False))
                .cast(dtype, strict=False)
            )
        return unsigned.cast(dtype, strict=False)
    if kind == "wrap":
        return unsigned.reinterpret(signed=True).cast(dtype, strict=False)
    if kind.startswith("enum:"):
        mapping = _symbols()[kind[5:]]
        return unsigned.replace_strict(
            list(mapping), list(mapping.values()), default=None, return_dtype=pl.String
        )
    msg = f"unknown field kind {kind}"  # pragma: no cover - a grammar bug
    raise ValueError(msg)


_MATCH = "m_all"


@cache
def _wrapped(pattern: str) -> str:
    """The pattern with one outer group, non-null exactly when the whole pattern matched."""
    assert pattern.startswith("^") and pattern.endswith("$")
    return f"^(?P<{_MATCH}>{pattern[1:-1]})$"


def _apply_grammar(spec: EventSpec, grammar: Grammar, rows: pl.DataFrame) -> pl.DataFrame:
    """Match ``rows.payload`` against one grammar: typed columns and ``_ok`` per row."""
    payload = pl.col("payload")
    if grammar.split is None or grammar.tail is None:
        m = rows.select(
            "row",
            *COMMON_COLUMNS,
            payload.str.extract_groups(_wrapped(grammar.pattern)).alias("_m"),
        ).unnest("_m")
        matched = pl.col(_MATCH).is_not_null()
    else:
        at = payload.str.find(grammar.split, literal=True)
        m = (
            rows.with_columns(at.alias("_at"))
            .select(
                "row",
                *COMMON_COLUMNS,
                payload.str.slice(0, pl.col("_at"))
                .str.extract_groups(_wrapped(grammar.pattern))
                .alias("_h"),
                payload.str.slice(pl.col("_at") + len(grammar.split))
                .str.extract_groups(_wrapped(grammar.tail).replace(_MATCH, "m_tail"))
                .alias("_t"),
            )
            .unnest("_h", "_t")
        )
        matched = pl.col(_MATCH).is_not_null() & pl.col("m_tail").is_not_null()
    dtypes = table_schema(spec.table).polars()
    exprs: list[pl.Expr] = []
    checks: list[pl.Expr] = [matched]
    for col in spec.columns:
        full = grammar.kinds.get(col)
        if full is None:
            exprs.append(pl.lit(None, dtype=dtypes[col]).alias(col))
            continue
        kind, _, group = full.partition("@")
        expr = _convert_expr(group or col, kind, dtypes[col])
        exprs.append(expr.alias(col))
        if kind not in ("flag", "noflag", "str"):
            checks.append(pl.col(group or col).is_null() | expr.is_not_null())
    return m.select("row", *COMMON_COLUMNS, *exprs, pl.all_horizontal(checks).alias("_ok"))


def _parse_events(frame: pl.DataFrame) -> tuple[dict[str, list[pl.DataFrame]], pl.DataFrame]:
    """Per event, run its grammars once over all its rows. Returns typed frames and bad rows."""
    out: dict[str, list[pl.DataFrame]] = {}
    bad: list[pl.DataFrame] = []
    for (event,), rows in frame.group_by("event"):
        name = str(event)
        spec = SPECS.get(name)
        if spec is None:
            out.setdefault(OTHER_TABLE, []).append(
                rows.select("row", *COMMON_COLUMNS, "event", "payload")
            )
            continue
        pending = rows
        for grammar in spec.grammars:
            done = _apply_grammar(spec, grammar, pending)
            good = done["_ok"]
            n_good = good.sum()
            if n_good == done.height:
                out.setdefault(spec.table, []).append(done.drop("_ok"))
                pending = pending.clear()
                break
            if n_good:
                out.setdefault(spec.table, []).append(done.filter(good).drop("_ok"))
            pending = pending.filter(~good)
        if pending.height:
            reason = f"payload does not match the `{name}` format"
            bad.append(pending.select("row", pl.lit(reason).alias("reason")))
    empty = pl.DataFrame(schema={"row": pl.Int64, "reason": pl.String})
    return out, pl.concat(bad) if bad else empty


def default_parser() -> str:
    """``"c"`` when the compiled scanner is built, else ``"polars"``.

    ``TLBREPLAY_INGEST_PARSER=polars`` forces the polars path (tests, benchmarks).
    """
    from pipeline.ingest import fastscan

    forced = os.environ.get("TLBREPLAY_INGEST_PARSER")
    if forced in PARSERS:
        return forced
    return "c" if fastscan.available() else "polars"


PARSERS = ("c", "polars")


def parse_chunk(
    buf: bytes,
    *,
    source: str,
    first_lineno: int = 1,
    final: bool = False,
    parser: str | None = None,
) -> ChunkResult:
    """Parse a block of whole lines; ``lines == parsed + comments + quarantined`` in the result.

    ``buf`` ends with a newline unless it holds the end of the input (``final``), whose last
    line, if it has no newline and does not parse, is reported as cut off. ``parser`` is
    ``"c"`` (the compiled scanner, :mod:`pipeline.ingest.fastscan`) or ``"polars"``; both give
    the same result. Default: :func:`default_parser`.
    """
    if (parser or default_parser()) == "c":
        from pipeline.ingest import fastscan

        return fastscan.parse_chunk_c(buf, source=source, first_lineno=first_lineno, final=final)
    return parse_chunk_polars(buf, source=source, first_lineno=first_lineno, final=final)


@dataclass
class Part:
    """Rows of one table from one path: their line indexes and the conformed rows."""

    rows: np.ndarray
    table: pa.Table


def frame_part(frame: pl.DataFrame, table: str) -> Part:
    """A polars frame with a ``row`` column as a conformed :class:`Part`."""
    rows = frame["row"].to_numpy().astype(np.int64)
    return Part(rows, conform(frame.select(table_schema(table).names), table))


@dataclass
class Lines:
    """The lines of a block: ``buf[starts[r]:ends[r]]`` (without the newline)."""

    buf: bytes
    starts: np.ndarray
    ends: np.ndarray
    cut_last: bool

    def text(self, r: int) -> str:
        return self.buf[self.starts[r] : self.ends[r]].decode("utf-8", "replace")

    def last(self, r: int) -> bool:
        return self.cut_last and r == len(self.starts) - 1


@dataclass
class Collected:
    """What the paths of one block produced, before it becomes a :class:`ChunkResult`."""

    parts: dict[str, list[Part]] = field(default_factory=dict)
    quarantine: list[tuple[int, str]] = field(default_factory=list)
    comments: int = 0
    lost: dict[int, int] = field(default_factory=dict)

    def add(self, table: str, part: Part) -> None:
        self.parts.setdefault(table, []).append(part)

    def exact(self, lines: Lines, rows: list[int]) -> None:
        """Parse ``rows`` with the exact per-line grammar."""
        slow_events: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            res = parse_line(lines.text(r), last=lines.last(r))
            if isinstance(res, Comment):
                self.comments += 1
                if res.lost is not None:
                    self.lost[res.lost[0]] = self.lost.get(res.lost[0], 0) + res.lost[1]
            elif isinstance(res, Bad):
                self.quarantine.append((r, res.reason))
            else:
                row: dict[str, Any] = {"row": r, "ts_ns": res.ts_ns, "cpu": res.cpu}
                row |= {"pid": res.pid, "comm": res.comm, "flags": res.flags, **res.values}
                slow_events.setdefault(res.table, []).append(row)
        for table, found in slow_events.items():
            schema = pl.Schema({"row": pl.Int64(), **table_schema(table).polars()})
            self.add(table, frame_part(pl.DataFrame(found, schema=schema), table))

    def events(self, lines: Lines, frame: pl.DataFrame) -> None:
        """Parse the payloads of ``frame`` (header already cut) with the polars grammars."""
        typed, bad = _parse_events(frame)
        for table, frames in typed.items():
            for f in frames:
                self.add(table, frame_part(f, table))
        for r, reason in bad.iter_rows():
            self.quarantine.append((r, _cut(lines.last(r), reason)))

    def result(self, lines: Lines, *, source: str, first_lineno: int) -> ChunkResult:
        tables: dict[str, pa.Table] = {}
        parsed = 0
        first_ts: int | None = None
        for table, parts in sorted(self.parts.items()):
            if len(parts) == 1:
                merged = parts[0].table
            else:
                merged = pa.concat_tables([p.table for p in parts])
                order = np.argsort(np.concatenate([p.rows for p in parts]), kind="stable")
                merged = merged.take(pa.array(order))
            parsed += merged.num_rows
            ts = merged.column("ts_ns")
            if merged.num_rows:
                t = int(np.min(ts.to_numpy()))
                first_ts = t if first_ts is None else min(first_ts, t)
            tables[table] = merged
        rows = sorted(self.quarantine)
        quarantine = pa.table(
            {
                "source": pa.array([source] * len(rows), pa.string()),
                "lineno": pa.array([first_lineno + r for r, _ in rows], pa.int64()),
                "line": pa.array([lines.text(r) for r, _ in rows], pa.string()),
                "reason": pa.array([reason for _, reason in rows], pa.string()),
            }
        )
        return ChunkResult(
            tables=tables,
            quarantine=conform(quarantine, "quarantine"),
            lines=len(lines.starts),
            parsed=parsed,
            comments=self.comments,
            quarantined=len(rows),
            lost=self.lost,
            first_ts_ns=first_ts,
        )


def parse_chunk_polars(
    buf: bytes, *, source: str, first_lineno: int = 1, final: bool = False
) -> ChunkResult:
    """:func:`parse_chunk` with polars string kernels (the path without the compiled scanner)."""
    ascii_only = buf.isascii()
    if not ascii_only:
        buf = buf.decode("utf-8", "replace").encode("utf-8")
    a = np.frombuffer(buf, np.uint8)
    nl = np.flatnonzero(a == 10)
    open_end = len(buf) > 0 and buf[-1:] != b"\n"
    starts = np.concatenate(([0], nl + 1)).astype(np.int64)[: len(nl) + int(open_end)]
    ends = np.concatenate((nl, [len(buf)])).astype(np.int64)[: len(starts)]
    lines = Lines(buf, starts, ends, final and open_end)
    got = Collected()
    if len(starts):
        fast, frame = _header_fast(_lines_series(buf, starts), ascii_only=ascii_only)
    else:
        fast, frame = np.zeros(0, bool), pl.DataFrame()
    got.exact(lines, np.flatnonzero(~fast).tolist())
    if frame.height:
        got.events(lines, frame)
    return got.result(lines, source=source, first_lineno=first_lineno)
