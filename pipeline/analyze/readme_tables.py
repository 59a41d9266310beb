"""The README's results and calibration tables, generated from `make pipeline`'s outputs.

README.md holds two marked blocks (``<!-- BEGIN generated: NAME -->`` ...
``<!-- END generated: NAME -->``) that only this module writes (ADR 0431):

- ``results``: totals over the run per policy for the sample specs (``OUT/results/<spec>``),
  from the ``shootdowns_by_vm`` view;
- ``calibration``: observed / simulated per lab cell (``OUT/datasets/real-lab-*-nb1``), from
  :func:`pipeline.analyze.calibrate.calibrate` (the engine's default for the capture's
  kernel).

``python -m pipeline.analyze.readme_tables --out OUT README.md`` rewrites the blocks;
``make pipeline`` computes them once per change of its outputs (``--save OUT/readme.json``)
and rewrites the README from that file (``--load``). ``--check`` exits 1 when they differ
from what the tool computes (the test suite does the same). The output depends only on the
inputs: rows in the views' display order, numbers formatted one way.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.analyze.output import count_text
from pipeline.analyze.views import connect_in_memory
from pipeline.errors import InputError

#: The results table: per spec, the counters shown (column of shootdowns_by_vm, header).
RESULTS_COLUMNS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "vfio-pinned",
        (
            ("remote_tlb_flushes", "KVM flushes"),
            ("spte_zapped", "zapped SPTEs"),
            ("mmu_notifier_invalidations", "notifiers"),
            ("numa_migrate_failed", "failed migrations (pages)"),
        ),
    ),
    (
        "no-device",
        (
            ("remote_tlb_flushes", "flushes"),
            ("kvm_unmap_gfn_range_calls", "unmap calls"),
            ("numa_pages_migrated", "pages migrated"),
        ),
    ),
    (
        "mixed",
        (
            ("remote_tlb_flushes", "flushes"),
            ("mmu_notifier_invalidations", "notifiers"),
        ),
    ),
)
#: The calibration table: counter of calibrate(), header.
CALIBRATION_COLUMNS = (
    ("remote_tlb_flushes", "KVM flushes"),
    ("notifier_calls", "notifiers"),
    ("spte_zapped", "SPTE zaps"),
    ("refaults", "refaults"),
    ("scans", "scans"),
    ("scan_interval_ms", "scan interval ms"),
    ("numa_huge_pte_updates", "huge PMD updates"),
    ("numa_hint_faults", "hint faults"),
)
#: Lab cells of the calibration table: ``real-lab-<backing>-<page>-<pin>-nb1`` datasets.
CELL_RE = re.compile(r"real-lab-(anon|shared)-(4k|thp)-(pin|nopin)-nb1")

TOTALS_SQL = (
    "SELECT policy, {cols} FROM shootdowns_by_vm JOIN run_policies USING (policy) "
    "GROUP BY policy, policy_rank ORDER BY policy_rank"
)


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN generated: {name} [^>]*-->\n)(.*?)(<!-- END generated: {name} -->)",
        re.DOTALL,
    )


def results_values(results_root: Path) -> dict[str, dict[str, int]]:
    """The sample specs' totals: ``{policy: {"<spec>:<counter>": total}}``, policies in
    display order (taken from the first spec)."""
    values: dict[str, dict[str, int]] = {}
    for spec, counters in RESULTS_COLUMNS:
        path = results_root / spec
        if not (path / "manifest.json").is_file():
            msg = f"no RESULTS for spec `{spec}`; run `make pipeline` first"
            raise InputError(str(path), msg)
        cols = ", ".join(f"sum({c})::BIGINT AS {c}" for c, _ in counters)
        con, _ = connect_in_memory(path)  # one query: no saved catalog to build (ADR 0427)
        try:
            rows = con.sql(TOTALS_SQL.format(cols=cols)).fetchall()
        finally:
            con.close()
        for policy, *nums in rows:
            for (counter, _), num in zip(counters, nums, strict=True):
                values.setdefault(str(policy), {})[f"{spec}:{counter}"] = int(num or 0)
    return values


def results_table(values: dict[str, dict[str, int]]) -> list[str]:
    """The markdown table of :func:`results_values`."""
    columns = [f"{spec}:{c}" for spec, counters in RESULTS_COLUMNS for c, _ in counters]
    heads = [
        f"{spec}: {h}" if i == 0 else h
        for spec, counters in RESULTS_COLUMNS
        for i, (_, h) in enumerate(counters)
    ]
    lines = ["| policy | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for policy, row in values.items():
        cells = [count_text(row[c]) if c in row else "—" for c in columns]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return lines


def cell_name(dataset: str) -> str | None:
    """``anon 4K pinned`` for ``real-lab-anon-4k-pin-nb1``; None for other datasets."""
    m = CELL_RE.fullmatch(dataset)
    if m is None:
        return None
    backing, page, pin = m.groups()
    text = f"{backing} {'4K' if page == '4k' else 'THP'}"
    return f"{text} pinned" if pin == "pin" else text


def _num(value: float) -> str:
    if math.isnan(value):  # NaN: the counter was not observable
        return "—"
    return count_text(round(value))


def calibration_values(datasets_root: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """Every lab cell's ``{counter: (observed, simulated)}`` from
    :func:`pipeline.analyze.calibrate.calibrate`, cells in table order (anon, then shared)."""
    from pipeline.analyze.calibrate import calibrate

    cells = sorted(
        (name, p)
        for p in datasets_root.glob("real-lab-*-nb1")
        if (name := cell_name(p.name)) is not None
    )
    if not cells:
        msg = "no lab datasets `real-lab-*-nb1`; run `make pipeline` first"
        raise InputError(str(datasets_root), msg)
    order = {"anon": 0, "shared": 1}
    cells.sort(key=lambda c: (order[c[0].split()[0]], c[0]))
    return {
        name: {
            str(r["counter"]): (_float(r["observed"]), _float(r["simulated"]))
            for r in calibrate(path).iter_rows(named=True)
        }
        for name, path in cells
    }


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def calibration_table(cells: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """The markdown table of :func:`calibration_values`: ``observed / simulated``."""
    heads = [h for _, h in CALIBRATION_COLUMNS]
    lines = ["| cell | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for name, rows in cells.items():
        parts = [f"{_num(rows[c][0])} / {_num(rows[c][1])}" for c, _ in CALIBRATION_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return lines


#: The held-out regime cells, pinned by tests/analyze/test_calibration_regimes.py: set 1
#: (traces/real/regimes, issue 11) and set 2 (traces/real/regimes2, captured before task
#: s5c's engine changes; ADR 0512), each with the label its rows get.
HELDOUT = Path(__file__).resolve().parents[2] / "traces" / "real" / "regimes" / "HELDOUT.json"
HELDOUT_2 = HELDOUT.parents[1] / "regimes2" / "HELDOUT.json"
HELDOUT_SETS = (("1", HELDOUT), ("2", HELDOUT_2))
#: The held-out table: counter of calibrate() (HELDOUT.json), header, scale to show.
HELDOUT_COLUMNS = (
    ("remote_tlb_flushes", "KVM flushes", 1),
    ("notifier_calls", "notifiers", 1),
    ("notifier_bytes", "notifier MiB", 2**20),
    ("spte_zapped", "SPTE zaps", 1),
    ("refaults", "refaults", 1),
    ("scans", "scans", 1),
)


def _error(observed: float, simulated: float) -> str:
    if observed == 0:
        return "exact" if simulated == 0 else "n/a"
    return f"{(simulated / observed - 1) * 100:+.0f}%"


def on_target(observed: float, simulated: float) -> bool:
    """Issue 11's bound: within 10%, or within 1 event where the kernel counted under 10."""
    if observed < 10:
        return abs(simulated - observed) <= 1
    return abs(simulated - observed) <= 0.10 * observed + 1e-9  # (float rounding of 10%)


def heldout_table(sets: Sequence[tuple[str, Path]] = HELDOUT_SETS) -> list[str]:
    """Per counter and held-out set (``sets``: label, pinned HELDOUT.json): pooled observed
    / simulated over the set's cells, with and without capture.json; how many cells are on
    issue 11's target (:func:`on_target`); the range of the per-cell errors over the cells
    where the kernel counted 10 or more. A set whose file is missing is left out."""
    pinned = [(label, json.loads(path.read_text())) for label, path in sets if path.is_file()]
    if not pinned:
        return ["(no held-out regime cells committed: traces/real/regimes/HELDOUT.json)"]
    head = "observed / simulated | cells on target | per cell (kernel >= 10)"
    lines = [
        f"| counter | held-out set | with capture.json: {head} | without capture.json: {head} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, header, scale in HELDOUT_COLUMNS:
        for label, cells in pinned:
            parts = [header, f"{label} ({len(cells)} cells)"]
            for mode in ("hosting", "no_hosting"):
                parts += _heldout_cells(cells, mode, key, scale)
            lines.append("| " + " | ".join(parts) + " |")
    return lines


def _heldout_cells(
    cells: dict[str, dict[str, dict[str, list[float | None]]]], mode: str, key: str, scale: int
) -> list[str]:
    """The three columns of one counter, set and mode of :func:`heldout_table`."""
    pairs = [
        (float(o) / scale, float(v) / scale)
        for cell in cells.values()
        for o, v in [cell[mode][key]]
        if o is not None and v is not None
    ]
    obs = sum(o for o, _ in pairs)
    sim = sum(v for _, v in pairs)
    hits = sum(on_target(o * scale, v * scale) for o, v in pairs)
    errs = sorted((v / o - 1) * 100 for o, v in pairs if o * scale >= 10)
    spread = f"{errs[0]:+.0f}% to {errs[-1]:+.0f}%" if errs else "n/a"
    return [f"{_num(obs)} / {_num(sim)} ({_error(obs, sim)})", f"{hits} / {len(pairs)}", spread]


def generated_blocks(out: Path) -> dict[str, list[str]]:
    """Every generated block's lines from `make pipeline`'s output directory ``out`` (and
    the pinned held-out calibration)."""
    from pipeline.analyze.readme_findings import calibration_findings, results_findings

    results = results_values(out / "results")
    cells = calibration_values(out / "datasets")
    return {
        "results": results_table(results),
        "findings": results_findings(results, cells),
        "calibration": calibration_table(cells),
        "calibration-findings": calibration_findings(cells),
        "heldout": heldout_table(),
    }


def rewrite(text: str, blocks: dict[str, list[str]]) -> str:
    """``text`` with each marked block's body replaced by its lines."""
    for name, lines in blocks.items():
        pattern = _block(name)
        if not pattern.search(text):
            msg = f"no `<!-- BEGIN generated: {name} -->` block"
            raise InputError("README.md", msg)
        body = "\n".join(lines) + "\n"
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)  # type: ignore[misc]
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) the README's generated blocks."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.analyze.readme_tables")
    parser.add_argument("readme", type=Path)
    parser.add_argument("--out", type=Path, default=Path("out"), help="make pipeline's OUT")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README drifted")
    parser.add_argument("--save", type=Path, help="also keep the blocks in this JSON file")
    parser.add_argument(
        "--load", type=Path, help="take the blocks from a --save file instead of computing"
    )
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text()
        blocks = json.loads(args.load.read_text()) if args.load else generated_blocks(args.out)
        if args.save:
            tmp = args.save.with_name(args.save.name + ".tmp")
            tmp.write_text(json.dumps(blocks, indent=1) + "\n")
            tmp.replace(args.save)
        new = rewrite(text, blocks)
    except InputError as exc:
        print(f"tlbreplay: error: {exc}", file=sys.stderr)
        return 1
    return settle(args.readme, text, new, check=args.check, what="generated tables")


def settle(readme: Path, text: str, new: str, *, check: bool, what: str) -> int:
    """Write ``new`` over ``readme`` (whose text was ``text``) when it differs, or with
    ``check`` only compare: exit code 1 and one line naming ``what`` drifted."""
    if check:
        if new != text:
            print(f"tlbreplay: error: {readme}: {what} drifted", file=sys.stderr)
            return 1
        return 0
    if new != text:  # whole or not at all: `make -j` or a Ctrl-C never leaves half a README
        tmp = readme.with_name(f".{readme.name}.tmp")
        tmp.write_text(new)
        tmp.replace(readme)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
