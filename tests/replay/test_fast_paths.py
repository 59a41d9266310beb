"""ADR 0373's shortcuts change no result: a replay with the compiled interval kernels and
the empty-chunk return of change_prot_numa() equals one with the numpy kernels and the whole
path, for every policy, on a large mostly unpopulated VM (the case both shortcuts serve)."""

from __future__ import annotations

import pytest

from bench.bench_replay import GIB, vm, workload
from pipeline.replay import intervals
from pipeline.replay.mprotect import ChangeProtNuma
from pipeline.replay.params import ReplayParams
from pipeline.replay.runner import replay_frames


def test_shortcuts_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    vms, acc = vm(1024 * GIB), workload(120, GIB // 4096)
    fast = replay_frames(vms, acc, None, ReplayParams(workers=1))
    monkeypatch.setattr(intervals, "_LIB", None)
    monkeypatch.setattr(ChangeProtNuma, "_nothing_to_do", lambda self, g0, g1: False)
    slow = replay_frames(vms, acc, None, ReplayParams(workers=1))
    assert fast.scans.height > 0 and fast.epochs.height > 0
    assert fast.epochs.equals(slow.epochs)
    assert fast.vcpu_epochs.equals(slow.vcpu_epochs)
    assert fast.scans.equals(slow.scans)
