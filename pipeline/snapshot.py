"""Snapshots of stage outputs: what a RESULTS was computed from, and whether it is whole.

A RESULTS manifest records the SHA-256 of its DATASET's ``manifest.json`` (the DATASET's
identity: sources with their hashes, parameters, row counts) and the size of every file it
wrote (ADR 0005). ``replay`` reads one pinned version of the DATASET
(:func:`pipeline.outdir.pin`) and checks at the end that it is still the one it started
from; ``query`` and ``report`` check that the RESULTS holds exactly the files its manifest
lists and that its DATASET is still the one it was replayed from, so no answer mixes two
versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import DatasetError

MANIFEST = "manifest.json"


def manifest_sha256(directory: Path) -> str | None:
    """SHA-256 of ``directory/manifest.json`` (None: there is none)."""
    try:
        return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def file_sizes(directory: Path) -> dict[str, int]:
    """``{relative path: bytes}`` of every non-hidden file under ``directory`` but the
    manifest, sorted by path."""
    root = Path(directory)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if path.is_file() and rel.as_posix() != MANIFEST and not hidden:
            out[rel.as_posix()] = path.stat().st_size
    return out


def check_files(directory: Path, recorded: Mapping[str, int] | None) -> None:
    """Raise if ``directory`` does not hold exactly the files ``recorded`` lists (sizes too).

    ``recorded`` None (a RESULTS from before ADR 0005): nothing to check."""
    if recorded is None:
        return
    found = file_sizes(directory)
    missing = sorted(set(recorded) - set(found))
    extra = sorted(set(found) - set(recorded))
    changed = sorted(k for k in set(found) & set(recorded) if found[k] != recorded[k])
    if missing or extra or changed:
        parts = [
            f"{what} {', '.join(f'`{n}`' for n in names[:3])}"
            for what, names in (("missing", missing), ("unexpected", extra), ("resized", changed))
            if names
        ]
        msg = (
            f"is not the output its `{MANIFEST}` describes ({'; '.join(parts)}); "
            "it was changed after it was written: write it again"
        )
        raise DatasetError(directory, msg)


def check_dataset(dataset: Path, recorded_sha256: str | None, *, during: str) -> None:
    """Raise if the DATASET's manifest hash is not ``recorded_sha256`` (None: unchecked)."""
    if recorded_sha256 is None:
        return
    now = manifest_sha256(dataset)
    if now == recorded_sha256:
        return
    state = "is gone" if now is None else f"has manifest sha256 {now[:12]}"
    msg = (
        f"changed {during}: it {state}, the RESULTS were computed from "
        f"{recorded_sha256[:12]}; replay it again"
    )
    raise DatasetError(dataset, msg)
