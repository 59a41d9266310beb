"""Write HELDOUT.json: the calibration of every held-out regime cell (SPLIT.toml), with
capture.json and without it (`calibrate --no-hosting`), as tests/analyze/
test_calibration_regimes.py pins it. Run from the repository root after an engine change
has been reported: `.venv/bin/python traces/real/regimes/pin_heldout.py`."""

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


def main() -> int:
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for which, cfg in plan_configs(HERE / "SPLIT.toml"):
            name = cfg.regime_name
            trace = HERE / f"{name}.trace.zst"
            if which != "held-out" or not trace.is_file():
                continue
            dataset = Path(tmp) / name
            run_ingest([str(trace)], dataset, vm_config=HERE / f"{name}.toml")
            out[name] = {}
            for mode, hosting in (("hosting", True), ("no_hosting", False)):
                table = calibrate(dataset, hosting=hosting)
                out[name][mode] = {
                    c: [None if math.isnan(o) else o, None if math.isnan(s) else s]
                    for c, o, s in zip(
                        table["counter"], table["observed"], table["simulated"], strict=True
                    )
                }
    (HERE / "HELDOUT.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} held-out cells pinned", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
