"""`make pipeline` wall time on a fresh output directory (synth, ingest, replay, report).

Runs ``make pipeline OUT=<new temporary dir>`` in the repository (so nothing is reused from
a previous run) and times it end to end; the Makefile runs the datasets in parallel
(``-j$(nproc)``). Skipped, with the reason, when the Makefile has no ``pipeline`` target.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def has_target(name: str) -> bool:
    makefile = ROOT / "Makefile"
    text = makefile.read_text() if makefile.is_file() else ""
    return re.search(rf"^{re.escape(name)}:", text, re.MULTILINE) is not None


def main() -> dict[str, Any] | None:
    if not has_target("pipeline") or shutil.which("make") is None:
        print("skipped: no `pipeline` target in the Makefile (or no make)")
        return None
    with tempfile.TemporaryDirectory(prefix="tlbreplay-bench-pipeline-") as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["make", "--no-print-directory", "pipeline", f"OUT={out}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            msg = f"make pipeline failed ({proc.returncode}): {' | '.join(tail)}"
            raise RuntimeError(msg)
        results = sorted(p.parent.name for p in (out / "results").glob("*/manifest.json"))
        report = (out / "report" / "report.html").is_file()
    print(
        f"make pipeline: {wall:.1f} s on a fresh OUT ({len(results)} RESULTS: "
        f"{', '.join(results)}; report {'written' if report else 'MISSING'})"
    )
    return {"make pipeline wall, fresh OUT (s)": wall, "make pipeline RESULTS dirs": len(results)}


if __name__ == "__main__":
    main()
