"""`tlbreplay report`: the page has its sections and embedded images, and renders."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.analyze.report import write_report
from pipeline.cli import app
from pipeline.errors import OutputError
from tests.analyze.results_builder import ep, make_dataset, make_results, vm_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a reader sees: runs, parts per run, images, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[str] = []
        self.parts: dict[str, list[str]] = {}
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []
        self.tables = 0
        self.h3: list[str] = []
        self._in_h3 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and a.get("class") == "run":
            self.runs.append(a["id"])
            self.parts[a["id"]] = []
        elif tag == "section" and a.get("class") == "part":
            self.parts[self.runs[-1]].append(a["data-part"])
        elif tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables += 1
        elif tag == "h3":
            self._in_h3 = True
        for key in ("src", "href"):
            value = a.get(key, "")
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if tag == "link":
            self.external.append(a.get("href", "link"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._in_h3 = False

    def handle_data(self, data: str) -> None:
        if self._in_h3:
            self.h3.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def small_report(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of small_run, written once through the CLI; tests only read it."""
    out = tmp_path_factory.mktemp("report") / "rep"
    result = CliRunner().invoke(app, ["report", str(small_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_report_sections_and_images(small_report: Path) -> None:
    out = small_report
    page = parse(out / "report.html")
    assert page.runs == ["run-res"]
    assert page.parts["run-res"] == [
        "summary",
        "plots",
        "savings",
        "headline",
        "audits",
        "parameters",
        "manifest",
    ]
    assert page.external == []  # self-contained: no network, no other file needed
    assert len(page.images) == 3
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(img["src"].split(",", 1)[1])
        assert data.startswith(PNG_MAGIC)
        assert (out / img["data-file"]).read_bytes() == data  # the PNG is beside the page too
        assert img["alt"]
    text = (out / "report.html").read_text()
    assert "linux-6.5" in text and "oracle" in text and "&quot;epoch_ms&quot;: 100" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "report.html",
        "res-by_vcpu.png",
        "res-shootdowns.png",
        "res-timeline.png",
        "verdict.txt",
    ]


def test_report_writes_what_verdict_prints(small_run: Path, small_report: Path) -> None:
    # `make pipeline` copies verdict.txt instead of running `tlbreplay verdict` (ADR 0426)
    result = CliRunner().invoke(app, ["verdict", str(small_run)])
    assert result.exit_code == 0, result.output
    assert "linux-7.1" in result.output
    assert (small_report / "verdict.txt").read_text() == result.output


def test_report_of_several_results_and_observed(tmp_path: Path, small_run: Path) -> None:
    ftrace = {
        "kvm_unmap_hva_range": [
            {
                "ts_ns": 1,
                "cpu": 0,
                "pid": 1000,
                "comm": "qemu",
                "flags": "....",
                "hva_start": 0x7F0000000000,
                "hva_end": 0x7F0000200000,
            },
        ]
    }
    ds = make_dataset(tmp_path / "ds2", [vm_row("real")], ftrace=ftrace)
    real = make_results(
        tmp_path / "real",
        ds,
        policies=["linux-6.5"],
        epochs=[ep("linux-6.5", "real", 0, mmu_notifier_invalidations=2)],
    )
    path = write_report([small_run, real], tmp_path / "rep", workers=2)
    serial = write_report([small_run, real], tmp_path / "serial", workers=1)
    assert serial.read_bytes() == path.read_bytes()  # sections built in parallel or not
    page = parse(path)
    assert page.runs == ["run-res", "run-real"]
    assert "observed" not in page.parts["run-res"]  # synthetic: no observed section
    assert "observed" in page.parts["run-real"]
    assert len(page.images) == 6
    # observed vs simulated: one row per counter, one column per policy
    text = path.read_text()
    assert "<th>observed</th><th>observed_from</th><th>linux-6.5</th></tr>" in text
    assert (
        '<td>real</td><td>mmu_notifier_invalidations</td><td class="num">1</td>'
        '<td>kvm_unmap_hva_range calls in guest RAM</td><td class="num">2</td>'
    ) in text


def test_report_is_reproducible(small_run: Path, small_report: Path, tmp_path: Path) -> None:
    again = write_report([small_run], tmp_path / "again")
    assert again.read_bytes() == (small_report / "report.html").read_bytes()
    for png in small_report.glob("*.png"):
        assert (tmp_path / "again" / png.name).read_bytes() == png.read_bytes()


def test_report_refuses_a_foreign_out_dir(small_run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not a tlbreplay output"):
        write_report([small_run], foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_report_never_replaces_its_input(small_run: Path) -> None:
    for out in (small_run, small_run.parent, small_run.parent / "ds"):
        with pytest.raises(OutputError, match="would replace the input"):
            write_report([small_run], out)
    assert (small_run / "manifest.json").is_file()


def test_report_bad_results_leaves_nothing(tmp_path: Path, small_run: Path) -> None:
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        app, ["report", str(small_run), str(tmp_path / "nope"), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "no such RESULTS directory" in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]


SHOTS = Path(__file__).resolve().parent / "data" / "screenshots"


def _screenshot(page: Path, shot: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                f"--window-size={width},{height}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (make system-deps)"
)
@pytest.mark.parametrize(("width", "height"), [(1400, 1600), (390, 1600)])
def test_report_renders_in_headless_chromium(
    small_report: Path, tmp_path: Path, width: int, height: int
) -> None:
    """A person's check, at desktop and phone width: the page renders with content in it and
    looks like the committed screenshot (tests/analyze/data/screenshots/, looked at by a
    person; refresh with TLBREPLAY_UPDATE_SCREENSHOTS=1 after a deliberate change)."""
    import os

    import numpy as np
    from matplotlib.image import imread

    shot = tmp_path / f"report-{width}.png"
    _screenshot(small_report / "report.html", shot, width, height)
    pixels = imread(shot)[:, :, :3]
    assert pixels.shape[:2] == (height, width)
    # not blank: many distinct colours (tables, text and the embedded plots)
    flat = (pixels * 255).astype("uint8").reshape(-1, 3)
    assert len({tuple(p) for p in flat[::97]}) > 50
    golden = SHOTS / f"small-report-{width}.png"
    if os.environ.get("TLBREPLAY_UPDATE_SCREENSHOTS"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, golden)
    want = imread(golden)[:, :, :3]
    assert want.shape == pixels.shape
    # the same layout: fonts may antialias differently on another machine, a moved table or
    # a missing plot does not pass
    assert float(np.abs(want - pixels).mean()) < 0.03


def test_report_answers_first(small_report: Path) -> None:
    """The page opens with one sentence per run and the runs x policies matrix; no NULL and
    no percentage past -100% anywhere."""
    text = (small_report / "report.html").read_text()
    answers = text.index('<section class="answers">')
    assert answers < text.index('<section class="run"')
    assert text.count('<p class="answer">') == 2  # the top, and the run's own section
    assert "would take KVM shootdowns from 12" in text
    assert '<table class="matrix">' in text
    assert "NULL" not in text
    assert not re.search(r">-\d{3,}[\d.,]*%?<", text)
    assert "<details><summary>RESULTS manifest.json</summary>" in text


def test_corrupt_results_file_is_one_line(small_run: Path, tmp_path: Path) -> None:
    """A truncated Parquet file in RESULTS: one error line naming it, exit 1, nothing left."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(small_run, bad)
    part = next((bad / "epochs").rglob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    for args in (
        ["query", str(bad), "SELECT 1"],
        ["report", str(bad), "--out", str(tmp_path / "r")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert result.stderr.startswith("tlbreplay: error: ") and result.stderr.count("\n") == 1
        assert "cannot read table `epochs`" in result.stderr
    assert not (tmp_path / "r").exists()
