"""The `tlbreplay` import package (docs/api.md): the facade's functions and the docs'
notebook-style example, run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl
import pytest

import tlbreplay as tr

ROOT = Path(__file__).resolve().parents[1]


def test_facade_exports() -> None:
    for name in tr.__all__:
        assert hasattr(tr, name), name
    pols = tr.policies()
    assert list(pols)[:2] == ["linux-6.5", "skip-pinned"] and all(pols.values())


def test_facade_over_a_results_dir(tmp_path: Path) -> None:
    from tests.analyze.conftest import build_small_run

    res = tr.load_results(build_small_run(tmp_path))
    assert res.policies == ["linux-6.5", "linux-7.1", "oracle"]
    frame = tr.results_frame(res, "shootdowns_by_vm")
    assert isinstance(frame, pl.DataFrame)
    assert frame.select("policy", "vm", "remote_tlb_flushes").rows() == [
        ("linux-6.5", "vm0", 10),
        ("linux-6.5", "vm1", 2),
        ("linux-7.1", "vm0", 5),
        ("linux-7.1", "vm1", 2),
        ("oracle", "vm0", 0),
        ("oracle", "vm1", 1),
    ]
    assert tr.query(res, "SELECT 1 AS one").rows() == [(1,)]
    assert "savings_total" in tr.views(res)
    assert tr.verdict(res).startswith(f"{res.path.name} (2 VMs")
    with pytest.raises(tr.TlbReplayError, match="no view `nope`"):
        tr.results_frame(res, "nope")
    with pytest.raises(tr.TlbReplayError, match="read-only"):
        tr.query(res, "CREATE TABLE x AS SELECT 1")
    with pytest.raises(tr.TlbReplayError, match="not a dataset directory"):
        tr.load_dataset(res.path)


@pytest.mark.slow
def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The python block of docs/api.md, run from the repository root."""
    text = (ROOT / "docs" / "api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        exec(compile(code, "docs/api.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert re.search(r"results \(1 VM, [\d.]+ s replayed\): linux-7.1 would ", out)
