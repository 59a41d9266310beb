"""Output directories (pipeline/outdir.py, ADR 0003): kinds, the gap-free swap, stale sweeps."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.errors import OutputError
from pipeline.outdir import atomic_output_dir, check_replaceable, current_version, sweep_stale
from pipeline.schema import read_manifest, write_manifest


def visible(root: Path) -> list[str]:
    """Entries of ``root`` a run may leave: outputs and their versions, never a ``.tmp``."""
    names = sorted(p.name for p in root.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    return [n for n in names if not n.startswith(".")]


def test_swap_keeps_the_old_output_on_error(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with atomic_output_dir(out, kind="dataset") as tmp:
        write_manifest(tmp, {"kind": "dataset", "n": 1})
    assert read_manifest(out) == {"kind": "dataset", "n": 1}
    with pytest.raises(ValueError), atomic_output_dir(out, kind="dataset") as tmp:
        write_manifest(tmp, {"kind": "dataset", "n": 2})
        raise ValueError
    assert read_manifest(out) == {"kind": "dataset", "n": 1}
    assert visible(tmp_path) == ["ds"]


def test_refuses_another_kind_or_a_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with atomic_output_dir(out, kind="dataset") as tmp:
        write_manifest(tmp, {"kind": "dataset"})
    with pytest.raises(OutputError, match=r"holds a tlbreplay dataset .* `--force`"):
        check_replaceable(out, "results")
    with (
        pytest.raises(OutputError, match="tlbreplay dataset"),
        atomic_output_dir(out, kind="report"),
    ):
        pass
    assert read_manifest(out)["kind"] == "dataset"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"not a tlbreplay output .*`notes.txt`"):
        check_replaceable(mine, "dataset")
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="holds a file"):
        check_replaceable(tmp_path / "file", "dataset")
    with atomic_output_dir(mine, kind="results", force=True) as tmp:
        write_manifest(tmp, {"kind": "results"})
    assert read_manifest(mine) == {"kind": "results"}


def test_output_is_a_link_to_a_complete_version_with_the_umask_mode(tmp_path: Path) -> None:
    out = tmp_path / "res"
    old = os.umask(0o027)
    try:
        with atomic_output_dir(out, kind="results") as tmp:
            write_manifest(tmp, {"kind": "results"})
    finally:
        os.umask(old)
    version = current_version(out)
    assert out.is_symlink() and version is not None and version.is_dir()
    assert version.stat().st_mode & 0o777 == 0o750


def test_versions_beyond_the_previous_one_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "res"
    versions = []
    for n in range(4):
        with atomic_output_dir(out, kind="results") as tmp:
            write_manifest(tmp, {"kind": "results", "n": n})
        versions.append(current_version(out))
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "res")
    assert left == sorted(v.name for v in versions[-2:] if v is not None)


def test_plain_directory_from_before_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "res"
    out.mkdir()
    write_manifest(out, {"kind": "results", "old": True})
    with atomic_output_dir(out, kind="results") as tmp:
        write_manifest(tmp, {"kind": "results", "old": False})
    assert read_manifest(out) == {"kind": "results", "old": False}
    assert visible(tmp_path) == ["res"]


def test_concurrent_finishers_both_succeed(tmp_path: Path) -> None:
    """Two runs finishing together: each installs a complete version, no ENOTEMPTY."""
    out = tmp_path / "res"
    gate = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            with atomic_output_dir(out, kind="results") as tmp:
                write_manifest(tmp, {"kind": "results", "n": n})
                gate.wait()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert read_manifest(out)["n"] in range(4)
    assert visible(tmp_path) == ["res"]


def test_stale_tmp_of_a_dead_pid_is_swept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    out = tmp_path / "res"
    stale = tmp_path / f".res.{pid}.abcd1234.tmp"
    stale.mkdir()
    (stale / "big.parquet").write_bytes(b"x" * 1000)
    live = tmp_path / f".res.{os.getpid()}.live0000.tmp"
    live.mkdir()
    other = tmp_path / f".other.{pid}.abcd1234.tmp"
    other.mkdir()
    assert sweep_stale(out) == [stale]
    assert live.exists() and other.exists()
    live.rmdir()
    with atomic_output_dir(out, kind="results") as tmp:
        write_manifest(tmp, {"kind": "results"})
    assert not stale.exists()
