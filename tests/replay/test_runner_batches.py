"""Replay reads a DATASET's accesses in epoch batches (issue 6) with the in-memory results."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from pipeline.replay.accesses import DatasetAccesses
from pipeline.replay.dataset import dataset_epochs, dataset_seed, open_dataset, profile_hosting
from pipeline.replay.params import ReplayOutput, ReplayParams
from pipeline.replay.runner import replay_dataset, replay_frames

SPEC = Path(__file__).resolve().parents[2] / "traces" / "mixed.toml"
POLICIES = ["linux-6.5", "linux-7.1", "skip-pinned"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.synth.runner import run_synth

    out = tmp_path_factory.mktemp("mixed") / "ds"
    run_synth(SPEC, out)
    return out


def _in_memory(ds: Path, params: ReplayParams) -> ReplayOutput:
    opened = open_dataset(ds, params)
    frame = opened.accesses.lazy().collect()
    # the same seed (the contention process, ADR 0370) and span (ADR 0380) replay_dataset uses
    seed, span = dataset_seed(opened.manifest), dataset_epochs(opened)
    # the default VMM profile replay_dataset puts around a synth dataset's VMs (ADR 0365)
    params = replace(params, hosting=profile_hosting(opened.vms))
    return replay_frames(opened.vms, frame, POLICIES, params, seed, span_epochs=span)


def _assert_same(a: ReplayOutput, b: ReplayOutput) -> None:
    for name in ("epochs", "vcpu_epochs", "scans"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.height > 0, name
        assert left.equals(right), name


@pytest.mark.parametrize("epoch_ms", [100, 300])
def test_tiny_batches_give_the_in_memory_results(mixed: Path, epoch_ms: int) -> None:
    # batches of 1 and 7 epochs against the whole frame in memory: every table bit-identical,
    # also when the replay re-bins the dataset's epochs (300 ms = 3 dataset epochs)
    whole = _in_memory(mixed, ReplayParams(epoch_ms=epoch_ms, busy_vcpus=False))
    for batch in (1, 7):
        params = ReplayParams(epoch_ms=epoch_ms, busy_vcpus=False, batch_epochs=batch)
        _assert_same(replay_dataset(mixed, POLICIES, params), whole)


def test_a_batch_reads_only_its_epochs(mixed: Path) -> None:
    opened = open_dataset(mixed, ReplayParams())
    assert isinstance(opened.accesses, DatasetAccesses)
    names = opened.vms["vm"].to_list()
    assert len(names) == 2
    batch = opened.accesses.window(10, 13, names)
    everything = opened.accesses.lazy().collect()
    for name in names:
        got = batch[name]
        assert set(got.epoch.tolist()) <= {10, 11, 12}
        want = everything.filter((pl.col("vm") == name) & pl.col("epoch").is_between(10, 12)).height
        assert got.epoch.size == want > 0


def test_bad_batch_size_is_refused(mixed: Path) -> None:
    from pipeline.errors import DatasetError

    with pytest.raises(DatasetError, match="batch_epochs"):
        replay_dataset(mixed, ["linux-6.5"], ReplayParams(batch_epochs=0))


def test_accesses_decoded_once_give_each_policys_own_reads(mixed: Path, tmp_path: Path) -> None:
    # several policies share one decode of the accesses (ADR 0372); one policy alone reads
    # the DATASET itself: the tables are the same, and any window is the same arrays
    from pipeline.replay.decoded import decode_accesses

    params = ReplayParams(busy_vcpus=False, batch_epochs=5)
    together = replay_dataset(mixed, POLICIES, params)
    alone = [replay_dataset(mixed, [p], params) for p in POLICIES]
    for name in ("epochs", "vcpu_epochs", "scans"):
        parts = pl.concat([getattr(a, name) for a in alone])
        assert getattr(together, name).height > 0
        assert getattr(together, name).equals(parts), name
    opened = open_dataset(mixed, params)
    names = opened.vms["vm"].to_list()
    n = dataset_epochs(opened)
    decoded = decode_accesses(opened.accesses, names, n + 3, 7, tmp_path)
    for e0, e1 in ((0, 1), (3, 17), (n - 2, n + 3), (0, n + 3)):
        got, want = decoded.window(e0, e1, names), opened.accesses.window(e0, e1, names)
        for vm in names:
            for col in ("epoch", "vcpu", "gfn_start", "nr_pages"):
                a, b = getattr(got[vm], col), getattr(want[vm], col)
                assert a.dtype == b.dtype and a.tolist() == b.tolist(), (vm, col, e0, e1)
