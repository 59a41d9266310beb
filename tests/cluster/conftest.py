"""A real Dask cluster of separate OS processes on 127.0.0.1: ``dask scheduler`` and
``dask worker`` (no nanny, so killing a worker's pid takes it away), started from this venv."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY_SPEC = Path(__file__).resolve().parent / "data" / "tiny-host.toml"
#: three real lab captures (THP, small), one per host of the test fleet
FLEET_CAPTURES = {
    "h-anon-pin": "lab-anon-thp-pin-nb1",
    "h-anon": "lab-anon-thp-nopin-nb1",
    "h-shared": "lab-shared-thp-nopin-nb1",
}


@dataclass
class Cluster:
    """A scheduler process and its worker processes."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_worker(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                str(BIN / "dask"),
                "worker",
                self.address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--death-timeout",
                "30",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(proc)
        return proc

    def wait_workers(self, n: int, timeout_s: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout_s)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def start_cluster(tmp: Path, workers: int) -> Cluster:
    """A scheduler on a free loopback port and ``workers`` workers, all joined."""
    info = tmp / f"scheduler-{time.monotonic_ns()}.json"
    proc = subprocess.Popen(
        [
            str(BIN / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(info),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not info.is_file() or not info.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the dask scheduler did not start")
        time.sleep(0.1)
    time.sleep(0.2)  # the file is written whole, but give the json a moment on a slow disk
    cluster = Cluster(json.loads(info.read_text())["address"], proc)
    for _ in range(workers):
        cluster.add_worker()
    if workers:
        cluster.wait_workers(workers)
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler and two worker processes, killed after the test."""
    c = start_cluster(tmp_path, 2)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    """Three hosts' captures, each with its sidecar and capture.json (real lab captures)."""
    root = tmp_path / "captures"
    root.mkdir()
    real = REPO / "traces" / "real"
    for host, name in FLEET_CAPTURES.items():
        shutil.copy(real / f"{name}.trace.zst", root / f"{host}.trace.zst")
        shutil.copy(real / f"{name}.toml", root / f"{host}.toml")
        shutil.copy(real / f"{name}.capture.json", root / f"{host}.capture.json")
    return root


def parquet_bytes(root: Path) -> dict[str, bytes]:
    """Every Parquet file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def cli_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}
