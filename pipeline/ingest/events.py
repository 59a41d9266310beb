"""The ftrace event grammars: one payload grammar per known event, as the kernel prints it.

The payload is the event's ``TP_printk`` output (KERNEL.md section 9; formats checked against
``/sys/kernel/tracing/events/*/*/format`` on Linux 6.18 and the v6.5 sources), or, with
``trace-cmd report -R``, the raw ``field=value`` list. :data:`SPECS` maps each event to its
table and grammars; every parser (:mod:`pipeline.ingest.lines`,
:mod:`pipeline.ingest.polarsscan`, :mod:`pipeline.ingest.fastscan`) reads it from here.

Why one module over 500 lines: it is a table, one grammar per traced event with its kernel
source; splitting a table by size would only scatter it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from pipeline.schema import enums, table_schema

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
def symbol_tables() -> dict[str, dict[int, str]]:
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
