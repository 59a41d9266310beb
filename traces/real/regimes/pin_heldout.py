"""Write HELDOUT.json: the calibration of every held-out regime cell, with capture.json and
without it (`calibrate --no-hosting`), as tests/analyze/test_calibration_regimes.py pins it:
set 1 (traces/real/regimes/SPLIT.toml, `held-out`) into traces/real/regimes/HELDOUT.json,
set 2 (traces/real/regimes2/SPLIT.toml, `held-out-2`, ADR 0512) into
traces/real/regimes2/HELDOUT.json. Run from the repository root after an engine change has
been reported: `.venv/bin/python traces/real/regimes/pin_heldout.py` (both sets), or with
`1` or `2` for one set."""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

from pipeline.analyze.calibrate import calibrate
from pipeline.ingest.runner import run_ingest
from pipeline.lab.matrix import plan_configs

HERE = Path(__file__).resolve().parent
#: set number -> (directory of the plan and its captures, the plan's `set` of the cells)
SETS = {"1": (HERE, "held-out"), "2": (HERE.parent / "regimes2", "held-out-2")}


def main(argv: list[str] | None = None) -> int:
    chosen = (sys.argv[1:] if argv is None else argv) or sorted(SETS)
    for key in chosen:
        if key not in SETS:
            print(f"tlbreplay: error: pin_heldout.py: unknown set `{key}` (1 or 2)", file=sys.stderr)
            return 1
        pin(*SETS[key])
    return 0


def pin(here: Path, held: str) -> None:
    """Calibrate every `held` cell of ``here``/SPLIT.toml; write ``here``/HELDOUT.json."""
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for which, cfg in plan_configs(here / "SPLIT.toml"):
            name = cfg.regime_name
            trace = here / f"{name}.trace.zst"
            if which != held or not trace.is_file():
                continue
            dataset = Path(tmp) / name
            run_ingest([str(trace)], dataset, vm_config=here / f"{name}.toml")
            out[name] = {}
            for mode, hosting in (("hosting", True), ("no_hosting", False)):
                table = calibrate(dataset, hosting=hosting)
                out[name][mode] = {
                    c: [None if math.isnan(o) else o, None if math.isnan(s) else s]
                    for c, o, s in zip(
                        table["counter"], table["observed"], table["simulated"], strict=True
                    )
                }
    (here / "HELDOUT.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} {held} cells pinned in {here / 'HELDOUT.json'}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
