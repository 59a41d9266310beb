"""The engine on the regime captures of issue 11 (traces/real/regimes/, Linux 6.18, kvm_pvm).

The split (traces/real/regimes/SPLIT.toml) was committed before the captures, and so was
held-out set 2 (traces/real/regimes2/SPLIT.toml, ADR 0512). The held-out cells' calibration,
with capture.json and without it (``--no-hosting``), is pinned in ``HELDOUT.json`` beside
them (``tlbreplay calibrate --format json``, docs/lab.md "Regimes"): a change of the engine
or of calibrate that moves a held-out number fails here and must be reported, not refitted.
What must hold whatever the engine does is asserted too: the plain MPOL_BIND cell is never
scanned, and no window that includes the guest populating its RAM shows phantom zaps
(ADR 0510).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.analyze import calibrate as cal
from pipeline.analyze import calibrate_observed as cal_obs
from pipeline.ingest.runner import run_ingest
from pipeline.lab.matrix import plan_configs

REGIMES = Path(__file__).resolve().parents[2] / "traces" / "real" / "regimes"
#: held-out set 1 (issue 11) and set 2 (captured before task s5c's engine changes, ADR 0512):
#: the directory of each plan, its captures and its pinned HELDOUT.json, and the cells' set
SETS = ((REGIMES, "held-out"), (REGIMES.parent / "regimes2", "held-out-2"))


def _held(root: Path, held: str) -> list[tuple[Path, str, object]]:
    plan = root / "SPLIT.toml"
    if not plan.is_file() or not (root / "HELDOUT.json").is_file():
        return []
    return [
        (root, cfg.regime_name, cfg)
        for which, cfg in plan_configs(plan)
        if which == held and (root / f"{cfg.regime_name}.trace.zst").is_file()
    ]


HELD = [cell for root, held in SETS for cell in _held(root, held)]


def _dataset(root: Path, name: str, tmp: Path) -> Path:
    dataset = tmp / name
    run_ingest([str(root / f"{name}.trace.zst")], dataset, vm_config=root / f"{name}.toml")
    return dataset


def _values(table: object) -> dict[str, float]:
    import polars as pl

    assert isinstance(table, pl.DataFrame)
    return dict(zip(table["counter"], table["observed"], strict=True)) | {
        f"sim:{c}": s for c, s in zip(table["counter"], table["simulated"], strict=True)
    }


def _same(a: float | None, b: float) -> bool:
    if a is None:
        return math.isnan(b)
    return b == pytest.approx(a, rel=1e-9, abs=1e-9)


@pytest.mark.skipif(not HELD, reason="regime captures not committed")
@pytest.mark.parametrize(("root", "name", "cfg"), HELD, ids=[n for _, n, _ in HELD])
def test_held_out_cell_is_pinned(root: Path, name: str, cfg: object, tmp_path: Path) -> None:
    pinned = json.loads((root / "HELDOUT.json").read_text())[name]
    dataset = _dataset(root, name, tmp_path)
    for mode, hosting in (("hosting", True), ("no_hosting", False)):
        got = _values(cal.calibrate(dataset, hosting=hosting))
        for counter, (obs, sim) in pinned[mode].items():
            assert _same(obs, got[counter]), f"{mode} {counter}: observed {got[counter]}"
            assert _same(sim, got[f"sim:{counter}"]), (
                f"{mode} {counter}: sim {got[f'sim:{counter}']}"
            )
    got = _values(cal.calibrate(dataset))
    if getattr(cfg, "mempolicy", "") == "bind":
        # vma_policy_mof() is false under a plain MPOL_BIND: never scanned, on both sides
        assert got["scans"] == 0 and got["notifier_calls"] == 0 and got["sim:scans"] == 0
    if getattr(cfg, "nb_from", "") == "before-guest":
        # first-touch installs are not zaps: at most one re-install per page per notifier
        pages = getattr(cfg, "mem_mib", 0) * 256
        assert got["spte_zapped"] <= pages * max(1.0, got["notifier_calls"])


CONTROL = REGIMES / "control" / "lab-anon-4k-nopin-nb0-early-1024m-2v-20s"


@pytest.mark.skipif(not Path(f"{CONTROL}.trace.zst").is_file(), reason="control not committed")
def test_population_in_the_window_is_no_zap(tmp_path: Path) -> None:
    """numa_balancing=0, the guest faulting its 1 GiB of 4K RAM in during the window: ~100k
    SPTE installs and as many faults, none of them a zap or a refault (ADR 0510)."""
    import polars as pl

    dataset = tmp_path / "ctl"
    run_ingest([f"{CONTROL}.trace.zst"], dataset, vm_config=Path(f"{CONTROL}.toml"))
    installs = pl.read_parquet(dataset / "ftrace" / "kvm_mmu_set_spte.parquet").height
    assert installs > 100_000
    inp = cal_obs.load_input(dataset)
    assert cal_obs.population_in_trace(inp)
    got = _values(cal.calibrate(dataset))
    assert got["spte_zapped"] == 0 and got["refaults"] == 0 and got["notifier_calls"] == 0
