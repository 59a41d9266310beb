"""A DATASET opened for replay: its vms, accesses, manifest and hosting facts, the parameters it
completes (hosting.parquet, busy vCPUs, provenance of each fact), its span and its seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import DatasetError
from pipeline.model.hosting import VmHosting, ram_ranges
from pipeline.model.vmmprofile import PROFILE_ORIGIN, default_hosting
from pipeline.replay.accesses import (
    ACCESS_COLUMNS,
    DatasetAccesses,
)
from pipeline.replay.params import ReplayParams


# -- DATASET / RESULTS ----------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A DATASET opened for replay: vms, accesses (read in batches), manifest, hosting."""

    vms: pl.DataFrame
    accesses: DatasetAccesses
    manifest: dict[str, Any]
    hosting: tuple[VmHosting, ...]


def open_dataset(dataset: Path, params: ReplayParams) -> Dataset:
    """Read a DATASET's manifest, vms and hosting; its accesses re-binned to
    ``params.epoch_ms`` are read later, in batches."""
    from pipeline.schema import read_manifest, read_parquet

    dataset = Path(dataset)
    if not dataset.exists():
        msg = "no such DATASET directory; make one with `tlbreplay ingest` or `tlbreplay synth`"
        raise DatasetError(dataset, msg)
    manifest = read_manifest(dataset)
    if manifest.get("kind") != "dataset":
        raise DatasetError(dataset, f"manifest kind is `{manifest.get('kind')}`, want `dataset`")
    ds_ms = manifest.get("epoch_ms")
    if not isinstance(ds_ms, int) or ds_ms <= 0:
        raise DatasetError(dataset / "manifest.json", "missing or bad `epoch_ms`")
    if params.epoch_ms % ds_ms:
        raise DatasetError(
            dataset,
            f"--epoch-ms {params.epoch_ms} is not a multiple of the dataset's epoch_ms {ds_ms}; "
            f"use a multiple of {ds_ms}",
        )
    vms_path = dataset / "vms.parquet"
    if not vms_path.is_file():
        raise DatasetError(dataset, "no `vms.parquet`: not a complete DATASET")
    vms = read_parquet(vms_path, "vms")
    files = sorted((dataset / "accesses").glob("*.parquet"))
    if not files:
        raise DatasetError(dataset, "no `accesses/*.parquet`: not a complete DATASET")
    names = pl.scan_parquet([str(f) for f in files]).collect_schema().names()
    missing = [c for c in ACCESS_COLUMNS if c not in names]
    if missing:
        raise DatasetError(files[0], f"accesses lack columns {', '.join(missing)}")
    hosting: tuple[VmHosting, ...] = ()
    if (dataset / "hosting.parquet").is_file():
        from pipeline.model.hosting import hosting_from_frame

        hosting = hosting_from_frame(read_parquet(dataset / "hosting.parquet", "hosting"))
    accesses = DatasetAccesses(tuple(str(f) for f in files), params.epoch_ms // ds_ms)
    return Dataset(vms, accesses, manifest, hosting)


def load_dataset(
    dataset: Path, params: ReplayParams
) -> tuple[pl.DataFrame, pl.LazyFrame, dict[str, Any]]:
    """Read a DATASET's manifest, vms and accesses (lazily), re-binned to ``params.epoch_ms``."""
    ds = open_dataset(dataset, params)
    return ds.vms, ds.accesses.lazy(), ds.manifest


def from_trace(manifest: dict[str, Any], hosting: Sequence[VmHosting] = ()) -> bool:
    """Whether a DATASET comes from a kernel trace (``ingest``, or ``hosting.parquet``), not
    from a synthetic spec: its accesses are the faults of vCPUs that ran all along."""
    if hosting or manifest.get("command") == "ingest":
        return True
    if manifest.get("generator") == "synth" or manifest.get("command") == "synth":
        return False
    paths = [str(s.get("path", "")) for s in manifest.get("sources") or [] if isinstance(s, dict)]
    return any(p and not p.endswith(".toml") for p in paths)


def _facts(h: VmHosting) -> list[str]:
    default = VmHosting(h.vm)
    return [f for f in VmHosting.__dataclass_fields__ if getattr(h, f) != getattr(default, f)]


def _provenance(
    ds: Dataset, hosting: Sequence[VmHosting], origin: str
) -> dict[str, dict[str, str]]:
    """Per VM of the DATASET, each hosting fact's origin for the RESULTS manifest (issue 11):
    the DATASET's record (``hosting_provenance``, written by ingest) when its hosting.parquet
    is used, ``given`` for facts passed in ``ReplayParams.hosting``, else ``defaulted``."""
    recorded = ds.manifest.get("hosting_provenance") or {}
    by_vm = {h.vm: h for h in hosting}
    out: dict[str, dict[str, str]] = {}
    for vm in ds.vms["vm"].to_list():
        h = by_vm.get(str(vm), VmHosting(str(vm)))
        given = set(_facts(h))
        facts = {}
        for name in VmHosting.__dataclass_fields__:
            if name == "vm":
                continue
            if name not in given:
                facts[name] = "defaulted"
            elif origin == "default VMM profile":
                facts[name] = PROFILE_ORIGIN
            elif origin == "params":
                facts[name] = "given"
            else:
                facts[name] = (recorded.get(str(vm)) or {}).get(name, "measured")
        out[str(vm)] = facts
    return out


def profile_hosting(vms: pl.DataFrame) -> tuple[VmHosting, ...]:
    """The default VMM profile (model/vmmprofile.py) of each VM of ``vms``."""
    return tuple(
        default_hosting(str(row["vm"]), int(row["vcpus"]), tuple(ram_ranges(row)))
        for row in vms.iter_rows(named=True)
    )


def resolve_params(ds: Dataset, params: ReplayParams) -> tuple[ReplayParams, dict[str, Any]]:
    """``params`` completed from the DATASET (ADR 0330): its hosting.parquet unless
    ``params.hosting`` is given or ``params.dataset_hosting`` is False; ``busy_vcpus`` on for
    a dataset from a trace when not given. Also what was used, for the RESULTS manifest."""
    if params.hosting:
        hosting, origin = params.hosting, "params"
    elif params.dataset_hosting and ds.hosting:
        hosting, origin = ds.hosting, "dataset hosting.parquet"
    elif params.dataset_hosting and ds.manifest.get("vmm_profile", "qemu") != "none":
        # no capture facts: the default VMM profile around each VM (ADR 0365)
        hosting, origin = profile_hosting(ds.vms), "default VMM profile"
    elif params.dataset_hosting:
        hosting, origin = (), "none (the spec's vmm_profile = none)"
    else:
        hosting, origin = (), "none (--no-hosting)"
    busy, busy_from = params.busy_vcpus, "params"
    if busy is None:
        busy = from_trace(ds.manifest, ds.hosting)
        busy_from = "dataset from a trace" if busy else "synthetic dataset"
    used = {
        "hosting": {
            "from": origin,
            "facts": {h.vm: _facts(h) for h in hosting},
            "provenance": _provenance(ds, hosting, origin),
        },
        "busy_vcpus": {"value": busy, "from": busy_from},
    }
    return replace(params, hosting=tuple(hosting), busy_vcpus=busy), used


def dataset_epochs(ds: Dataset) -> int:
    """The DATASET's time span in replay epochs (ADR 0380): ``n_epochs`` recorded by ingest
    (first to last event of any kind, or the sidecar's lab window), ``parameters.nr_epochs``
    of a synth dataset; 0 when neither is recorded (the accesses then set the span)."""
    n = ds.manifest.get("n_epochs")
    if n is None:
        n = (ds.manifest.get("parameters") or {}).get("nr_epochs")
    if not isinstance(n, int) or n <= 0:
        return 0
    return -(-n // ds.accesses.factor)


def dataset_seed(manifest: dict[str, Any]) -> int:
    """The seed a replay of this DATASET uses when none is given: the synth seed recorded in
    its manifest (a synthetic boot and its contention draws go together), else 0."""
    seed = manifest.get("seed")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0
