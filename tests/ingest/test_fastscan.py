"""The compiled scanner (csrc/ftrace_scan.c via pipeline.ingest.fastscan): same rows, reasons
and counts as the polars path and the exact grammar, on fixtures, real captures, random and
mutated lines; never reads outside the block, whatever the bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import events, fastscan, ftrace, polarsscan, reader
from pipeline.ingest.runner import run_ingest
from tests.ingest.test_ftrace import DATA, any_line, slow_rows

pytestmark = pytest.mark.skipif(
    not fastscan.available(), reason="the compiled scanner is not built: run `make setup`"
)
REAL = Path(__file__).resolve().parents[2] / "traces" / "real"
REAL_HEAD_BYTES = 6 << 20  # of each real capture: enough for every event it holds


def outcome(result: polarsscan.ChunkResult) -> dict[str, Any]:
    return {
        "counts": (result.lines, result.parsed, result.comments, result.quarantined),
        "lost": result.lost,
        "first_ts_ns": result.first_ts_ns,
        "tables": {t: rows.to_pylist() for t, rows in sorted(result.tables.items())},
        "schemas": {t: rows.schema for t, rows in sorted(result.tables.items())},
        "quarantine": result.quarantine.to_pylist(),
    }


def assert_paths_agree(buf: bytes, *, final: bool = True) -> polarsscan.ChunkResult:
    c = ftrace.parse_chunk(buf, source="s", first_lineno=3, final=final, parser="c")
    p = ftrace.parse_chunk(buf, source="s", first_lineno=3, final=final, parser="polars")
    assert outcome(c) == outcome(p)
    assert c.lines == c.parsed + c.comments + c.quarantined
    return c


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir()))
def test_fixtures_parse_identically(name: str) -> None:
    result = assert_paths_agree((DATA / name).read_bytes())
    assert result.parsed


def test_most_fixture_lines_are_parsed_in_c() -> None:
    """The templates cover every pretty format in the fixtures (else the speed is gone)."""
    for name in ("v6.5_tracefs.txt", "v7_tracefs.txt", "trace_cmd_report.txt"):
        s = fastscan.scan((DATA / name).read_bytes())
        known = (s.status == fastscan.ST_HEADER) & (s.event_id >= 0)
        names = [fastscan.tables().events[k] for k in s.event_id[known]]
        # left to polars: unknown events (no id) and known events without a template
        assert set(names) <= {"kvm_mmu_prepare_zap_page"}, (name, names)


def _real_text(path: Path) -> bytes:
    with path.open("rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f)
        head = reader.read(REAL_HEAD_BYTES)
    return head if len(head) < REAL_HEAD_BYTES else head[: head.rfind(b"\n") + 1]


@pytest.mark.parametrize("path", sorted(REAL.glob("*.trace.zst")), ids=lambda p: p.name)
def test_real_captures_parse_identically(path: Path) -> None:
    result = assert_paths_agree(_real_text(path))
    assert result.parsed > result.lines // 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(any_line.map(lambda s: s.replace("\n", " ")), min_size=1, max_size=12), st.booleans()
)
def test_random_and_mutated_lines_agree_with_both_grammars(
    lines: list[str], newline_at_end: bool
) -> None:
    buf = "\n".join(lines).encode("utf-8", "surrogatepass") + (b"\n" if newline_at_end else b"")
    result = assert_paths_agree(buf)
    tables, bad, comments = slow_rows(buf)
    assert result.comments == comments
    assert result.quarantine.column("reason").to_pylist() == bad
    assert {t: r.to_pylist() for t, r in result.tables.items()} == tables


PRETTY_LINES = [
    line
    for name in ("v6.5_tracefs.txt", "v7_tracefs.txt", "trace_cmd_report.txt")
    for line in (DATA / name).read_text().splitlines()
    if not line.startswith("#")
]


@st.composite
def number_swapped(draw: st.DrawFn) -> str:
    """A fixture line with one number replaced by a huge, negative or padded one."""
    line = draw(st.sampled_from(PRETTY_LINES))
    spans = [(m.start(), m.end()) for m in re.finditer(r"[0-9a-fA-F]+", line)]
    a, b = draw(st.sampled_from(spans))
    new = draw(
        st.one_of(
            st.integers(-(1 << 70), 1 << 70).map(str),
            st.integers(0, 1 << 70).map(lambda v: f"{v:x}"),
            st.sampled_from(["0" * 30 + "1", "f" * 17, "9" * 20, "-0", "18446744073709551616"]),
        )
    )
    return line[:a] + new + line[b:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(number_swapped(), min_size=1, max_size=6))
def test_huge_and_odd_numbers_agree(lines: list[str]) -> None:
    assert_paths_agree(("\n".join(lines) + "\n").encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_never_crash_and_agree(data: bytes, final: bool) -> None:
    assert_paths_agree(data, final=final)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.sampled_from(
                [b" CPU 0/KVM-4242 [000] d..1. 12.000001: kvm_exit: vcpu 0 reason ", b": ", b"["]
            ),
        ),
        max_size=8,
    )
)
def test_spans_stay_inside_the_block(parts: list[bytes]) -> None:
    buf = b"".join(parts)
    s = fastscan.scan(buf)
    n = len(s.status)
    assert n == buf.count(b"\n") + (1 if buf and not buf.endswith(b"\n") else 0)
    assert np.all((s.line_start >= 0) & (s.line_start <= s.line_end) & (s.line_end <= len(buf)))
    sure = s.status != fastscan.ST_DEFER
    for off, ln in ((s.comm_off, s.comm_len), (s.ev_off, s.ev_len), (s.pl_off, s.pl_len)):
        o, ln2 = off[sure].astype(np.int64), ln[sure].astype(np.int64)
        assert np.all((o >= s.line_start[sure]) & (o + np.maximum(ln2, 0) <= s.line_end[sure]))


def test_templates_are_printable_and_name_real_columns() -> None:
    for event, variants in fastscan.TEMPLATES.items():
        spec = events.SPECS[event]
        for tokens, constants in variants:
            for tok in tokens:
                if isinstance(tok, str):
                    assert tok and tok.isascii() and tok.isprintable()
                elif tok[0] != "clsopt":
                    assert tok[1] in spec.columns, (event, tok)
            assert set(constants) <= set(spec.columns)


@pytest.mark.parametrize("workers", [1, 2])
def test_ingest_records_the_parser_and_both_give_the_same_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """In-process, and with tiny blocks through the pools (threads for C, processes for
    polars): the same files, in input order."""
    body = b"".join((DATA / n).read_bytes() for n in sorted(p.name for p in DATA.iterdir()))
    (tmp_path / "t.txt").write_bytes(body * 3 + b"  a-1 [000] .... 1.000001: tlb_flush: pag")
    src = str(tmp_path / "t.txt")
    if workers > 1:
        monkeypatch.setattr(reader, "CHUNK_BYTES", 4093)
    got = {}
    for parser in ftrace.PARSERS:
        monkeypatch.setenv("TLBREPLAY_INGEST_PARSER", parser)
        manifest = run_ingest([src], tmp_path / parser, workers=workers)
        assert [s["parser"] for s in manifest["sources"]] == [parser]
        got[parser] = {
            p.name: p.read_bytes() for p in sorted((tmp_path / parser / "ftrace").iterdir())
        }
        got[parser]["quarantine"] = (tmp_path / parser / "quarantine.parquet").read_bytes()
        manifest.pop("sources")
        got[parser]["manifest"] = json.dumps(manifest, sort_keys=True).encode()
    assert got["c"] == got["polars"]


def test_more_lines_than_the_first_guess_are_all_scanned() -> None:
    """Blocks of very short lines overflow the first output size; the scan is redone wider."""
    buf = b"\n" * 20_000 + b"x\n" * 5_000 + b"  CPU 0/KVM-1 [000] 1.5: e: p"
    s = fastscan.scan(buf)
    assert len(s.status) == 25_001
    assert s.status[-1] == fastscan.ST_HEADER
    result = assert_paths_agree(buf)
    assert result.comments == 20_000
    assert result.quarantined == 5_000


def test_a_stale_library_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library from another scanner version would be called with the wrong arguments."""
    monkeypatch.delenv("TLBREPLAY_INGEST_PARSER", raising=False)
    monkeypatch.setattr(fastscan, "SCAN_ABI", fastscan.SCAN_ABI + 1)
    fastscan._library.cache_clear()
    try:
        assert not fastscan.available()
        assert ftrace.default_parser() == "polars"
    finally:
        monkeypatch.undo()
        fastscan._library.cache_clear()
    assert fastscan.available()
