"""The README's sentences about its tables are written from the tables' numbers
(pipeline.analyze.readme_findings): every number comes from the inputs, and a sentence whose
direction flips loses the explanation of the old direction. The inputs are a snapshot of
`make pipeline`'s values (tests/data/readme_findings_inputs.json); the README itself is
checked against the live tool by test_readme_tables.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.analyze import readme_findings as rf

INPUTS = Path(__file__).resolve().parents[1] / "data" / "readme_findings_inputs.json"


@pytest.fixture
def inputs() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, tuple[float, float]]]]:
    raw: dict[str, Any] = json.loads(INPUTS.read_text())
    cells = {
        n: {k: (float(v[0]), float(v[1])) for k, v in c.items()} for n, c in raw["cells"].items()
    }
    return raw["results"], cells


def _text(lines: list[str]) -> str:
    return " ".join(" ".join(lines).split())


def test_results_findings_quote_the_table(inputs: Any) -> None:
    results, cells = inputs
    text = _text(rf.results_findings(results, cells))
    assert (
        "rfc-v2 and the new `notify-changed` take NUMA balancing's KVM shootdowns to zero" in text
    )
    assert "248,320 pages failed on 6.18 and none fail on 7.1" in text
    assert (
        "zaps **1.3x more SPTEs** than 6.18 (5,421 against 4,170) and flushes 76 times against 36"
        in text
    )
    assert "Two things cause this" in text
    assert "pinned private 4K RAM zaps 256 MiB of it (65,536 SPTEs, 1.7 notifiers)" in text
    assert "unpinned RAM zaps 128 MiB, because" in text
    assert "129 flushes against 6.5's 42" in text
    assert "9x more unmap calls (519 to 4,897)" in text
    assert "more flushes than 6.5 (4,423 against 45)" in text and "ADR 0370" in text
    assert "12 KVM flushes against 99 on linux-7.1 (-88%) and 1,166 on rfc-v2" in text
    assert "The oracle (8) is the floor" in text


def test_a_flipped_direction_drops_the_old_explanation(inputs: Any) -> None:
    results, cells = inputs
    flipped = copy.deepcopy(results)
    flipped["rfc-v2"]["no-device:remote_tlb_flushes"] = 30  # fewer than 6.5's 45
    flipped["linux-7.1"]["vfio-pinned:spte_zapped"] = 4000  # fewer than 6.18's 4,170
    flipped["notify-changed"]["mixed:remote_tlb_flushes"] = 150  # more than 7.1's 99
    flipped["rfc-v2"]["vfio-pinned:remote_tlb_flushes"] = 3
    text = _text(rf.results_findings(flipped, cells))
    assert "fewer flushes than 6.5 (30 against 45)" in text and "ADR 0370" not in text
    assert "Two things cause this" not in text
    assert "It zaps 4,000 SPTEs against 6.18's 4,170" in text
    assert "150 KVM flushes against 99 on linux-7.1 (+52%)" in text
    assert "Sean Christopherson" not in text
    assert "to zero" not in text


def test_calibration_findings_quote_the_cells(inputs: Any) -> None:
    _, cells = inputs
    text = _text(rf.calibration_findings(cells))
    assert "numa_pte_updates are 3.1% below in every cell but pinned anon 4K" in text
    assert "~1,050 PTEs per scan" in text
    assert "notifier calls, notifier bytes, SPTE zaps" in text
    assert "Not within 10% in every cell" not in text
    assert "within 3.5% in 7 of 8 cells" in text
    assert "KVM flushes, per cell (-22% to +17%)" in text
    assert "27 / 27 over the four 4K cells, 51 / 51 over all captures" in text
    assert "Its scan interval is -26%." in text and "one work item earlier" in text


def test_calibration_findings_follow_a_changed_cell(inputs: Any) -> None:
    _, cells = inputs
    changed = copy.deepcopy(cells)
    changed["anon 4K"]["scans"] = (6.0, 8.0)  # +33%
    changed["anon 4K pinned"]["scan_interval_ms"] = (5212.0, 5600.0)  # +7%
    text = _text(rf.calibration_findings(changed))
    assert "Not within 10% in every cell: scans." in text
    assert "Its scan interval is +7%." in text and "one work item earlier" not in text


def test_wrap_keeps_words_and_width() -> None:
    lines = [
        "- **A.** " + "word " * 40,
        "  - nested " + "x " * 60,
        "",
        "  indented " + "y " * 50,
    ]
    out = rf.wrap(lines)
    assert all(len(line) <= rf.WIDTH for line in out)
    assert " ".join(out).split() == " ".join(lines).split()
    assert out[0].startswith("- **A.**") and out[1].startswith("  word")
    nested = next(i for i, line in enumerate(out) if line.startswith("  - nested"))
    assert out[nested + 1].startswith("    x")
    assert "" in out and out[-1].startswith("  y")
