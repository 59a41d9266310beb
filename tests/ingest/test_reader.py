"""Reader: compressed inputs, accounting, losses, bad input errors, chunk boundaries."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.errors import InputError
from pipeline.ingest import reader
from pipeline.ingest.runner import run_ingest

DATA = Path(__file__).resolve().parents[1] / "data" / "ftrace"
V7 = DATA / "v7_tracefs.txt"


def lines_of(path: Path) -> int:
    return path.read_bytes().count(b"\n")


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd", "zstd-2-frames"])
def test_compressed_inputs_give_the_same_tables(tmp_path: Path, kind: str) -> None:
    raw = V7.read_bytes()
    src = tmp_path / "trace"
    if kind == "plain":
        src.write_bytes(raw)
    elif kind == "gzip":
        src.write_bytes(gzip.compress(raw))
    else:
        z = zstandard.ZstdCompressor()
        half = len(raw) // 2
        data = (
            z.compress(raw) if kind == "zstd" else z.compress(raw[:half]) + z.compress(raw[half:])
        )
        src.write_bytes(data)
    m = run_ingest([str(src)], tmp_path / "ds", workers=1)
    (s,) = m["sources"]
    assert s["lines_total"] == lines_of(V7) == s["parsed"] + s["comments"] + s["quarantined"]
    assert s["quarantined"] == 0 and s["bytes"] == src.stat().st_size and len(s["sha256"]) == 64
    assert s["format"] == {"plain": "text", "gzip": "gzip"}.get(kind, "zstd")
    assert pq.read_table(tmp_path / "ds" / "ftrace" / "tlb_flush.parquet").num_rows == 2


def test_several_sources_and_losses(tmp_path: Path) -> None:
    srcs = [str(DATA / n) for n in ("v6.5_tracefs.txt", "trace_cmd_report.txt")]
    m = run_ingest(srcs, tmp_path / "ds", workers=1)
    assert [s["path"] for s in m["sources"]] == srcs
    assert m["sources"][1]["lost_events"] == {"1": 7}
    assert m["lines_total"] == m["parsed"] + m["comments"] + m["quarantined"]
    assert m["tables"]["ftrace/_other"] == 1


def test_chunk_boundaries_and_pool_keep_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny chunks cut lines everywhere; the 2-process pool keeps order and counts."""
    body = V7.read_bytes() * 20 + b"garbage\n" + b"  a-1 [000] .... 1.000001: tlb_flush: pag"
    src = tmp_path / "t.txt"
    src.write_bytes(body)
    monkeypatch.setattr(reader, "CHUNK_BYTES", 997)
    m = run_ingest([str(src)], tmp_path / "ds", workers=2)
    (s,) = m["sources"]
    assert s["lines_total"] == body.count(b"\n") + 1
    assert s["quarantined"] == 2
    q = pq.read_table(tmp_path / "ds" / "quarantine.parquet").to_pylist()
    assert [r["lineno"] for r in q] == [s["lines_total"] - 1, s["lines_total"]]
    assert q[1]["reason"].startswith("cut-off last line")
    flush = pq.read_table(tmp_path / "ds" / "ftrace" / "tlb_flush.parquet")
    assert flush.num_rows == 40
    ts = flush.column("ts_ns").to_pylist()
    assert ts[:2] == [200_000_018_000, 200_000_019_000]


def test_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Stdin:
        buffer = io.BytesIO(gzip.compress(V7.read_bytes()))

    monkeypatch.setattr("sys.stdin", Stdin)
    m = run_ingest(["-"], tmp_path / "ds", workers=1)
    assert m["sources"][0]["path"] == "-" and m["sources"][0]["format"] == "gzip"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(bytes(range(256)) * 100), "binary"),
        (lambda p: p.write_bytes(gzip.compress(V7.read_bytes() * 50)[:300]), "truncated gzip"),
        (
            lambda p: p.write_bytes(zstandard.ZstdCompressor().compress(V7.read_bytes())[:200]),
            "truncated zstd",
        ),
    ],
)
def test_bad_inputs_raise_one_clear_error_and_leave_nothing(
    tmp_path: Path, make: object, needle: str
) -> None:
    src = tmp_path / "in"
    make(src)  # type: ignore[operator]
    out = tmp_path / "ds"
    with pytest.raises(InputError) as err:
        run_ingest([str(src)], out, workers=1)
    assert needle in str(err.value) and str(src) in str(err.value)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"] * src.exists()


class _Watched(reader.ZstdFrames):
    """ZstdFrames that records the most decompressed bytes it ever held."""

    peak = 0

    def _step(self) -> None:
        super()._step()
        self.peak = max(self.peak, len(self._out))


def _frames(data: bytes) -> _Watched:
    return _Watched(reader.HashingReader(io.BytesIO(data)), zstandard)


def test_zstd_output_is_bounded_per_read() -> None:
    """A tiny .zst of 256 MiB of one repeated line streams in reads of CHUNK_BYTES.

    Before, the first 1 MiB read of compressed input was decompressed whole (all 256 MiB).
    """
    line = b"CPU 0/KVM-1 [000] ...1. 1.000000: kvm_mmu_spte_requested: gfn 1 pfn 2 level 1\n"
    text = line * ((256 << 20) // len(line))
    packed = zstandard.ZstdCompressor(level=19).compress(text)
    assert len(packed) < 64 << 10  # the shape of the issue: KBs of .zst, hundreds of MB of text
    frames = _frames(packed)
    total, reads = 0, 0
    while block := frames.read(reader.CHUNK_BYTES):
        assert len(block) <= reader.CHUNK_BYTES
        total += len(block)
        reads += 1
    assert total == len(text) and reads == -(-len(text) // reader.CHUNK_BYTES)
    bound = reader.CHUNK_BYTES + (32 << 20)  # one read + the worst single piece (docstring)
    assert 0 < frames.peak <= bound


def test_zstd_frames_concatenated_and_cut_off() -> None:
    a, b = b"first frame\n" * 50_000, b"second frame\n" * 70_000
    packed = zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b)
    frames = _frames(packed)
    got = b"".join(iter(lambda: frames.read(100_003), b""))
    assert got == a + b
    cut = _frames(packed[:-7])
    with pytest.raises(EOFError):
        while cut.read(100_003):
            pass


def test_read_buffers_are_reused_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain file is read into pooled buffers (ADR 0132): with 2 parse threads and the hash
    thread holding blocks, the tables and the sha256 are those of the same text read through
    gzip (fresh blocks, no pool), and far fewer buffers than blocks are allocated."""
    import hashlib

    import polars as pl

    body = V7.read_bytes() * 40
    plain, packed = tmp_path / "t.txt", tmp_path / "t.txt.gz"
    plain.write_bytes(body)
    packed.write_bytes(gzip.compress(body))
    monkeypatch.setattr(reader, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(reader.ReadBuffers, "SPARE", 512)
    allocated: list[int] = []
    take = reader.ReadBuffers.take

    def counting(self: reader.ReadBuffers, nbytes: int) -> object:
        got = take(self, nbytes)
        allocated.append(self.allocated)
        return got

    monkeypatch.setattr(reader.ReadBuffers, "take", counting)
    m = run_ingest([str(plain)], tmp_path / "a", workers=2)
    blocks = len(allocated)
    assert blocks > 20 and allocated[-1] <= reader.ReadBuffers.KEEP + 2
    assert m["sources"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    run_ingest([str(packed)], tmp_path / "b", workers=2)
    assert len(allocated) == blocks  # the gzip input took no pooled buffer
    for f in sorted((tmp_path / "a" / "ftrace").glob("*.parquet")):
        other = tmp_path / "b" / "ftrace" / f.name
        assert pl.read_parquet(f).equals(pl.read_parquet(other)), f.name


def test_event_tables_delta_encode_integers(tmp_path: Path) -> None:
    """Integer columns of the event tables are DELTA_BINARY_PACKED, strings dictionary-encoded
    (ADR 0130, 0132); the values read back are the parsed ones."""
    run_ingest([str(V7)], tmp_path / "ds", workers=1)
    meta = pq.ParquetFile(tmp_path / "ds" / "ftrace" / "tlb_flush.parquet").metadata
    names = meta.schema.to_arrow_schema().names
    rg = meta.row_group(0)
    encodings = {names[i]: rg.column(i).encodings for i in range(rg.num_columns)}
    assert "DELTA_BINARY_PACKED" in encodings["ts_ns"]
    assert "DELTA_BINARY_PACKED" in encodings["reason_code"]
    assert "DELTA_BINARY_PACKED" not in encodings["comm"]
    assert any("DICTIONARY" in e for e in encodings["comm"])
    flush = pq.read_table(tmp_path / "ds" / "ftrace" / "tlb_flush.parquet")
    assert flush.column("ts_ns").to_pylist()[:2] == [200_000_018_000, 200_000_019_000]


def test_small_pages_while_ingesting_then_restored() -> None:
    """numpy's huge-page advice is off inside ``small_pages`` and back as it was after."""
    from numpy._core import multiarray

    before = multiarray._set_madvise_hugepage(True)
    try:
        with reader.small_pages():
            assert multiarray._set_madvise_hugepage(False) is False
        assert multiarray._set_madvise_hugepage(True) is True
    finally:
        multiarray._set_madvise_hugepage(before)
