"""tlbreplay's Python API: load a dataset, replay it, get polars frames (docs/api.md).

A thin facade over the ``pipeline`` package (the CLI's implementation, whose name
DESIGN.md fixes; ADR 0432). Every function here is what a CLI command does, with frames
instead of printed tables::

    import tlbreplay as tr

    ds = tr.synth("traces/vfio-pinned.toml", "out/datasets/vfio-pinned")
    res = tr.replay(ds, "out/results/vfio-pinned")
    tr.results_frame(res, "savings_total")      # a polars DataFrame
    print(tr.verdict(res))

Paths are ``str`` or :class:`pathlib.Path`; errors are :class:`TlbReplayError` (one line,
the same message the CLI prints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import __version__
from pipeline.errors import QueryError, TlbReplayError

__all__ = [
    "Dataset",
    "Results",
    "TlbReplayError",
    "__version__",
    "ingest",
    "load_dataset",
    "load_results",
    "policies",
    "query",
    "replay",
    "results_frame",
    "synth",
    "verdict",
    "views",
]

PathLike = str | Path


@dataclass(frozen=True)
class Dataset:
    """A DATASET directory (``ingest``/``synth`` output): its manifest, ``vms`` and
    ``accesses`` as polars frames (accesses lazily: a real trace's may be large)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def vms(self) -> pl.DataFrame:
        """One row per VM (schemas/vms.toml)."""
        return pl.read_parquet(self.path / "vms.parquet")

    @property
    def accesses(self) -> pl.LazyFrame:
        """The engine's input: vm, epoch, vcpu, gfn_start, nr_pages, nr_accesses, write."""
        return pl.scan_parquet(self.path / "accesses" / "*.parquet")


@dataclass(frozen=True)
class Results:
    """A RESULTS directory (``replay`` output) and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def policies(self) -> list[str]:
        """The replayed policies, in display order."""
        return [str(p) for p in self.manifest.get("policies", [])]


def _manifest(path: Path, kind: str) -> dict[str, Any]:
    from pipeline.errors import DatasetError
    from pipeline.schema import read_manifest

    manifest = read_manifest(path)
    if manifest.get("kind", kind) != kind:
        msg = f"not a {kind} directory (its manifest says `{manifest.get('kind')}`)"
        raise DatasetError(str(path), msg)
    return manifest


def load_dataset(path: PathLike) -> Dataset:
    """Open a DATASET directory written by :func:`ingest` or :func:`synth`."""
    return Dataset(Path(path), _manifest(Path(path), "dataset"))


def load_results(path: PathLike) -> Results:
    """Open a RESULTS directory written by :func:`replay`."""
    return Results(Path(path), _manifest(Path(path), "results"))


def synth(spec: PathLike, out: PathLike, *, seed: int | None = None) -> Dataset:
    """`tlbreplay synth SPEC --out OUT`: a synthetic DATASET from a workload spec."""
    from pipeline.synth.runner import run_synth

    result = run_synth(Path(spec), Path(out), seed=seed)
    return Dataset(result.out, result.manifest)


def ingest(
    sources: Sequence[PathLike], out: PathLike, *, vm_config: PathLike | None = None
) -> Dataset:
    """`tlbreplay ingest SRC... --out OUT [--vm-config VM.toml]`: ftrace text or trace.dat
    to a DATASET."""
    from pipeline.ingest.runner import run_ingest

    manifest = run_ingest(
        [str(s) for s in sources],
        Path(out),
        vm_config=None if vm_config is None else Path(vm_config),
    )
    return Dataset(Path(out), manifest)


def replay(
    dataset: Dataset | PathLike,
    out: PathLike,
    *,
    policies: Sequence[str] | None = None,
    epoch_ms: int = 100,
    seed: int = 0,
) -> Results:
    """`tlbreplay replay DATASET --out OUT [--policy P]...`: every policy by default."""
    from pipeline.analyze.calibrate import dataset_workload
    from pipeline.replay.params import ReplayParams
    from pipeline.replay.runner import run_replay

    path = dataset.path if isinstance(dataset, Dataset) else Path(dataset)
    run_replay(
        path,
        Path(out),
        policies,
        ReplayParams(epoch_ms=epoch_ms),
        seed=seed,
        workload=dataset_workload,  # a lab capture's [lab] workload, as calibrate (ADR 0381)
    )
    return load_results(out)  # the name given (it may link to a snapshot directory)


def _results_path(results: Results | PathLike) -> Path:
    return results.path if isinstance(results, Results) else Path(results)


def query(results: Results | PathLike, sql: str) -> pl.DataFrame:
    """`tlbreplay query RESULTS "SQL"`: one read-only SELECT over the views, as polars."""
    from pipeline.analyze.query import query_results

    frame = pl.from_arrow(query_results(_results_path(results), sql))
    assert isinstance(frame, pl.DataFrame)
    return frame


def views(results: Results | PathLike) -> dict[str, str]:
    """The queryable views of a RESULTS directory and their one-line docs."""
    from pipeline.analyze import query as q
    from pipeline.analyze.views import Run

    return {v.name: v.doc for v in q.public_views(Run.open(_results_path(results)))}


def results_frame(results: Results | PathLike, view: str = "shootdowns_by_vm") -> pl.DataFrame:
    """Every row of one view (``shootdowns``, ``savings_total``, ``timeline``, ...) as a
    polars DataFrame; rows with a ``policy`` in the policies' display order (after ``point``,
    before ``vm``, ``page_size``, ``epoch``, ``vcpu``)."""
    known = views(results)
    if view not in known:
        msg = f"no view `{view}`; choose from: {', '.join(sorted(known))}"
        raise QueryError(msg)
    frame = query(results, f'SELECT * FROM "{view}"')
    if "policy" not in frame.columns or view == "run_policies":
        return frame
    rank = query(results, "SELECT policy, policy_rank FROM run_policies")
    first = ["point"] if "point" in frame.columns else []
    keys = [c for c in ("vm", "page_size", "epoch", "vcpu") if c in frame.columns]
    ordered = frame.with_row_index("_row").join(rank, on="policy", how="left")
    return ordered.sort([*first, "policy_rank", *keys, "_row"], nulls_last=True).drop(
        "_row", "policy_rank"
    )


def verdict(results: Results | PathLike) -> str:
    """`tlbreplay verdict RESULTS`: the answer in one sentence."""
    from pipeline.analyze.verdict import load_verdict

    return load_verdict(_results_path(results)).sentence()


def policies() -> dict[str, str]:
    """`tlbreplay policies`: every policy and its one-line summary, in display order."""
    from pipeline.replay.policies import POLICIES

    return {name: pol.summary for name, pol in POLICIES.items()}
