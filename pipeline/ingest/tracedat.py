"""trace.dat input: stream ``trace-cmd report`` output as text, without a temporary copy.

Debian's trace-cmd (3.x) decodes the binary ring-buffer pages with libtraceevent and the
event formats saved in the file, so the payloads are the kernel's own TP_printk output,
with the nanosecond timestamps of ``-t``. The text is parsed by the same grammar as tracefs
output (pipeline.ingest.ftrace).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline.errors import InputError, MissingFacilityError

TRACE_DAT_MAGIC = b"\x17\x08\x44tracing"
TRACE_CMD = "trace-cmd"


def is_trace_dat(path: Path) -> bool:
    """True when ``path`` starts with the trace-cmd file magic (\\x17\\x08D"tracing")."""
    try:
        with path.open("rb") as f:
            return f.read(len(TRACE_DAT_MAGIC)) == TRACE_DAT_MAGIC
    except OSError:
        return False


def report_command(path: Path) -> list[str]:
    """``trace-cmd report -t -i PATH``: every event, nanosecond timestamps."""
    exe = shutil.which(TRACE_CMD)
    if exe is None:
        msg = (
            f"`{TRACE_CMD}` is not installed, so `{path}` (a trace.dat) cannot be read; "
            "install it (`apt-get install trace-cmd`) or pass `trace-cmd report -t` text"
        )
        raise MissingFacilityError(msg)
    return [exe, "report", "-t", "-i", str(path)]


@contextmanager
def report_stream(path: Path) -> Iterator[IO[bytes]]:
    """Yield trace-cmd's stdout; on exit check its status and report its error as one line."""
    cmd = report_command(path)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except InputError:
            # trace-cmd failing (no output, garbage) is the better explanation
            code = proc.wait()
            if code != 0:
                raise _failed(path, errors, code) from None
            raise
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        code = proc.wait()
        if code != 0:
            raise _failed(path, errors, code)


def _failed(path: Path, errors: IO[bytes], code: int) -> InputError:
    errors.seek(0)
    lines = [ln.strip() for ln in errors.read().decode("utf-8", "replace").splitlines()]
    last = next((ln for ln in reversed(lines) if ln), f"exit code {code}")
    msg = f"`trace-cmd report` failed: {last}; check that the file is a complete trace.dat"
    return InputError(path, msg)
