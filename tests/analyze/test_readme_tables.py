"""The README's generated tables (ADR 0431): the marked blocks are rewritten by
`pipeline.analyze.readme_tables`, and this test fails when the README drifts from what the
tool computes on the sample specs and the committed lab captures."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.analyze import readme_tables as rt
from pipeline.cli import app
from pipeline.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CELLS = sorted((ROOT / "traces" / "real").glob("lab-*-nb1.trace.zst"))


def test_rewrite_replaces_only_the_marked_block() -> None:
    text = "a\n<!-- BEGIN generated: results (x) -->\nold\n<!-- END generated: results -->\nb\n"
    new = rt.rewrite(text, {"results": ["| x |", "|---|"]})
    assert new == (
        "a\n<!-- BEGIN generated: results (x) -->\n| x |\n|---|\n"
        "<!-- END generated: results -->\nb\n"
    )
    assert rt.rewrite(new, {"results": ["| x |", "|---|"]}) == new
    with pytest.raises(InputError, match="no `<!-- BEGIN generated: calibration -->` block"):
        rt.rewrite(text, {"calibration": []})


def test_cell_names() -> None:
    assert rt.cell_name("real-lab-anon-4k-pin-nb1") == "anon 4K pinned"
    assert rt.cell_name("real-lab-shared-thp-nopin-nb1") == "shared THP"
    assert rt.cell_name("real-lab-anon-4k-nopin-nb0") is None  # the control is prose
    assert rt.cell_name("mixed") is None


def _run(*args: str) -> None:
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.skipif(not CELLS, reason="no lab captures committed under traces/real/")
def test_readme_tables_match_the_tool(tmp_path: Path) -> None:
    """`make pipeline`'s inputs, built here as it builds them, give exactly the README's
    blocks (regenerate with `make pipeline` or `python -m pipeline.analyze.readme_tables`)."""
    out = tmp_path / "out"
    for spec, _ in rt.RESULTS_COLUMNS:
        ds = out / "datasets" / spec
        _run("synth", str(ROOT / "traces" / f"{spec}.toml"), "--out", str(ds))
        _run("replay", str(ds), "--out", str(out / "results" / spec))
    for trace in CELLS:
        stem = trace.name.split(".")[0]
        _run(
            "ingest",
            str(trace),
            "--out",
            str(out / "datasets" / f"real-{stem}"),
            "--vm-config",
            str(trace.with_name(f"{stem}.toml")),
        )
    text = README.read_text()
    assert rt.rewrite(text, rt.generated_blocks(out)) == text, (
        "README.md's generated tables drifted from the tool: run `make pipeline`"
    )


def test_on_target_is_issue_11s_bound() -> None:
    assert rt.on_target(100, 110) and not rt.on_target(100, 111)
    assert rt.on_target(5, 6) and not rt.on_target(5, 7)  # under 10: within one event
    assert rt.on_target(0, 0) and not rt.on_target(0, 2)


def test_heldout_table_pools_the_pinned_cells(tmp_path: Path) -> None:
    import json

    pinned = {
        "a": {
            m: {k: [10.0, 12.0] for k, _, _ in rt.HELDOUT_COLUMNS}
            for m in ("hosting", "no_hosting")
        },
        "b": {
            m: {k: [5.0, 5.0] for k, _, _ in rt.HELDOUT_COLUMNS} for m in ("hosting", "no_hosting")
        },
    }
    pinned["b"]["hosting"]["scans"] = [None, 3.0]  # not observable: left out
    path = tmp_path / "HELDOUT.json"
    path.write_text(json.dumps(pinned))
    second = tmp_path / "HELDOUT2.json"
    second.write_text(json.dumps({"c": pinned["a"]}))
    lines = rt.heldout_table((("1", path), ("2", second), ("3", tmp_path / "missing.json")))
    assert lines[0].startswith("| counter | held-out set |")
    flushes = [x for x in lines if x.startswith("| KVM flushes |")]
    assert flushes == [
        "| KVM flushes | 1 (2 cells) | 15 / 17 (+13%) | 1 / 2 | +20% to +20% "
        "| 15 / 17 (+13%) | 1 / 2 | +20% to +20% |",
        "| KVM flushes | 2 (1 cells) | 10 / 12 (+20%) | 0 / 1 | +20% to +20% "
        "| 10 / 12 (+20%) | 0 / 1 | +20% to +20% |",
    ]
    scans = next(x for x in lines if x.startswith("| scans | 1 "))
    assert "| 10 / 12 (+20%) | 0 / 1 | +20% to +20% |" in scans
    assert rt.heldout_table((("1", tmp_path / "missing.json"),))[0].startswith("(no held-out")


def test_readme_heldout_block_is_the_pinned_numbers() -> None:
    blocks = {"heldout": rt.heldout_table()}
    text = README.read_text()
    assert rt.rewrite(text, blocks) == text
