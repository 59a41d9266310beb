"""Pure ftrace text parsing, the front door: :func:`parse_chunk` parses a block of complete
lines with the compiled scanner (:mod:`pipeline.ingest.fastscan`, ADR 0110) when it is built,
else with the polars path (:mod:`pipeline.ingest.polarsscan`). Any line a fast path is not sure
of goes to the exact per-line grammar (:mod:`pipeline.ingest.lines`), which either parses it or
quarantines it with a reason. All paths give the same answer for every line (checked by the
property tests). The event grammars are in :mod:`pipeline.ingest.events`. Never opens files.
"""

from __future__ import annotations

import os

from pipeline.ingest import fastscan
from pipeline.ingest.polarsscan import ChunkResult, parse_chunk_polars


def default_parser() -> str:
    """``"c"`` when the compiled scanner is built, else ``"polars"``.

    ``TLBREPLAY_INGEST_PARSER=polars`` forces the polars path (tests, benchmarks).
    """
    forced = os.environ.get("TLBREPLAY_INGEST_PARSER")
    if forced in PARSERS:
        return forced
    return "c" if fastscan.available() else "polars"


PARSERS = ("c", "polars")


def parse_chunk(
    buf: bytes | memoryview,
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
    the same result. Default: :func:`default_parser`. ``buf`` may be a view (of a read
    buffer); the polars path takes a copy of it.
    """
    if (parser or default_parser()) == "c":
        return fastscan.parse_chunk_c(buf, source=source, first_lineno=first_lineno, final=final)
    text = buf if isinstance(buf, bytes) else bytes(buf)
    return parse_chunk_polars(text, source=source, first_lineno=first_lineno, final=final)
