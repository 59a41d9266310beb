"""The pure ftrace grammar: every event in its v6.5 and v7 formats, header variants, equivalence
of the vectorized and the per-line paths, and property tests (parse or quarantine, never raise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.events import OTHER_TABLE, SPECS
from pipeline.ingest.ftrace import parse_chunk
from pipeline.ingest.lines import Bad, Comment, Event, parse_line

DATA = Path(__file__).resolve().parents[1] / "data" / "ftrace"
ALL_EVENTS = {
    "kvm_unmap_hva_range",
    "kvm_page_fault",
    "kvm_tdp_mmu_spte_changed",
    "kvm_mmu_spte_requested",
    "kvm_mmu_set_spte",
    "kvm_mmu_prepare_zap_page",
    "kvm_exit",
    "kvm_entry",
    "tlb_flush",
    "ipi_send_cpumask",
    "sched_move_numa",
    "sched_stick_numa",
    "sched_swap_numa",
    "mm_migrate_pages",
    "mm_migrate_pages_start",
    "damon_aggregated",
    "page_fault_user",
    "tracing_mark_write",
}


def rows_by_table(buf: bytes) -> dict[str, list[dict[str, Any]]]:
    result = parse_chunk(buf, source="t", final=True)
    assert result.lines == result.parsed + result.comments + result.quarantined
    return {t: rows.to_pylist() for t, rows in result.tables.items()}


def slow_rows(buf: bytes) -> tuple[dict[str, list[dict[str, Any]]], list[str], int]:
    """The same input through parse_line only: (rows per table, bad reasons, comments)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    bad: list[str] = []
    comments = 0
    lines = buf.decode("utf-8", "replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    open_end = not buf.endswith(b"\n")
    for i, line in enumerate(lines):
        res = parse_line(line, last=open_end and i == len(lines) - 1)
        if isinstance(res, Comment):
            comments += 1
        elif isinstance(res, Bad):
            bad.append(res.reason)
        else:
            assert isinstance(res, Event)
            row = {"ts_ns": res.ts_ns, "cpu": res.cpu, "pid": res.pid, "comm": res.comm}
            row |= {"flags": res.flags, **res.values}
            tables.setdefault(res.table, []).append(row)
    return tables, bad, comments


def assert_same_as_slow(buf: bytes) -> None:
    fast = parse_chunk(buf, source="t", final=True)
    tables, bad, comments = slow_rows(buf)
    assert fast.comments == comments
    assert fast.quarantine.column("reason").to_pylist() == bad
    assert {t: r.to_pylist() for t, r in fast.tables.items()} == tables


@pytest.mark.parametrize("name", ["v6.5_tracefs.txt", "v7_tracefs.txt"])
def test_every_event_parses_in_both_formats(name: str) -> None:
    buf = (DATA / name).read_bytes()
    result = parse_chunk(buf, source=name, final=True)
    assert result.quarantined == 0, result.quarantine.to_pylist()
    tables = {t.removeprefix("ftrace/") for t in result.tables}
    expected = ALL_EVENTS - ({"sched_skip_vma_numa"} if "v6.5" in name else set())
    assert expected <= tables | {"sched_skip_vma_numa"}
    assert OTHER_TABLE not in result.tables
    assert result.first_ts_ns is not None
    assert_same_as_slow(buf)


def test_v65_values() -> None:
    t = rows_by_table((DATA / "v6.5_tracefs.txt").read_bytes())
    (pf,) = t["ftrace/kvm_page_fault"]
    assert pf == {
        "ts_ns": 100_000_011_000,
        "cpu": 0,
        "pid": 4242,
        "comm": "CPU 0/KVM",
        "flags": ".....",
        "vcpu": 0,
        "rip": 0xFFFFFFFF8100ABCD,
        "gpa": 0x12345000,
        "error_code": 0x182,
    }
    (hva,) = t["ftrace/kvm_unmap_hva_range"]
    assert (hva["hva_start"], hva["hva_end"]) == (0x7F0000000000, 0x7F0040000000)
    flushes = t["ftrace/tlb_flush"]
    assert [(f["pages"], f["reason_code"]) for f in flushes] == [(-1, 3), (1, 4)]
    (mig,) = t["ftrace/mm_migrate_pages"]
    assert mig["nr_split"] is None and mig["reason"] == "numa_misplaced"
    (exit_,) = t["ftrace/kvm_exit"]
    assert exit_["requests"] is None and exit_["reason"] == "EPT_VIOLATION"
    (entry,) = t["ftrace/kvm_entry"]
    assert entry["intr_info"] is None and entry["immediate_exit"] is False
    (zap,) = t["ftrace/kvm_mmu_prepare_zap_page"]
    assert zap["direct"] and zap["efer_nx"] and not zap["ad_disabled"] and not zap["unsync"]
    (mark,) = t["ftrace/tracing_mark_write"]
    assert mark["comm"] is None and mark["buf"] == "lab: phase=touch start"
    (stick,) = t["ftrace/sched_stick_numa"]
    assert stick["dst_cpu"] == -1
    (damon,) = t["ftrace/damon_aggregated"]
    assert (damon["start"], damon["nr_accesses"], damon["age"]) == (139637976969216, 5, 2)


def test_v7_values() -> None:
    t = rows_by_table((DATA / "v7_tracefs.txt").read_bytes())
    zapped = t["ftrace/kvm_tdp_mmu_spte_changed"][0]
    assert zapped["new_spte"] == 0x8000000000000000
    assert [f["reason_code"] for f in t["ftrace/tlb_flush"]] == [3, 5]
    assert t["ftrace/tlb_flush"][0]["reason"] == "local MM shootdown"
    assert t["ftrace/mm_migrate_pages"][0]["nr_split"] == 0
    assert t["ftrace/kvm_exit"][0]["requests"] == 0
    entry = t["ftrace/kvm_entry"][0]
    assert entry["intr_info"] == 0 and entry["immediate_exit"] is True
    skip = t["ftrace/sched_skip_vma_numa"][0]
    assert skip["vm_end"] == 0x7F0040000000 and skip["reason"] == "pid_inactive"
    zap = t["ftrace/kvm_mmu_prepare_zap_page"][0]
    assert zap["invalid"] and not zap["efer_nx"] and zap["ad_disabled"] and zap["unsync"]
    assert t["ftrace/kvm_mmu_set_spte"][0]["access"] == "r-x"


def test_trace_cmd_report_layout() -> None:
    buf = (DATA / "trace_cmd_report.txt").read_bytes()
    result = parse_chunk(buf, source="r", final=True)
    assert result.quarantined == 0
    assert result.comments == 3  # the comment, cpus=2, the loss mark
    assert result.lost == {1: 7}
    t = {k: v.to_pylist() for k, v in result.tables.items()}
    hva = t["ftrace/kvm_unmap_hva_range"][0]
    assert hva["hva_start"] == 0 and hva["flags"] is None
    assert hva["ts_ns"] == 300_000_000_001
    assert t["ftrace/tracing_mark_write"][0]["buf"] == "hello"
    (other,) = t[OTHER_TABLE]
    assert other["event"] == "sched_switch" and other["payload"].startswith("prev_comm=CPU 0/KVM")
    assert_same_as_slow(buf)


def test_trace_cmd_raw_payloads() -> None:
    buf = (DATA / "trace_cmd_raw.txt").read_bytes()
    result = parse_chunk(buf, source="r", final=True)
    assert result.quarantined == 0, result.quarantine.to_pylist()
    t = {k: v.to_pylist() for k, v in result.tables.items()}
    assert t["ftrace/kvm_page_fault"][0]["gpa"] == 0x12345000
    assert t["ftrace/kvm_mmu_spte_requested"][0]["gfn"] == 0x12345
    flush = t["ftrace/tlb_flush"][0]
    assert (flush["pages"], flush["reason"], flush["reason_code"]) == (-1, "remote shootdown", 1)
    mig = t["ftrace/mm_migrate_pages"][0]
    assert (mig["mode"], mig["reason"], mig["nr_failed"]) == ("MIGRATE_ASYNC", "numa_misplaced", 1)
    assert t["ftrace/sched_skip_vma_numa"][0]["reason"] == "pid_inactive"
    assert t["ftrace/sched_move_numa"][0]["task_pid"] == 4243
    assert_same_as_slow(buf)


def test_noirq_and_tgid_layouts() -> None:
    buf = (DATA / "trace_pipe_noirq.txt").read_bytes()
    t = rows_by_table(buf)
    rows = t["ftrace/kvm_mmu_spte_requested"]
    assert [r["gfn"] for r in rows] == [0x20, 0x21, 0x22]
    assert rows[2]["pid"] == 4243 and rows[2]["flags"] is None
    assert_same_as_slow(buf)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("garbage", "not an ftrace event line"),
        ("  a-1 [000] .... 1.000001: tlb_flush: pages:x reason:y (1)", "tlb_flush"),
        ("  a-1 [000] .... 1.000001: kvm_page_fault: vcpu 0", "kvm_page_fault"),
        ("  a-9999999999 [000] .... 1.000001: tlb_flush: pages:1 reason:y (1)", "pid"),
        ("  a-1 [000] .... 99999999999.000001: tlb_flush: pages:1 reason:y (1)", "timestamp"),
        (
            "  a-1 [000] .... 1.000001: kvm_mmu_spte_requested: "
            "gfn 1ffffffffffffffff pfn 1 level 1",
            "kvm_mmu_spte_requested",
        ),
    ],
)
def test_bad_lines_are_quarantined_with_reason(line: str, reason: str) -> None:
    result = parse_chunk((line + "\n").encode(), source="f", first_lineno=7, final=True)
    assert result.quarantined == 1
    (row,) = result.quarantine.to_pylist()
    assert row["source"] == "f" and row["lineno"] == 7 and row["line"] == line
    assert reason in row["reason"]


def test_cut_off_last_line() -> None:
    buf = b"  a-1 [000] .... 1.000001: tlb_flush: pages:1 reason:remote shoot"
    result = parse_chunk(buf, source="f", final=True)
    (row,) = result.quarantine.to_pylist()
    assert row["reason"].startswith("cut-off last line")
    whole = b"  a-1 [000] .... 1.000001: tlb_flush: pages:1 reason:remote shootdown (1)"
    assert parse_chunk(whole, source="f", final=True).parsed == 1


def test_comment_hash_lines_are_comments_not_events() -> None:
    buf = b"# a-1 [000] .... 1.000001: tlb_flush: pages:1 reason:x (1)\n\n#\n"
    result = parse_chunk(buf, source="f", final=True)
    assert (result.comments, result.parsed) == (3, 0)


def test_every_spec_has_a_schema_with_docs() -> None:
    from pipeline.schema import table_schema

    for spec in SPECS.values():
        schema = table_schema(spec.table)
        assert schema.names[:5] == ["ts_ns", "cpu", "pid", "comm", "flags"]
        for grammar in spec.grammars:
            for col in grammar.kinds:
                assert col in schema.names, (spec.event, col)


# ---------------------------------------------------------------- property tests

FIXTURE_LINES = [
    line
    for name in ("v6.5_tracefs.txt", "v7_tracefs.txt", "trace_cmd_report.txt", "trace_cmd_raw.txt")
    for line in (DATA / name).read_text().splitlines()
    if not line.startswith("#")
]


@st.composite
def mutated_lines(draw: st.DrawFn) -> str:
    """A fixture line cut, with a character replaced, inserted or a number changed."""
    line = draw(st.sampled_from(FIXTURE_LINES))
    op = draw(st.sampled_from(["cut", "replace", "insert", "number", "keep"]))
    if not line or op == "keep":
        return line
    i = draw(st.integers(0, len(line) - 1))
    if op == "cut":
        return line[:i]
    ch = draw(st.sampled_from([*list(" -:[]().x0123456789abcdefF#\t\r\x00é="), "<...>"]))
    if op == "replace":
        return line[:i] + ch + line[i + 1 :]
    if op == "insert":
        return line[:i] + ch + line[i:]
    num = str(draw(st.integers(-(1 << 70), 1 << 70)))
    return line[:i] + num + line[i:]


any_line = st.one_of(
    mutated_lines(),
    st.text(max_size=120),
    st.binary(max_size=120).map(lambda b: b.decode("utf-8", "replace")),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(any_line.map(lambda s: s.replace("\n", " ")), min_size=1, max_size=12), st.booleans()
)
def test_any_lines_parse_or_quarantine_like_the_exact_grammar(
    lines: list[str], newline_at_end: bool
) -> None:
    buf = "\n".join(lines).encode("utf-8", "surrogatepass") + (b"\n" if newline_at_end else b"")
    result = parse_chunk(buf, source="p", final=True)
    assert result.lines == result.parsed + result.comments + result.quarantined
    assert result.lines == len(lines) - (1 if not newline_at_end and lines[-1] == "" else 0)
    assert all(result.quarantine.column("reason").to_pylist())
    assert_same_as_slow(buf)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_chunk(data, source="p", final=True)
    assert result.lines == result.parsed + result.comments + result.quarantined


def test_trace_cmd_tlb_plugin_format() -> None:
    # `trace-cmd report` (3.1.6) of a real 6.18 trace.dat: libtraceevent's tlb plugin prints
    # "pages=%ld reason=%s (%d)" with lower-case strings and "" for codes it does not know.
    buf = (
        b"cpus=2\n"
        b"          python-31706 [000]  6237.944303241: tlb_flush:            "
        b"pages=-1 reason=local mm shootdown (3)\n"
        b"       CPU 1/KVM-31927 [000]  6256.261349911: tlb_flush:            "
        b"pages=1 reason= (4)\n"
    )
    result = parse_chunk(buf, source="p", final=True)
    assert result.quarantined == 0, result.quarantine.to_pylist()
    flushes = result.tables["ftrace/tlb_flush"].to_pylist()
    assert [(f["pages"], f["reason"], f["reason_code"]) for f in flushes] == [
        (-1, "local mm shootdown", 3),
        (1, "", 4),
    ]
    assert_same_as_slow(buf)
