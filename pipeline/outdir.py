"""Output directories nobody can lose or misread: kind checks, a gap-free swap, stale sweeps.

Every stage output ``OUT`` (a DATASET, RESULTS or report directory) is a symbolic link
``OUT -> .OUT.v<time_ns>-<pid>``, a hidden *version* directory beside it (ADR 0003):

* a run builds its output in ``.OUT.<pid>.<random>.tmp``, fsyncs it, renames it to a new
  version and renames a fresh link over ``OUT`` (rename(2) replaces a link atomically), so
  ``OUT`` always exists and always names one complete version; there is no moment without it;
* finishers are serialised by ``flock()`` on the parent directory: two runs finishing
  together each install a complete version, the last one wins, neither fails;
* the version that was current before the swap is kept (a reader that resolved ``OUT`` just
  before keeps reading a complete version); older versions are removed by the swap;
* readers (replay, query, report) resolve ``OUT`` once (:func:`pin`) and read that version;
* ``OUT`` is replaced only if it is missing, empty or a tlbreplay output of the same kind
  (``manifest.json`` ``kind``); anything else needs ``force`` and the refusal says what is
  there;
* ``.OUT.<pid>.*.tmp`` left by a killed run (its pid no longer alive) is swept by the next
  run writing ``OUT``;
* directories get the mode of the umask (``mkdtemp`` would leave 0700), the parent
  directory is fsync'd after the rename.

An ``OUT`` that is a plain directory (written before this scheme) is moved aside and
replaced by the link: the one swap that has a gap, once per output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import OutputError

MANIFEST = "manifest.json"
KINDS = ("dataset", "results", "report")


def _norm(out: Path) -> Path:
    """``out`` made absolute without resolving a final symlink (that is the output itself)."""
    return Path(os.path.abspath(out))


def _version_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.v\d{{20}}-\d+$")


def _tmp_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[^.]+\.tmp$")


def _manifest_kind(directory: Path) -> str | None:
    """The ``kind`` in ``directory/manifest.json``; None when it is missing or unreadable."""
    try:
        doc = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return str(kind) if kind is not None else None


def describe(out: Path) -> str:
    """What is at ``out``, in a few words, for an error message."""
    if not out.exists():
        return "nothing"
    if not out.is_dir():
        return "a file"
    kind = _manifest_kind(out)
    if kind is not None:
        return f"a tlbreplay {kind} (`{MANIFEST}` kind `{kind}`)"
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return "an empty directory"
    shown = ", ".join(f"`{e}`" for e in entries[:3])
    more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
    return f"a directory that is not a tlbreplay output ({shown}{more})"


def check_replaceable(out: Path, kind: str, *, force: bool = False) -> None:
    """Refuse to replace ``out`` unless it is missing, empty or a ``kind`` output (or ``force``).

    Call it before any work, so a refusal costs nothing.
    """
    out = _norm(out)
    if not out.name:
        raise OutputError(out, "is not a named directory; choose another `--out`")
    if force or not out.exists():
        return
    if out.is_dir():
        there = _manifest_kind(out)
        if there == kind or (there is None and not any(out.iterdir())):
            return
    msg = (
        f"holds {describe(out)}, not a tlbreplay {kind}; choose another `--out`, or pass "
        "`--force` to replace it"
    )
    raise OutputError(out, msg)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale(out: Path) -> list[Path]:
    """Remove ``.OUT.<pid>.*.tmp`` siblings of ``out`` whose process is dead; return them."""
    out = _norm(out)
    parent, pattern = out.parent, _tmp_re(out.name)
    swept = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if m and not _alive(int(m.group(1))):
            _remove(entry)
            swept.append(entry)
    return swept


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (the files were fsync'd as they were written)."""
    for dirpath, _, _ in os.walk(root):
        _fsync_dir(Path(dirpath))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def pin(path: Path) -> Path:
    """The version directory ``path`` names now (readers read this one, not the link)."""
    return Path(path).resolve()


def current_version(out: Path) -> Path | None:
    """The version directory the link ``out`` points to (None: not a versioned output)."""
    out = _norm(out)
    if not out.is_symlink():
        return None
    target = Path(os.readlink(out))
    return target if target.is_absolute() else out.parent / target


def _install(version: Path, out: Path) -> None:
    """Point ``out`` at ``version`` with one rename; keep the previous version, drop older."""
    parent, name = out.parent, out.name
    link_tmp = parent / f".{name}.{os.getpid()}.link.tmp"
    link_tmp.unlink(missing_ok=True)
    os.symlink(version.name, link_tmp)
    previous = current_version(out)
    aside = None
    if out.exists() and not out.is_symlink():
        # a plain directory or file from before versioned outputs (or a --force target)
        aside = parent / f".{name}.{os.getpid()}.old.tmp"
        os.rename(out, aside)
    os.replace(link_tmp, out)
    _fsync_dir(parent)
    if aside is not None:
        _remove(aside)
    keep = {version.name, *([previous.name] if previous is not None else [])}
    pattern = _version_re(name)
    for entry in parent.iterdir():
        if pattern.match(entry.name) and entry.name not in keep:
            _remove(entry)


@contextmanager
def atomic_output_dir(out: Path, *, kind: str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes the version ``out`` points to.

    ``out`` is checked by :func:`check_replaceable` first. On an exception the temporary
    directory is removed and ``out`` is left as it was.
    """
    if kind not in KINDS:
        msg = f"unknown output kind {kind!r}"
        raise ValueError(msg)
    out = _norm(out)
    check_replaceable(out, kind, force=force)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out)
        prefix = f".{out.name}.{os.getpid()}."
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(out, f"cannot create output directory ({exc.strerror})") from None
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        _fsync_tree(tmp)
        with _locked(parent):
            if not force:
                check_replaceable(out, kind)  # another run may have put something else there
            version = parent / f".{out.name}.v{time.time_ns():020d}-{os.getpid()}"
            os.rename(tmp, version)
            try:
                _install(version, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    if current_version(out) != version:
                        _remove(version)
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
