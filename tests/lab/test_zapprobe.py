"""The KVM zap probe's arithmetic (pipeline/lab/zapprobe.py, ADR 0350) on a fake VM; the
real probe runs in tests/lab/test_guest.py where /dev/kvm is usable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.lab import zapprobe
from pipeline.lab.memory import PROT_READ, PROT_WRITE


class FakeRam:
    def __init__(self, vm: FakeVm) -> None:
        self.vm = vm
        self.calls: list[int] = []

    def protect(self, prot: int) -> None:
        self.calls.append(prot)
        self.vm.sptes = 0  # any invalidation zaps every SPTE


class FakeVm:
    def __init__(self, sptes: int) -> None:
        self.sptes = sptes
        self.ram = FakeRam(self)

    def stats(self) -> dict[str, int]:
        return {"pages_4k": self.sptes, "pages_2m": 0, "remote_tlb_flush": 7}


def _clock(values: list[int]) -> Iterator[int]:
    yield from values


def test_probe_is_the_first_mprotect_minus_the_same_one_without_sptes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vm = FakeVm(65536)
    # t0, t1 (first PROT_READ: 10 ms), t2, t3 (second PROT_READ, no SPTEs: 6.5 ms)
    ticks = _clock([0, 10_000_000, 12_000_000, 18_500_000])
    monkeypatch.setattr(zapprobe.time, "thread_time_ns", lambda: next(ticks))
    ns = zapprobe.kvm_zap_ns_per_spte(vm)  # type: ignore[arg-type]
    assert ns == pytest.approx(3_500_000 / 65536)
    # read-only, read-write, read-only, read-write: the RAM is left as it was
    rw = PROT_READ | PROT_WRITE
    assert vm.ram.calls == [PROT_READ, rw, PROT_READ, rw]


def test_probe_declines_without_enough_4k_sptes(monkeypatch: pytest.MonkeyPatch) -> None:
    vm = FakeVm(128)  # a THP-backed guest: a handful of 2 MiB SPTEs
    assert zapprobe.kvm_zap_ns_per_spte(vm) is None  # type: ignore[arg-type]
    assert vm.ram.calls == []
    # a difference that is not positive is not a measurement
    vm = FakeVm(65536)
    ticks = _clock([0, 5_000_000, 6_000_000, 12_000_000])
    monkeypatch.setattr(zapprobe.time, "thread_time_ns", lambda: next(ticks))
    assert zapprobe.kvm_zap_ns_per_spte(vm) is None  # type: ignore[arg-type]
