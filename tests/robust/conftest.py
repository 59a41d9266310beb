"""Shared inputs of the issue-16 tests: a small synthetic DATASET and its RESULTS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.robust.helpers import tlbreplay, write_spec


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``spec``, ``ds`` (synth) and ``res`` (replay of two policies); tests only read them."""
    root = tmp_path_factory.mktemp("robust")
    spec = write_spec(root / "small.toml")
    tlbreplay("synth", spec, "--out", root / "ds", "-q")
    tlbreplay(
        "replay", root / "ds", "--out", root / "res", "-q", "-p", "linux-6.18", "-p", "oracle"
    )
    return {"root": root, "spec": spec, "ds": root / "ds", "res": root / "res"}
