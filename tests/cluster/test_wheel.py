"""The wheel is enough for a Dask worker: it carries schemas/, and a sweep point runs from a
fresh venv that has only the wheel and its locked dependencies (no checkout on sys.path)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import polars as pl
import pytest

from pipeline.cluster import code_fingerprint

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "tests" / "cluster" / "data" / "tiny-host.toml"


def _uv() -> str:
    for candidate in (shutil.which("uv"), str(REPO / ".tools" / "bin" / "uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("uv is not installed (make setup installs it under .tools/)")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)


@pytest.mark.slow
def test_wheel_carries_schemas_and_runs_a_sweep_point(tmp_path: Path) -> None:
    uv = _uv()
    dist = tmp_path / "dist"
    built = _run([uv, "build", "--wheel", "--out-dir", str(dist), str(REPO)], REPO)
    if built.returncode:  # no network and no cached hatchling: try the cache alone
        built = _run([uv, "build", "--offline", "--wheel", "--out-dir", str(dist), str(REPO)], REPO)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("tlbreplay-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/schemas/epochs.toml" in names
    assert "pipeline/schemas/enums.toml" in names
    assert any(n.startswith("pipeline/schemas/ftrace/") for n in names)
    assert "pipeline/analyze/sql/10_shootdowns.sql" in names

    venv = tmp_path / "venv"
    assert _run([uv, "venv", "--python", "3.11", str(venv)], tmp_path).returncode == 0
    python = venv / "bin" / "python"
    # the locked versions, from uv's cache when offline
    reqs = tmp_path / "requirements.txt"
    exported = _run(
        [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "-o", str(reqs)], REPO
    )
    assert exported.returncode == 0, exported.stderr
    install = [uv, "pip", "install", "--python", str(python), "-r", str(reqs), str(wheel)]
    done = _run([*install[:3], "--offline", *install[3:]], tmp_path)
    if done.returncode:
        done = _run(install, tmp_path)
    assert done.returncode == 0, done.stderr

    work = tmp_path / "elsewhere"  # not the checkout: only the installed wheel is importable
    work.mkdir()
    where = _run([str(python), "-c", "import pipeline; print(pipeline.__file__)"], work)
    assert str(venv) in where.stdout, where.stdout
    theirs = _run(
        [str(python), "-c", "from pipeline.cluster import code_fingerprint as f; print(f())"],
        work,
    )
    assert theirs.stdout.strip() == code_fingerprint()  # same code: workers would be accepted

    grid = work / "grid.toml"
    grid.write_text('[grid]\npolicy = ["linux-7.1"]\n')
    out = work / "results"
    tlbreplay = venv / "bin" / "tlbreplay"
    ran = _run(
        [str(tlbreplay), "sweep", str(SPEC), "--grid", str(grid), "--out", str(out), "-j", "1"],
        work,
    )
    assert ran.returncode == 0, ran.stderr
    points = pl.read_parquet(out / "points.parquet")
    assert points["status"].to_list() == ["ok"]
    assert list((out / "epochs" / "point=0" / "policy=linux-7.1").glob("vm=*/part-0.parquet"))
