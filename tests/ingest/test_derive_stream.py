"""derive streams the event tables: its accesses equal an in-memory count of the whole table.

The reference below is written independently of pipeline.ingest.derive (runs via
``gfn - rank``), reads each table at once with polars, and is compared with derive run at tiny
batch, bucket and part sizes so that batch boundaries, open epochs carried across batches,
spill buckets (rows out of time order) and part roll-over are all exercised.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import derive as derive_mod
from pipeline.ingest.runner import run_ingest
from pipeline.model.vmmodel import load_vm_file
from pipeline.schema import table_schema

REAL = Path(
    os.environ.get("TLBREPLAY_REAL_TRACES", Path(__file__).resolve().parents[2] / "traces" / "real")
)
CAPTURES = sorted(REAL.glob("*.trace.zst")) if REAL.is_dir() else []
ORDER = ["vm", "epoch", "vcpu", "gfn_start", "write"]
SIDECAR = """
[host]
nodes = 2
mmu = "tdp"

[[vm]]
name = "lab"
mem_mib = 4
vcpus = 3
vcpu_tids = [300, 301, 302]

[[vm.region]]
name = "ram"
size_mib = 4
"""
TWO_VMS = """
[host]
nodes = 1
mmu = "tdp"

[[vm]]
name = "b"
mem_mib = 4
vcpus = 2
vcpu_tids = [300, 301]

[[vm.region]]
name = "ram"
size_mib = 4

[[vm]]
name = "a"
mem_mib = 2
vcpus = 1
vcpu_tids = [302]

[[vm.region]]
name = "ram"
size_mib = 2
"""


def reference(
    root: Path, vms: pl.DataFrame, epoch_ms: int, t0: int
) -> tuple[pl.DataFrame, int, int]:
    """(accesses, unassigned, outside_ram) from the whole fault table read at once."""
    pf = derive_mod._scan(root, "kvm_page_fault").collect()
    if pf.height:
        rows = pf.select(
            "ts_ns",
            "pid",
            pl.col("vcpu").cast(pl.Int32),
            pl.col("gpa").floordiv(4096).cast(pl.Int64).alias("gfn"),
            pl.col("error_code").cast(pl.Int64).and_(2).ne(0).alias("write"),
        )
    else:
        req = derive_mod._scan(root, "kvm_mmu_spte_requested").collect()
        if vms.height > 1:
            index = {t: i for tids in vms["vcpu_tids"].to_list() for i, t in enumerate(tids)}
        else:
            order = list(vms["vcpu_tids"].to_list()[0] or [])
            order += [
                p for p in req["pid"].drop_nulls().unique(maintain_order=True) if p not in order
            ]
            index = {p: i for i, p in enumerate(order)}
        rows = req.select(
            "ts_ns",
            "pid",
            pl.col("pid").replace_strict(index, default=None, return_dtype=pl.Int32).alias("vcpu"),
            pl.col("gfn").cast(pl.Int64),
            pl.lit(False).alias("write"),
        )
    if vms.height == 1:
        rows = rows.with_columns(pl.lit(vms["vm"][0]).alias("vm"))
    else:
        owner = {t: r["vm"] for r in vms.iter_rows(named=True) for t in r["vcpu_tids"]}
        rows = rows.with_columns(pl.col("pid").replace_strict(owner, default=None).alias("vm"))
    pages = dict(zip(vms["vm"], vms["mem_bytes"] // 4096, strict=True))
    usable = rows.filter(pl.col("vcpu").is_not_null() & pl.col("vm").is_not_null())
    ram = pl.col("vm").replace_strict(pages, default=0, return_dtype=pl.Int64)
    kept = usable.filter((pl.col("gfn") >= 0) & (pl.col("gfn") < ram))
    keys = ["vm", "epoch", "vcpu", "write", "nr_accesses"]
    runs = (
        kept.with_columns(((pl.col("ts_ns") - t0) // (epoch_ms * 1_000_000)).alias("epoch"))
        .group_by("vm", "epoch", "vcpu", "write", "gfn")
        .agg(pl.len().cast(pl.Int64).alias("nr_accesses"))
        .sort("gfn")
        .with_columns((pl.col("gfn") - pl.int_range(pl.len()).over(keys)).alias("_run"))
        .group_by(*keys, "_run")
        .agg(pl.col("gfn").min().alias("gfn_start"), pl.len().cast(pl.Int64).alias("nr_pages"))
    )
    damon = derive_mod._damon_rows(root, vms, t0, epoch_ms)
    cols = table_schema("accesses").names
    out = pl.concat([runs.select(cols).sort(ORDER), damon.select(cols)], how="vertical_relaxed")
    return (
        out.sort(ORDER, maintain_order=True),
        rows.height - usable.height,
        usable.height - kept.height,
    )


def streamed(
    root: Path, *, vm_config: Path | None, epoch_ms: int, t0: int, scale: int = 1
) -> derive_mod.Derived:
    """derive with batches of 7 rows, buckets of 11 and parts of 5 (times ``scale``)."""
    shutil.rmtree(root / "accesses", ignore_errors=True)
    return derive_mod.derive(
        root,
        vm_config=vm_config,
        epoch_ms=epoch_ms,
        t0_ns=t0,
        batch_rows=7 * scale,
        bucket_rows=11 * scale,
        part_rows=5 * scale,
    )


def check(root: Path, got: derive_mod.Derived, epoch_ms: int, t0: int) -> None:
    want, unassigned, outside = reference(root, got.vms, epoch_ms, t0)
    parts = sorted((root / "accesses").glob("*.parquet"))
    assert parts == got.parts and [p.name for p in parts][:1] == ["part-00000.parquet"]
    frames = [pl.from_arrow(pq.read_table(p)) for p in parts]
    acc = pl.concat(frames)
    assert isinstance(acc, pl.DataFrame)
    assert acc.to_dicts() == want.select(acc.columns).to_dicts()
    assert got.accesses_rows == acc.height
    assert (got.unassigned, got.outside_ram) == (unassigned, outside)
    seen: set[tuple[str, int]] = set()
    for f in frames:  # a part never splits an epoch of a VM
        assert isinstance(f, pl.DataFrame)
        keys = set(f.select("vm", "epoch").unique().iter_rows())
        assert not keys & seen
        seen |= keys
    assert not (root / ".accesses-staging").exists()
    assert not list(root.glob(".derive-spill-*"))


def shuffle_table(path: Path, seed: int) -> None:
    table = pl.read_parquet(path)
    table.sample(fraction=1.0, shuffle=True, seed=seed).write_parquet(path)


@pytest.mark.skipif(not CAPTURES, reason="no real capture under traces/real/")
@pytest.mark.parametrize("trace", CAPTURES, ids=lambda p: p.name)
def test_real_capture_streamed_equals_in_memory(tmp_path: Path, trace: Path) -> None:
    side = trace.with_name(trace.name.removesuffix(".trace.zst") + ".toml")
    vm_config = side if side.is_file() else None
    m = run_ingest([str(trace)], tmp_path / "ds", vm_config=vm_config)
    root, t0, epoch_ms = tmp_path / "ds", m["t0_ns"] or 0, 100
    assert pl.read_parquet(root / "accesses").height == m["tables"]["accesses"]
    events = [
        root / "ftrace" / f"{e}.parquet" for e in ("kvm_page_fault", "kvm_mmu_spte_requested")
    ]
    rows = max(pq.read_metadata(p).num_rows for p in events)
    scale = max(1, rows // 200)  # about 30 batches, 20 buckets, 40+ parts
    for config in (vm_config, None):  # the sidecar's VM, then an inferred one
        got = streamed(root, vm_config=config, epoch_ms=epoch_ms, t0=t0, scale=scale)
        check(root, got, epoch_ms, t0)
    for p in events:  # out of time order: the spill path
        shuffle_table(p, seed=1)
    got = streamed(root, vm_config=vm_config, epoch_ms=epoch_ms, t0=t0, scale=scale)
    check(root, got, epoch_ms, t0)


FAULT = st.tuples(
    st.integers(0, 40_000_000),  # ts_ns: epochs of 1 ms, any order
    st.sampled_from([300, 301, 302, 999]),  # pid (999: in no VM's vcpu_tids)
    st.integers(0, 3),  # vcpu
    st.integers(0, 1100),  # gfn (the sidecar VM has 1024 pages)
    st.booleans(),  # write
)


def write_faults(root: Path, event: str, faults: list[tuple[int, int, int, int, bool]]) -> None:
    schema = table_schema(f"ftrace/{event}").polars()
    n = len(faults)
    ts, pid, vcpu, gfn, write = (list(c) for c in zip(*faults, strict=True)) if n else ([],) * 5
    cols: dict[str, list[object]] = {
        "ts_ns": ts,
        "cpu": [0] * n,
        "pid": pid,
        "comm": ["qemu"] * n,
        "flags": [None] * n,
    }
    if event == "kvm_page_fault":
        cols |= {
            "vcpu": vcpu,
            "rip": [0] * n,
            "gpa": [g << 12 | 0x123 for g in gfn],
            "error_code": [0x180 | (2 if w else 0) for w in write],
        }
    else:
        cols |= {"gfn": gfn, "pfn": [g + 7 for g in gfn], "level": [1] * n}
    frame = pl.DataFrame({k: cols.get(k, [None] * n) for k in schema}, schema=schema)
    (root / "ftrace").mkdir(parents=True, exist_ok=True)
    frame.write_parquet(root / "ftrace" / f"{event}.parquet")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    faults=st.lists(FAULT, max_size=80).flatmap(
        lambda f: (
            st.lists(st.sampled_from(f), max_size=20).map(lambda d: f + d) if f else st.just(f)
        )
    ),
    in_order=st.booleans(),
    event=st.sampled_from(["kvm_page_fault", "kvm_mmu_spte_requested"]),
    sidecar=st.sampled_from([None, SIDECAR, TWO_VMS]),
    epoch_ms=st.sampled_from([1, 7, 1000]),
)
def test_generated_tables_streamed_equals_in_memory(  # noqa: PLR0917
    tmp_path_factory: pytest.TempPathFactory,
    faults: list[tuple[int, int, int, int, bool]],
    in_order: bool,
    event: str,
    sidecar: str | None,
    epoch_ms: int,
) -> None:
    root = tmp_path_factory.mktemp("ds")
    if in_order:
        faults = sorted(faults, key=lambda f: f[0])
    write_faults(root, event, faults)
    vm_config = None
    if sidecar:
        vm_config = root / "vm.toml"
        vm_config.write_text(sidecar)
    t0 = min((f[0] for f in faults), default=0) + 500_000  # some rows fall before t0
    got = streamed(root, vm_config=vm_config, epoch_ms=epoch_ms, t0=t0)
    check(root, got, epoch_ms, t0)
    if not sidecar and faults:
        rows = pl.read_parquet(root / "ftrace" / f"{event}.parquet")
        assert got.vms["mem_bytes"][0] == -(
            -((max(f[3] for f in faults) + 1) << 12) // (2 << 20)
        ) * (2 << 20)
        if event == "kvm_page_fault":
            first = rows.group_by("vcpu").agg(pl.col("pid").get(pl.col("ts_ns").arg_min()))
            tids = got.vms["vcpu_tids"][0].to_list()
            assert {v: tids[v] for v, _ in first.iter_rows()} == dict(first.iter_rows())
    assert load_vm_file is not None


def test_out_of_order_rows_take_the_spill_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = [(t * 1_000_000, 300, t % 3, (t * 37) % 900, t % 2 == 0) for t in range(200)]
    write_faults(tmp_path, "kvm_page_fault", faults[::-1])
    spilled: list[int] = []
    real = derive_mod.stream_spilled

    def spy(*args: object, **kw: object) -> None:
        spilled.append(len(kw["starts"]))  # type: ignore[arg-type]
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(derive_mod, "stream_spilled", spy)
    got = streamed(tmp_path, vm_config=None, epoch_ms=10, t0=0)
    check(tmp_path, got, 10, 0)
    assert spilled and spilled[0] > 5  # several buckets of <= 11 rows


def test_out_of_order_rows_of_one_bucket_are_held_not_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All fault rows within one bucket's bound: the same rows, and no spill file written."""
    from pipeline.ingest import derive_stream

    faults = [(t * 1_000_000, 300, t % 3, (t * 37) % 900, t % 2 == 0) for t in range(200)]
    write_faults(tmp_path, "kvm_page_fault", faults[::-1])

    def no_spill(*args: object, **kw: object) -> None:
        raise AssertionError("spilled")

    monkeypatch.setattr(derive_stream.np, "save", no_spill)
    got = streamed(tmp_path, vm_config=None, epoch_ms=10, t0=0, scale=100)
    check(tmp_path, got, 10, 0)


def test_one_long_epoch_is_split_by_vcpu_into_bounded_buckets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In time order but one epoch of 400 rows (a large --epoch-ms): buckets of <= 11 rows
    would be impossible by epoch; by (epoch, vCPU) slice the epoch is split per vCPU."""
    faults = [(t * 1_000, 300, t % 4, (t * 37) % 900, t % 3 == 0) for t in range(400)]
    write_faults(tmp_path, "kvm_page_fault", faults)
    buckets: list[int] = []
    real = derive_mod.stream_spilled

    def spy(*args: object, **kw: object) -> None:
        buckets.append(len(kw["starts"]))  # type: ignore[arg-type]
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(derive_mod, "stream_spilled", spy)
    got = streamed(tmp_path, vm_config=None, epoch_ms=60_000, t0=0, scale=10)  # buckets of 110
    check(tmp_path, got, 60_000, 0)
    assert buckets == [4]  # one epoch, four vCPUs of 100 rows: one bucket each


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 400),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.sampled_from([0, 1 << 35, 1 << 62]),
)
def test_runs_on_packed_keys_equal_sorting_the_columns(
    n: int, seed: int, ones: bool, gfn_base: int
) -> None:
    """points.reduced_runs (one sort of packed keys) gives the very runs of reduced() + runs()
    (a sort of the columns), dtypes included: counts of 1 or more, negative epochs and vCPUs,
    gfn spans that fit 64 bits with the other keys and ones that do not (lexsort)."""
    import numpy as np

    from pipeline.ingest.points import Points, reduced_runs, runs

    rng = np.random.default_rng(seed)
    p = Points(
        rng.integers(0, 3, n).astype(np.int32),
        rng.integers(-3, 4, n).astype(np.int64),
        rng.integers(-1, 3, n).astype(np.int32),
        rng.integers(0, 2, n).astype(np.bool_),
        (gfn_base + rng.integers(0, 40, n) * (1 + rng.integers(0, 2, n) * (gfn_base >> 2))),
        np.ones(n, np.int64) if ones else rng.integers(1, 3, n),
    )
    want, got = runs(p.reduced()), reduced_runs(p)
    assert list(got) == list(want)
    for name, column in want.items():
        assert got[name].dtype == column.dtype, name
        assert np.array_equal(got[name], column), name
