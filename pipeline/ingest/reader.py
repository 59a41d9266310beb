"""Ingest I/O: open text/.gz/.zst/stdin/trace.dat, stream chunks, parse, append to Parquet.

Memory stays constant: the input is read in ``CHUNK_BYTES`` blocks cut at the last newline,
each block is parsed by :func:`pipeline.ingest.ftrace.parse_chunk` (in a 2-process pool once
the input is larger than one block) and its rows are appended to one
:class:`~pipeline.schema.ParquetStream` per table. Every line is accounted for per source:
``lines_total == parsed + comments + quarantined``.

Why one module over 500 lines: reading (files, .gz/.zst frames, trace.dat), block cutting and
the parse pool share one bounded-memory pipeline whose back-pressure is easiest to check in one
place.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
import queue
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InputError
from pipeline.ingest import events, ftrace, polarsscan
from pipeline.ingest.outliers import OutlierRule, drop_outliers
from pipeline.schema import ParquetStream, conform
from pipeline.workers import die_with_parent

CHUNK_BYTES = 16 << 20
MAX_LINE_BYTES = 64 << 20
WORKERS = int(os.environ.get("TLBREPLAY_INGEST_WORKERS", "2"))  # 1: parse in-process
IN_FLIGHT = 3
POOL_AFTER_BLOCKS = 4
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 13)) + b"\x7f"


@dataclass
class SourceStats:
    """Per-source accounting recorded in manifest.json."""

    path: str
    format: str = "text"
    sha256: str = ""
    bytes: int = 0
    bytes_text: int = 0
    lines_total: int = 0
    parsed: int = 0
    comments: int = 0
    quarantined: int = 0
    lost_events: dict[str, int] = field(default_factory=dict)
    first_ts_ns: int | None = None
    parser: str = "polars"  # "c": the compiled scanner; "polars": the fallback (ADR 0110)
    timestamp_outliers: int = 0  # lines quarantined as timestamp outliers (ADR 0011)
    first_outlier: str | None = None  # "file:line" of the first one

    def add(self, result: polarsscan.ChunkResult) -> None:
        self.lines_total += result.lines
        self.parsed += result.parsed
        self.comments += result.comments
        self.quarantined += result.quarantined
        for cpu, count in result.lost.items():
            key = str(cpu)
            self.lost_events[key] = self.lost_events.get(key, 0) + count
        if result.first_ts_ns is not None:
            t = result.first_ts_ns
            self.first_ts_ns = t if self.first_ts_ns is None else min(self.first_ts_ns, t)

    def manifest(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "bytes_text": self.bytes_text,
            "lines_total": self.lines_total,
            "parsed": self.parsed,
            "comments": self.comments,
            "quarantined": self.quarantined,
            "lost_events": dict(sorted(self.lost_events.items(), key=lambda kv: int(kv[0]))),
            "parser": self.parser,
            "timestamp_outliers": {"count": self.timestamp_outliers, "first": self.first_outlier},
        }


class _Hasher:
    """sha256 of the raw input in a thread of its own, off the reading thread's path.

    ``hashlib`` releases the GIL on large updates, so the hash runs beside the parse threads.
    At most ``_QUEUED`` reads wait for it.
    """

    _QUEUED = 8

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | memoryview | Callable[[], None] | None] = queue.Queue(
            maxsize=self._QUEUED
        )
        self._thread = threading.Thread(target=self._run, name="ingest-hash", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if callable(data):
                data()
            else:
                self._sha.update(data)

    def update(self, data: bytes | memoryview) -> None:
        self._queue.put(data)

    def then(self, done: Callable[[], None]) -> None:
        """Call ``done`` in the hash thread once every byte queued so far is hashed."""
        self._queue.put(done)

    def hexdigest(self) -> str:
        self.close()
        if self._digest is None:
            self._digest = self._sha.hexdigest()
        return self._digest

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class HashingReader:
    """A binary reader that hashes (in a thread) and counts the raw bytes, reports progress."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._sha = _Hasher()
        self._progress = progress
        self.count = 0
        self._head = b""

    def peek_head(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._read_raw(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:n]

    def _read_raw(self, n: int) -> bytes:
        data = self._raw.read(n)
        if data:
            self._sha.update(data)
            self.count += len(data)
            if self._progress is not None:
                self._progress(len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        """Read into ``buffer`` as :meth:`read` would return (the peeked head alone first,
        then full reads unless the input ends, so blocks are cut where they were): no copy of
        the bytes read. The hash thread reads ``buffer`` later: it must not be written again."""
        if self._head:
            n = min(len(self._head), len(buffer))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        filled = 0
        while filled < len(buffer):
            got = self._raw.readinto(buffer[filled:])  # type: ignore[attr-defined]
            if not got:
                break
            self._sha.update(buffer[filled : filled + got])
            self.count += got
            if self._progress is not None:
                self._progress(got)
            filled += got
        return filled

    def then(self, done: Callable[[], None]) -> None:
        """Call ``done`` once the bytes read so far are hashed (their buffer may be reused)."""
        self._sha.then(done)

    def read(self, n: int = -1) -> bytes:
        if self._head:
            head = self._head if n < 0 else self._head[:n]
            self._head = self._head[len(head) :]
            if n < 0:
                return head + self._read_raw(-1)
            return head
        return self._read_raw(n)

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stop the hash thread (the digest stays available)."""
        self._sha.close()


class ZstdFrames:
    """Decompress concatenated zstd frames; a frame cut off at the end raises EOFError.

    Output is bounded per call: compressed input is fed in pieces sized from the ratio seen so
    far so that one piece yields about ``OUT_BYTES`` (an 84 KB .zst of 1 GB of repetitive text
    must not decompress in one go). The worst case of one piece of ``MIN_PIECE`` bytes is
    MIN_PIECE / 4 raw-block headers of 128 KiB each: 32 MiB.
    """

    OUT_BYTES = 4 << 20
    MIN_PIECE = 1 << 10
    MAX_PIECE = 1 << 20

    def __init__(self, raw: HashingReader, zstandard: Any) -> None:
        self._raw = raw
        self._zstd = zstandard
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._open = False  # bytes of an unfinished frame were fed
        self._out = bytearray()
        self._pending = memoryview(b"")  # compressed bytes read but not fed yet
        self._piece = self.MIN_PIECE
        self._eof = False

    def _feed(self, data: bytes) -> int:
        """Decompress ``data``; bytes of output produced."""
        produced = 0
        while data:
            self._open = True
            out = self._dobj.decompress(data)
            produced += len(out)
            self._out += out
            if not self._dobj.eof:
                break
            data = self._dobj.unused_data
            self._dobj = self._zstd.ZstdDecompressor().decompressobj()
            self._open = False
        return produced

    def _step(self) -> None:
        """Feed one piece of compressed input (reading more when none is pending)."""
        if not self._pending:
            data = self._raw.read(self.MAX_PIECE)
            if not data:
                self._eof = True
                if self._open:
                    raise EOFError
                return
            self._pending = memoryview(data)
        piece = self._pending[: self._piece]
        self._pending = self._pending[len(piece) :]
        produced = self._feed(bytes(piece))
        ratio = max(produced // max(len(piece), 1), 1)
        self._piece = min(max(self.OUT_BYTES // ratio, self.MIN_PIECE), self.MAX_PIECE)

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._out) < n):
            self._step()
        if n < 0 or n >= len(self._out):
            out, self._out = bytes(self._out), bytearray()
        else:
            out = bytes(memoryview(self._out)[:n])
            del self._out[:n]
        return out


@contextmanager
def small_pages() -> Iterator[None]:
    """numpy without huge pages while ingest runs (restored after; ADR 0132).

    numpy asks the kernel for transparent huge pages on every array of 4 MiB or more. Ingest
    allocates such arrays for every block and every derive step, and each first touch of a
    huge page zeroes 2 MiB: on the 1 GB real input that was half the process's system time
    (2.4-2.8 of 11-12 CPU-s; 1.1-1.2 with small pages, same user time, A/B at load 9).
    """
    from numpy._core import multiarray

    setter: Callable[[bool], bool] | None = getattr(multiarray, "_set_madvise_hugepage", None)
    if setter is None:  # another numpy: leave it as it is
        yield
        return
    was = setter(False)
    try:
        yield
    finally:
        setter(was)


def check_source(src: str) -> None:
    """Refuse a missing path, a directory or an unreadable file before any output exists."""
    if src == "-":
        return
    path = Path(src)
    if not path.exists():
        raise InputError(src, "no such file; check the path")
    if path.is_dir():
        raise InputError(src, "is a directory; pass the trace file(s) inside it")
    if not os.access(path, os.R_OK):
        raise InputError(src, "is not readable; check its permissions")


def _decompressed(src: str, raw: HashingReader, stats: SourceStats) -> IO[bytes] | HashingReader:
    head = raw.peek_head(len(TRACE_DAT_MAGIC))
    if head.startswith(GZIP_MAGIC):
        stats.format = "gzip"
        return cast(IO[bytes], gzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb"))
    if head.startswith(ZSTD_MAGIC):
        import zstandard

        stats.format = "zstd"
        return cast(IO[bytes], ZstdFrames(raw, zstandard))
    if head.startswith(TRACE_DAT_MAGIC):
        msg = "is a trace.dat but was given on stdin; pass it as a file path"
        raise InputError(src, msg)
    return raw


def _read_block(src: str, stream: IO[bytes] | HashingReader, fmt: str, n: int) -> bytes:
    try:
        return stream.read(n)
    except EOFError:
        msg = f"truncated {fmt} stream; the file was cut off: copy or compress it again"
        raise InputError(src, msg) from None
    except (OSError, zlib.error) as exc:
        raise InputError(src, f"corrupt {fmt} data ({exc}); copy or compress it again") from None
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":
            msg = f"corrupt or truncated zstd data ({exc}); copy or compress it again"
            raise InputError(src, msg) from None
        raise


def _looks_binary(block: bytes) -> bool:
    sample = block[: 1 << 16]
    if not sample:
        return False
    control = len(sample) - len(sample.translate(None, _CONTROL))
    return control > len(sample) // 20


def _first_block_checks(src: str, block: bytes, stats: SourceStats) -> None:
    if not block and stats.format == "trace.dat":
        msg = "`trace-cmd report` printed nothing: the trace.dat is empty or corrupt"
        raise InputError(src, msg)
    if not block:
        raise InputError(src, "is empty; nothing to ingest")
    if _looks_binary(block):
        msg = "is a binary file, not ftrace text; pass a `trace`/`trace_pipe` text file, "
        msg += "`trace-cmd report` output, a .gz/.zst of one, or a trace.dat"
        raise InputError(src, msg)


#: Bytes searched backwards for a block's last newline before searching all of it.
_TAIL_BYTES = 1 << 16


def _last_newline(view: memoryview) -> int:
    """Index of the last newline in ``view``, -1 if none."""
    lo = max(len(view) - _TAIL_BYTES, 0)
    at = bytes(view[lo:]).rfind(b"\n")
    if at >= 0 or lo == 0:
        return lo + at if at >= 0 else -1
    found = np.flatnonzero(np.frombuffer(view[:lo], np.uint8) == ord("\n"))
    return int(found[-1]) if len(found) else -1


class ReadBuffers:
    """Read buffers reused from block to block, each back in the pool once released twice:
    by the hash thread (its bytes hashed) and by the parser (the block's result collected).

    A fresh 16 MiB buffer per block cost its pages' faults and zeroing (numpy asks for huge
    pages) every time: ~15 % of the whole ingest's CPU samples on the 1 GB real input
    (ADR 0132). A buffer holds ``CHUNK_BYTES`` + ``SPARE`` bytes; a block whose carried line
    start is longer gets a buffer of its own, not pooled. At most ``KEEP`` free buffers are
    kept: as many as can be in flight (parse queue, the hash queue's share), so memory is
    what the blocks in flight hold anyway.
    """

    SPARE = 1 << 20
    KEEP = IN_FLIGHT + 3
    HOLDERS = 2  # the hash thread and the parser

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.allocated = 0  # buffers ever allocated (tests)

    def take(self, nbytes: int) -> tuple[memoryview, Callable[[], None]]:
        """A buffer of at least ``nbytes`` (not zero-filled) and its ``release``."""
        pooled = nbytes <= CHUNK_BYTES + self.SPARE
        arr: np.ndarray | None = None
        if pooled:
            with self._lock:
                arr = self._free.pop() if self._free else None
        if arr is None:
            self.allocated += 1
            arr = np.empty(CHUNK_BYTES + self.SPARE if pooled else nbytes, np.uint8)
        left = self.HOLDERS
        owned = arr

        def release() -> None:
            nonlocal left
            with self._lock:
                left -= 1
                if not left and pooled and len(self._free) < self.KEEP:
                    self._free.append(owned)

        return arr.data[:nbytes], release


def iter_views(
    src: str,
    stream: HashingReader,
    stats: SourceStats,
    buffers: ReadBuffers | None = None,
) -> Iterator[tuple[memoryview, bool, Callable[[], None]]]:
    """:func:`iter_blocks` of an uncompressed input, without copying a block: each is read
    into a buffer after the carried start of its first line, and a view of its whole lines
    is handed on (the C scanner reads views; issue 13) with the buffer's ``release``, to be
    called once the block's parse result is collected. Only the partial last line is copied,
    to the next buffer. Buffers come from ``buffers`` (reused once hashed and parsed)."""
    pool = buffers if buffers is not None else ReadBuffers()
    carry = b""
    first = True
    while True:
        buf, release = pool.take(len(carry) + CHUNK_BYTES)
        buf[: len(carry)] = carry
        try:
            got = stream.readinto(buf[len(carry) :])
        except OSError as exc:
            raise InputError(src, f"cannot read ({exc}); check the file") from None
        if first:
            first = False
            _first_block_checks(src, bytes(buf[: min(got, 1 << 16)]), stats)
        stats.bytes_text += got
        stream.then(release)  # the hash thread's hold on this buffer
        data = buf[: len(carry) + got]
        if not got:
            if carry:
                yield data, True, release
            return
        cut = _last_newline(data[len(carry) :])
        if cut < 0:
            carry = bytes(data)
            release()  # no block from this buffer
            if len(carry) > MAX_LINE_BYTES:
                msg = f"a line longer than {MAX_LINE_BYTES >> 20} MiB; not ftrace text"
                raise InputError(src, msg)
            continue
        cut += len(carry)
        carry = bytes(data[cut + 1 :])
        yield data[: cut + 1], False, release


def iter_blocks(
    src: str, stream: IO[bytes] | HashingReader, stats: SourceStats
) -> Iterator[tuple[bytes, bool]]:
    """Yield (block of whole lines, is-last) from a decompressed stream."""
    carry = b""
    first = True
    while True:
        block = _read_block(src, stream, stats.format, CHUNK_BYTES)
        if first:
            first = False
            _first_block_checks(src, block, stats)
        stats.bytes_text += len(block)
        if not block:
            if carry:
                yield carry, True
            return
        cut = block.rfind(b"\n")
        if cut < 0:
            carry += block
            if len(carry) > MAX_LINE_BYTES:
                msg = f"a line longer than {MAX_LINE_BYTES >> 20} MiB; not ftrace text"
                raise InputError(src, msg)
            continue
        # one copy of the block: the carried start of its first line + its whole lines
        whole = carry + memoryview(block)[: cut + 1] if carry else block[: cut + 1]
        carry = block[cut + 1 :]
        yield whole, False


class TableSinks:
    """One ParquetStream per ftrace table plus quarantine, under a dataset directory.

    Results are conformed, compressed and appended by a writer thread (Arrow and zstd release
    the GIL), so the thread that reads the input and hands blocks to the parsers never waits
    on a write; at most ``QUEUED`` results wait for it.
    """

    QUEUED = 2

    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        self.streams: dict[str, ParquetStream] = {}
        for table in events.event_tables():
            path = root / f"{table}.parquet"
            self.streams[table] = ParquetStream(path, table, params=params, delta=True)
        self.streams["quarantine"] = ParquetStream(
            root / "quarantine.parquet", "quarantine", params=params, delta=True
        )
        self._queue: queue.Queue[polarsscan.ChunkResult | None] = queue.Queue(maxsize=self.QUEUED)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-write", daemon=True)
        self._thread.start()

    def write(self, result: polarsscan.ChunkResult) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(result)

    def _run(self) -> None:
        while (result := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(result)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def _write(self, result: polarsscan.ChunkResult) -> None:
        for table, rows in result.tables.items():
            self.streams[table].write(rows)
        if result.quarantine.num_rows:
            self.streams["quarantine"].write(result.quarantine)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def rows(self) -> dict[str, int]:
        return {name: s.rows for name, s in sorted(self.streams.items())}

    def close(self) -> None:
        self._stop()
        if self._error is not None:
            raise self._error
        for s in self.streams.values():
            s.close()

    def abort(self) -> None:
        self._stop()
        for s in self.streams.values():
            s.abort()


class ChunkParser:
    """Parses blocks in order, ``workers`` at a time.

    With the compiled scanner (``parser == "c"``) the workers are threads: the scanner, numpy,
    Arrow and Parquet release the GIL, so threads use both cores without a process start or
    pickling (ADR 0110). With the polars path they are processes (spawned, one polars thread
    each) started at the ``POOL_AFTER_BLOCKS``-th block of the input. At most ``IN_FLIGHT``
    blocks are queued, so memory stays bounded. ``sink`` gets the results in input order. If
    the process pool breaks, blocks are parsed in-process.
    """

    def __init__(self, workers: int = WORKERS, parser: str | None = None) -> None:
        self.sink: Callable[[polarsscan.ChunkResult], None] = lambda _r: None
        self.parser = parser or ftrace.default_parser()
        self._workers = workers
        self._pool: Executor | None = None
        self._pending: deque[tuple[Future[polarsscan.ChunkResult], Block]] = deque()
        self._held: list[Block] = []
        self._done: dict[int, Callable[[], None]] = {}  # id(item) -> its block's release
        self.buffers = ReadBuffers()  # read buffers, reused across the blocks of every source

    def submit(
        self,
        block: bytes | memoryview,
        source: str,
        final: bool,
        done: Callable[[], None] | None = None,
    ) -> None:
        """Parse ``block``; ``done()`` is called once its result went to ``sink`` (the block's
        buffer may then be reused)."""
        item = (block, source, final, self.parser)
        if done is not None:
            self._done[id(item)] = done
        if self._pool is None and self._workers > 1 and self.parser == "c":
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ingest-parse")
        if self._pool is None and self._workers > 1:
            # start the pool only for inputs where it pays for its start (~1 CPU-s)
            self._held.append(item)
            if len(self._held) >= POOL_AFTER_BLOCKS:
                self._pool = _start_pool(self._workers)
                self._release()
            elif final:
                self._release()
            return
        self._enqueue(item)

    def _release(self) -> None:
        held, self._held = self._held, []
        for item in held:
            self._enqueue(item)

    def _collect(self, item: Block, result: polarsscan.ChunkResult) -> None:
        self.sink(result)
        done = self._done.pop(id(item), None)
        if done is not None:
            done()

    def _enqueue(self, item: Block) -> None:
        if self._pool is None:
            self._collect(item, _parse(item))
            return
        block, source, final, parser = item
        fut = self._pool.submit(
            ftrace.parse_chunk, block, source=source, final=final, parser=parser
        )
        self._pending.append((fut, item))
        while len(self._pending) >= IN_FLIGHT:
            self._drain_one()

    def _drain_one(self) -> None:
        fut, item = self._pending.popleft()
        try:
            result = fut.result()
        except BrokenProcessPool:
            self.close()
            self._workers = 1
            result = _parse(item)
            rest = [it for _f, it in self._pending]
            self._pending.clear()
            self._collect(item, result)
            for it in rest:
                self._collect(it, _parse(it))
            return
        self._collect(item, result)

    def flush(self) -> None:
        self._release()
        while self._pending:
            self._drain_one()

    def close(self) -> None:
        if self._pool is not None:
            for fut, _item in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


Block = tuple[bytes | memoryview, str, bool, str]  # block, source, final, parser


def _parse(item: Block) -> polarsscan.ChunkResult:
    block, source, final, parser = item
    return ftrace.parse_chunk(block, source=source, final=final, parser=parser)


def _start_pool(workers: int) -> ProcessPoolExecutor:
    """Spawned workers with one polars thread each (the workers are the parallelism)."""
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = "1"
    try:
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
        )
        for _ in range(workers):
            pool.submit(int)  # start the workers now, under this environment
    finally:
        if saved is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = saved
    return pool


def ingest_source(
    src: str,
    parser: ChunkParser,
    stats: SourceStats,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream one source through ``parser``; fills ``stats`` (hash, sizes, line counts)."""
    from pipeline.ingest import tracedat

    if src != "-" and tracedat.is_trace_dat(Path(src)):
        stats.format = "trace.dat"
        with open(src, "rb") as f:
            hashed = HashingReader(f, progress)
            while hashed.read(CHUNK_BYTES):
                pass
        stats.sha256, stats.bytes = hashed.hexdigest(), hashed.count
        with tracedat.report_stream(Path(src)) as stream:
            wrapped = HashingReader(stream)
            try:
                for block, final in iter_blocks(src, wrapped, stats):
                    parser.submit(block, src, final)
                parser.flush()
            finally:
                wrapped.close()
        return
    raw_file: IO[bytes] = sys.stdin.buffer if src == "-" else open(src, "rb")  # noqa: SIM115
    hashed = HashingReader(raw_file, progress)
    try:
        text = _decompressed(src, hashed, stats)
        views = text is hashed and parser.parser == "c" and hasattr(raw_file, "readinto")
        if views:
            for view, final, release in iter_views(src, hashed, stats, parser.buffers):
                parser.submit(view, src, final, release)
        else:
            for block, final in iter_blocks(src, text, stats):
                parser.submit(block, src, final)
        parser.flush()
        stats.sha256, stats.bytes = hashed.hexdigest(), hashed.count
    finally:
        hashed.close()
        if src != "-":
            raw_file.close()


def _collector(
    stats: SourceStats, sinks: TableSinks, rule: OutlierRule
) -> Callable[[polarsscan.ChunkResult], None]:
    def collect(result: polarsscan.ChunkResult) -> None:
        _quarantine_outliers(result, stats, rule)
        # blocks are parsed with line numbers from 1; shift by the lines before the block
        if result.quarantine.num_rows and stats.lines_total:
            q = result.quarantine
            shifted = pc.add(q.column("lineno"), stats.lines_total)
            result.quarantine = q.set_column(q.schema.get_field_index("lineno"), "lineno", shifted)
        stats.add(result)
        sinks.write(result)

    return collect


def _quarantine_outliers(
    result: polarsscan.ChunkResult, stats: SourceStats, rule: OutlierRule
) -> None:
    """Move the block's timestamp outliers (ADR 0011) from its tables to its quarantine, in
    input order (``rule`` holds the bulk of the blocks before). Line numbers are the block's,
    from 1, like the parser's quarantine rows, shifted by the collector."""
    dropped = drop_outliers(result.tables, result.clusters, rule)
    if not dropped.rows:
        return
    n = len(dropped.rows)
    result.tables = dropped.tables
    q = pa.table(
        {
            "source": pa.array([stats.path] * n, pa.string()),
            "lineno": pa.array([r + 1 for r, _, _ in dropped.rows], pa.int64()),
            "line": pa.array([line for _, line, _ in dropped.rows], pa.string()),
            "reason": pa.array([reason for _, _, reason in dropped.rows], pa.string()),
        }
    )
    merged = pa.concat_tables([result.quarantine, conform(q, "quarantine")])
    result.quarantine = merged.take(pc.sort_indices(merged, [("lineno", "ascending")]))
    result.parsed -= n
    result.quarantined += n
    firsts = [pc.min(t.column("ts_ns")).as_py() for t in result.tables.values() if t.num_rows]
    result.first_ts_ns = min(firsts) if firsts else None
    if stats.first_outlier is None:
        stats.first_outlier = f"{stats.path}:{stats.lines_total + dropped.rows[0][0] + 1}"
    stats.timestamp_outliers += n


def ingest_all(
    sources: list[str],
    root: Path,
    *,
    params: dict[str, Any],
    progress: Callable[[int], None] | None = None,
    workers: int = WORKERS,
) -> tuple[list[SourceStats], dict[str, int]]:
    """Parse every source into ``root/ftrace/*.parquet`` and ``root/quarantine.parquet``."""
    sinks = TableSinks(root, params)
    all_stats: list[SourceStats] = []
    parser = ChunkParser(workers)
    rule = OutlierRule()  # one bulk over every source, in input order (ADR 0011)
    try:
        for src in sources:
            stats = SourceStats(path=src, parser=parser.parser)
            all_stats.append(stats)
            parser.sink = _collector(stats, sinks, rule)
            ingest_source(src, parser, stats, progress)
    except BaseException:
        parser.close()
        sinks.abort()
        raise
    parser.close()
    sinks.close()
    return all_stats, sinks.rows()
