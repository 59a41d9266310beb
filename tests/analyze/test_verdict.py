"""The answer at a glance: number wording and the one-sentence verdict (ADR 0430)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.analyze.output import change_text, count_text, display_text, saved_pct_text
from pipeline.analyze.verdict import Outlier, Verdict
from pipeline.cli import app

POLICIES = ("linux-6.5", "skip-pinned", "rfc-v2", "linux-6.18", "linux-7.1", "oracle")


@pytest.mark.parametrize(
    ("before", "after", "text"),
    [
        (482, 127, "-74%"),
        (39_210, 151, "-99.6%"),
        (39_210, 10, "-99.97%"),
        (4, 5, "+25%"),
        (4, 126_095, "31,524x more"),
        (520, 4_370, "8.4x more"),
        (0, 5, "—"),
        (7, 7, "±0%"),
        (5, 0, "-100%"),
    ],
)
def test_change_text(before: int, after: int, text: str) -> None:
    assert change_text(before, after) == text


def test_saved_pct_never_below_minus_100() -> None:
    assert saved_pct_text(-3152275.0) == "31,524x more"
    assert saved_pct_text(-25866.887) == "260x more"
    assert saved_pct_text(-50.0) == "-50%"
    assert saved_pct_text(73.65) == "74%"
    assert saved_pct_text(None) == "—"
    assert display_text("flushes_saved_vs_6_5_pct", None) == "—"
    assert display_text("remote_tlb_flushes", None) == "—"
    assert count_text(39235) == "39,235"


def _verdict(values: tuple[int, ...], **kw: object) -> Verdict:
    flushes = dict(zip((*POLICIES, "notify-changed"), values, strict=True))
    return Verdict("vfio-pinned", 1, 40.0, flushes, dict.fromkeys(flushes, 1000.0), **kw)  # type: ignore[arg-type]


def test_sentence_names_upstream_and_the_best_proposal() -> None:
    v = _verdict((482, 801, 0, 35, 127, 0, 0))
    assert v.sentence() == (
        "vfio-pinned (1 VM, 40 s replayed): linux-7.1 would take KVM shootdowns from 482 "
        "(linux-6.5) to 127 (-74%); rfc-v2 and notify-changed to 0 (-100% against linux-7.1)."
    )
    # the compact table fits 100 columns and names every policy in full
    lines = v.table_lines()
    assert max(len(line) for line in lines) <= 100
    assert [line.split()[0] for line in lines[1:]] == [*POLICIES, "notify-changed"]
    assert "6.3x more" in lines[2]


def test_sentence_nothing_happened_and_no_better_proposal() -> None:
    assert (
        _verdict((0,) * 7).sentence().endswith("nothing happened: no policy made a KVM shootdown.")
    )
    v = _verdict((520, 520, 4370, 37, 37, 17, 37))
    assert v.sentence().endswith("to 37 (-93%); no proposal makes fewer.")
    same = _verdict((5, 5, 5, 5, 5, 5, 5))
    assert "would leave KVM shootdowns at 5, as linux-6.5" in same.sentence()


def test_outlier_text() -> None:
    o = Outlier("linux-6.5", "db", 260, 26_000, 36_466, 39_210)
    assert o.text() == (
        "93% of linux-6.5's 39,210 KVM shootdowns come from one epoch of VM db "
        "(epoch 260, t = 26 s)"
    )


def test_verdict_command_over_views(small_run: Path) -> None:
    """`tlbreplay verdict RESULTS --table`: the sentence from the views, then the table."""
    result = CliRunner().invoke(app, ["verdict", str(small_run), "--table"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{small_run.name} (2 VMs, ")
    assert "linux-7.1 would take KVM shootdowns from 12 (linux-6.5) to 7 (-42%)." in lines[0]
    assert lines[1].split() == [
        "policy",
        "KVM",
        "shootdowns",
        "vs",
        "linux-6.5",
        "vs",
        "linux-7.1",
        "cost",
        "(ms)",
    ]
    assert [line.split()[0] for line in lines[2:]] == ["linux-6.5", "linux-7.1", "oracle"]
