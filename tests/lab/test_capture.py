"""capture: output naming, VMM filters, tracefs save/restore (on a fake tracefs), pipe copying."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

import pytest
import zstandard

from pipeline.errors import InputError
from pipeline.lab import capture, host, tracefs


def test_paths_beside_the_trace() -> None:
    paths = capture.CapturePaths.for_output(Path("traces/real/x.trace.zst"))
    assert paths.sidecar == Path("traces/real/x.toml")
    assert paths.vmstat == Path("traces/real/x.vmstat.json")
    assert paths.meta == Path("traces/real/x.capture.json")
    assert capture.CapturePaths.for_output(Path("y.zst")).sidecar == Path("y.toml")


def test_pid_filter_per_scope() -> None:
    by_name = {f"{e.system}:{e.name}": e for e in tracefs.EVENTS}
    pid = tracefs.pid_filter([12, 11, 12], 10, by_name["kvmmmu:kvm_mmu_spte_requested"])
    assert pid == "(common_pid == 11 || common_pid == 12)"
    assert tracefs.pid_filter([11], 10, by_name["kvm:kvm_unmap_hva_range"]) == ""
    assert tracefs.pid_filter([11], 10, by_name["sched:sched_move_numa"]) == "tgid == 10"
    flush = tracefs.pid_filter([11], 10, by_name["tlb:tlb_flush"])
    assert flush == "(common_pid == 11) && (reason != 0)"
    too_many = tracefs.pid_filter(list(range(1000)), 10, by_name["tlb:tlb_flush"])
    assert too_many == "(reason != 0)"


def test_buffer_size_text() -> None:
    assert tracefs.buffer_kb("7 (expanded: 1408)\n") == "1408"
    assert tracefs.buffer_kb("16384\n") == "16384"


def _fake_tracefs(root: Path) -> dict[str, str]:
    """A directory shaped like tracefs with the files the session touches."""
    files = {
        "tracing_on": "1\n",
        "buffer_size_kb": "7 (expanded: 1408)\n",
        "saved_cmdlines_size": "128\n",
        "trace_clock": "[local] global mono\n",
        "options/event-fork": "0\n",
        "set_event": "sched:sched_switch\n",
        "trace": "",
    }
    for spec in tracefs.EVENTS[:-1]:  # the last event is "missing" on this kernel
        files[f"events/{spec.system}/{spec.name}/enable"] = "0\n"
        files[f"events/{spec.system}/{spec.name}/filter"] = "none\n"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


def test_session_configures_then_restores_every_setting(tmp_path: Path) -> None:
    _fake_tracefs(tmp_path)
    ipi = tmp_path / "events/ipi/ipi_send_cpumask/filter"
    ipi.write_text("callback == 0\n")
    with tracefs.tracing_session(tmp_path) as session:
        session.configure(tracefs.EVENTS, [101, 102], 100, 4096, 32768)
        assert (tmp_path / "buffer_size_kb").read_text() == "4096"
        assert (tmp_path / "saved_cmdlines_size").read_text() == "32768"
        assert (tmp_path / "trace_clock").read_text() == "mono"
        assert (tmp_path / "events/tlb/tlb_flush/enable").read_text() == "1"
        assert "common_pid == 101" in (tmp_path / "events/tlb/tlb_flush/filter").read_text()
        last = tracefs.EVENTS[-1]
        assert session.missing == [f"{last.system}:{last.name}"]
        session.start()
        assert (tmp_path / "tracing_on").read_text() == "1"
    assert (tmp_path / "tracing_on").read_text() == "1"
    assert (tmp_path / "buffer_size_kb").read_text() == "1408"
    assert (tmp_path / "saved_cmdlines_size").read_text() == "128"
    assert (tmp_path / "trace_clock").read_text() == "local"
    assert (tmp_path / "options/event-fork").read_text() == "0"
    assert (tmp_path / "set_event").read_text() == "sched:sched_switch"
    assert (tmp_path / "events/tlb/tlb_flush/filter").read_text() == "0"  # "none" again
    assert ipi.read_text() == "callback == 0"


def test_session_restores_on_error(tmp_path: Path) -> None:
    _fake_tracefs(tmp_path)
    with pytest.raises(RuntimeError), tracefs.tracing_session(tmp_path) as session:
        session.configure(tracefs.EVENTS, [5], 5, 4096, 4096)
        raise RuntimeError
    assert (tmp_path / "buffer_size_kb").read_text() == "1408"
    assert (tmp_path / "events/kvm/kvm_unmap_hva_range/filter").read_text() == "0"


def test_pipe_reader_copies_counts_lines_and_lost_events() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    text = (
        b"  CPU 0/KVM-11 [000] ...1. 1.000001: kvm_mmu_spte_requested: gfn 1 pfn 2 level 1\n"
        b"CPU:1 [LOST 42 EVENTS]\n"
        b"  CPU 1/KVM-12 [001] ...1. 1.000002: kvm_mmu_spte_requested: gfn 2 pfn 3 level 1\n"
    )
    os.write(write_fd, text)
    sink = io.BytesIO()
    reader = capture.PipeReader(read_fd, sink)
    reader.drain()
    os.close(write_fd)
    os.close(read_fd)
    assert sink.getvalue() == text
    assert reader.lines == 3
    assert reader.lost == {1: 42}


def test_stream_stops_at_the_deadline_while_events_keep_coming() -> None:
    """A steady event stream must not keep the reader past its deadline."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    stop = threading.Event()

    def writer() -> None:
        line = b"x" * 99 + b"\n"
        while not stop.is_set():
            with contextlib.suppress(BlockingIOError):
                os.write(write_fd, line * 100)

    os.set_blocking(write_fd, False)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reader = capture.PipeReader(read_fd, io.BytesIO())
        import time

        start = time.monotonic()
        assert reader.stream(start + 0.3) is False
        assert time.monotonic() - start < 2.0
        assert reader.lines > 0
    finally:
        stop.set()
        thread.join()
        os.close(write_fd)
        os.close(read_fd)


def test_recompress_keeps_the_text(tmp_path: Path) -> None:
    path = tmp_path / "t.trace.zst"
    text = b"# kernel x\n" + b"  a-1 [000] ..... 1.0: tlb_flush: pages:1 reason:x (3)\n" * 1000
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(text))
    capture.recompress(path, level=5)
    with path.open("rb") as f:
        assert zstandard.ZstdDecompressor().stream_reader(f).read() == text
    assert not list(tmp_path.glob("*.recompress"))


def test_vmstat_sampler_records_numa_counters() -> None:
    sampler = capture.VmstatSampler()
    try:
        sampler.tick()
    finally:
        sampler.close()
    assert len(sampler.rows) == 1
    assert len(sampler.rows[0]) == 1 + len(capture.SAMPLED_COUNTERS)


def test_classify_and_detect_guest_ram_of_this_process() -> None:
    vmas = [
        host.Vma(0x7F0000000000, 0x7F0040000000, "rw-p", 0, "", vm_flags=["rd", "wr", "hg"]),
        host.Vma(
            0x7F1000000000,
            0x7F1010000000,
            "rw-s",
            0,
            "/memfd:ram (deleted)",
            vm_flags=["rd", "wr", "sh"],
        ),
        host.Vma(0x7F2000000000, 0x7F2000100000, "rw-p", 0, ""),  # too small
        host.Vma(0x7F3000000000, 0x7F3040000000, "r--p", 0, "/usr/lib/x"),  # not guest RAM
    ]
    assert capture.classify_vma(vmas[0]) == "anon"
    assert capture.classify_vma(vmas[1]) == "shared"
    vm = capture.detect_vm(os.getpid(), vmas, name="vm0", pinned="all")
    assert [(r.hva_start, r.gpa_start, r.backing, r.thp) for r in vm.regions] == [
        (0x7F0000000000, 0, "anon", True),
        (0x7F1000000000, 1 << 30, "shared", False),
    ]
    assert all(r.pinned == "all" for r in vm.regions)
    assert vm.vmm_pid == os.getpid()


def test_capture_of_a_missing_pid_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no process"):
        capture.check_pid(2**22 + 7)


def test_capture_refuses_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipeline.errors import MissingFacilityError

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(MissingFacilityError, match="needs root"):
        capture.capture(os.getpid(), 1, tmp_path / "x.trace.zst")
