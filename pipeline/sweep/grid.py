"""GRID.toml for ``tlbreplay sweep``: the keys a sweep varies, validated, and its points.

A grid file has a ``[grid]`` table (each key a list of values; the sweep runs the full
cartesian product, the last key varying fastest) and an optional ``[fixed]`` table (each key
one value, applied to every point). Top-level ``seed`` is the base seed. docs/scale.md lists
every key; :data:`KEYS` is the table they come from.

Two kinds of keys (ADR 0601):

* *engine* keys change only :class:`~pipeline.replay.runner.ReplayParams` (policy, the
  NUMA-balancing knobs, the KVM yield-while-pending parameters, preempt, mmu, epoch_ms): the
  points that share the workload keys reuse one synthesized dataset;
* *workload* keys change the VM or its accesses (``pinned``, ``thp``, ``vcpus``,
  ``synth_seed``): they are applied to the parsed spec document before validation
  (:func:`apply_workload`), so a grid point's spec is checked by the same rules as a file.

Pure: no I/O except :func:`load_grid` reading the file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.errors import SpecError
from pipeline.model.vmmodel import Keys, PathLike, Source, read_source, show
from pipeline.replay.policies import POLICIES
from pipeline.replay.runner import ReplayParams

Value = bool | int | float | str

#: the most points one sweep may have (a typo like `scan_size_mb = [range]` stays cheap)
MAX_POINTS = 100_000


@dataclass(frozen=True)
class GridKey:
    """One key a grid may vary: its kind, what values it takes and its Arrow type."""

    name: str
    kind: str  # "engine" | "workload"
    allowed: str
    check: Callable[[object], Value | None]  # the normalized value, or None when not allowed
    arrow: str
    doc: str


def _int_at_least(lo: int, hi: int | None = None) -> Callable[[object], Value | None]:
    def check(v: object) -> Value | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return None
        return v if v >= lo and (hi is None or v <= hi) else None

    return check


def _number_in(lo: float, hi: float | None) -> Callable[[object], Value | None]:
    def check(v: object) -> Value | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:  # noqa: PLR0124
            return None
        return float(v) if v >= lo and (hi is None or v <= hi) else None

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[object], Value | None]:
    def check(v: object) -> Value | None:
        return v if isinstance(v, str) and v in choices else None

    return check


def _bool(v: object) -> Value | None:
    return v if isinstance(v, bool) else None


def _pinned(v: object) -> Value | None:
    """ "none" -> 0.0, "all" -> 1.0, a fraction in [0, 1] as it is (as a float)."""
    if v == "none":
        return 0.0
    if v == "all":
        return 1.0
    return _number_in(0.0, 1.0)(v)


_POS = "an integer >= 1"
KEYS: dict[str, GridKey] = {
    k.name: k
    for k in (
        GridKey(
            "policy",
            "engine",
            "one of " + ", ".join(POLICIES),
            _one_of(tuple(POLICIES)),
            "string",
            "policy replayed (tlbreplay policies)",
        ),
        GridKey(
            "scan_size_mb",
            "engine",
            _POS,
            _int_at_least(1),
            "int64",
            "numa_balancing_scan_size_mb",
        ),
        GridKey(
            "scan_delay_ms",
            "engine",
            _POS,
            _int_at_least(1),
            "int64",
            "numa_balancing_scan_delay_ms",
        ),
        GridKey(
            "scan_period_min_ms",
            "engine",
            _POS,
            _int_at_least(1),
            "int64",
            "numa_balancing_scan_period_min_ms",
        ),
        GridKey(
            "scan_period_max_ms",
            "engine",
            _POS,
            _int_at_least(1),
            "int64",
            "numa_balancing_scan_period_max_ms",
        ),
        GridKey(
            "yield_per_vcpu",
            "engine",
            "a number >= 0",
            _number_in(0.0, None),
            "float64",
            "KVM flush-yield term: extra flushes per faulting vCPU (YieldModel.per_vcpu)",
        ),
        GridKey(
            "yield_d02c357e5bfa_factor",
            "engine",
            "a number in [0, 1]",
            _number_in(0.0, 1.0),
            "float64",
            "share of yields left by the v6.8 pre-lock retry check (YieldModel)",
        ),
        GridKey(
            "yield_mode",
            "engine",
            "process or expected",
            _one_of(("process", "expected")),
            "string",
            "KVM contention term: a seeded process per zap or its expected value (ADR 0370)",
        ),
        GridKey(
            "spte_4k",
            "engine",
            "a number in [0, 1]",
            _number_in(0.0, 1.0),
            "float64",
            "share of THPs mapped by 4K SPTEs (default: from the boot profile; ADR 0371)",
        ),
        GridKey(
            "thp_fault_fallback",
            "engine",
            "a number in [0, 1]",
            _number_in(0.0, 1.0),
            "float64",
            "share of THP-region granules whose THP fault fell back to 4K pages (ADR 0371)",
        ),
        GridKey(
            "preempt_dynamic",
            "engine",
            "true or false",
            _bool,
            "bool",
            "CONFIG_PREEMPT_DYNAMIC host before c793a62823d1 (YieldModel)",
        ),
        GridKey(
            "preempt",
            "engine",
            "one of none, voluntary, full",
            _one_of(("none", "voluntary", "full")),
            "string",
            "host preemption model",
        ),
        GridKey("mmu", "engine", "tdp or shadow", _one_of(("tdp", "shadow")), "string", "KVM MMU"),
        GridKey(
            "epoch_ms",
            "engine",
            "an integer >= 1 (a multiple of the spec's epoch_ms)",
            _int_at_least(1),
            "int64",
            "replay epoch",
        ),
        GridKey(
            "pinned",
            "workload",
            '"none", "all" or a fraction in [0, 1]',
            _pinned,
            "float64",
            "pinned fraction of every region (2 MiB granules; none = 0, all = 1)",
        ),
        GridKey(
            "thp", "workload", "true or false", _bool, "bool", "THP on every non-hugetlbfs region"
        ),
        GridKey(
            "vcpus",
            "workload",
            "an integer in [1, 4096]",
            _int_at_least(1, 4096),
            "int64",
            "vCPUs of every VM",
        ),
        GridKey(
            "mem_gib",
            "workload",
            "an integer in [1, 65536]",
            _int_at_least(1, 65536),
            "int64",
            "guest RAM of every VM (its only region), GiB",
        ),
        GridKey(
            "duration_s",
            "workload",
            "a number > 0",
            _number_in(1e-3, None),
            "float64",
            "simulated time of the spec (the boot length), s",
        ),
        GridKey(
            "synth_seed",
            "workload",
            "an integer >= 0",
            _int_at_least(0),
            "int64",
            "seed of the synthetic workload (replicates)",
        ),
    )
}
ENGINE_KEYS = tuple(k for k, v in KEYS.items() if v.kind == "engine")
WORKLOAD_KEYS = tuple(k for k, v in KEYS.items() if v.kind == "workload")


@dataclass(frozen=True)
class Point:
    """One grid point: its id and the value of every key that is set (grid or fixed)."""

    point: int
    values: dict[str, Value]

    def workload(self) -> tuple[tuple[str, Value], ...]:
        """The workload keys of this point: points with equal tuples share a dataset."""
        return tuple((k, self.values[k]) for k in WORKLOAD_KEYS if k in self.values)

    def setting(self) -> tuple[tuple[str, Value], ...]:
        """Every key but ``policy``: points with equal settings are compared across policies."""
        return tuple(sorted((k, v) for k, v in self.values.items() if k != "policy"))


@dataclass(frozen=True)
class Grid:
    """A validated grid: varied keys with their values (file order), fixed keys, base seed."""

    path: Path
    axes: dict[str, tuple[Value, ...]]
    fixed: dict[str, Value] = field(default_factory=dict)
    seed: int | None = None

    def points(self) -> list[Point]:
        """The cartesian product of the axes (last axis fastest), fixed keys added; ids 0..n-1.

        ``policy`` defaults to every policy when neither varied nor fixed.
        """
        axes = dict(self.axes)
        if "policy" not in axes and "policy" not in self.fixed:
            axes = {"policy": tuple(POLICIES), **axes}
        names = list(axes)
        combos = itertools.product(*(axes[n] for n in names))
        return [
            Point(i, {**self.fixed, **dict(zip(names, combo, strict=True))})
            for i, combo in enumerate(combos)
        ]

    def key_names(self) -> list[str]:
        """Every key a point sets, in KEYS order."""
        have = set(self.axes) | set(self.fixed) | {"policy"}
        return [k for k in KEYS if k in have]


def load_grid(path: str | Path) -> Grid:
    """Read and validate a GRID.toml (SpecError naming file, line, key, value, allowed)."""
    doc, source = read_source(path)
    return parse_grid(doc, source)


def parse_grid(doc: Mapping[str, Any], path: PathLike) -> Grid:
    """Validate a parsed grid document; see :func:`load_grid`."""
    top = Keys(dict(doc), path, "")
    top.only(("grid", "fixed", "seed"))
    seed = top.int_("seed", 0, lo=0, hi=(1 << 63) - 1) if top.has("seed") else None
    grid_table = top.raw("grid")
    if grid_table is None:
        top.fail(
            "missing `[grid]`: list the values of at least one key, e.g. `scan_size_mb = [64, 256]`"
        )
    axes_keys = Keys(grid_table, path, "grid", (("grid", None),))
    axes_keys.only(KEYS)
    axes: dict[str, tuple[Value, ...]] = {}
    for name, raw in axes_keys.table.items():
        spec = KEYS[name]
        if not isinstance(raw, list) or not raw:
            axes_keys.bad(name, raw, f"a non-empty list of values, each {spec.allowed}")
        checked = tuple(_check(axes_keys, spec, v) for v in raw)
        if len(set(map(repr, checked))) != len(checked):
            axes_keys.bad(name, raw, "a list without repeats")
        axes[name] = checked
    fixed: dict[str, Value] = {}
    if top.has("fixed"):
        fixed_keys = Keys(top.raw("fixed"), path, "fixed", (("fixed", None),))
        fixed_keys.only(KEYS)
        for name, raw in fixed_keys.table.items():
            if name in axes:
                fixed_keys.fail(f"`{name}` is both in [grid] and in [fixed]; keep one", name)
            fixed[name] = _check(fixed_keys, KEYS[name], raw)
    grid = Grid(
        path=path.path if isinstance(path, Source) else Path(path),
        axes=axes,
        fixed=fixed,
        seed=seed,
    )
    total = 1
    for values in grid.axes.values():
        total *= len(values)
    if total > MAX_POINTS:
        top.fail(f"the grid has {total} points, more than {MAX_POINTS}; split the sweep")
    return grid


def _check(keys: Keys, spec: GridKey, value: object) -> Value:
    checked = spec.check(value)
    if checked is None:
        keys.bad(spec.name, value, spec.allowed)
    assert checked is not None
    return checked


# -- applying a point -------------------------------------------------------------------------
def replay_params(point: Point, base: ReplayParams | None = None) -> ReplayParams:
    """The engine parameters of ``point``: ``base`` (default: the defaults) with its keys set."""
    base = base if base is not None else ReplayParams()
    v = point.values
    yields = base.yields
    ykw: dict[str, Any] = {}
    if "yield_per_vcpu" in v:
        ykw["per_vcpu"] = float(v["yield_per_vcpu"])
    if "yield_d02c357e5bfa_factor" in v:
        ykw["d02c357e5bfa_factor"] = float(v["yield_d02c357e5bfa_factor"])
    if "preempt_dynamic" in v:
        ykw["preempt_dynamic"] = bool(v["preempt_dynamic"])
    if "yield_mode" in v:
        ykw["mode"] = str(v["yield_mode"])
    if ykw:
        yields = replace(yields, **ykw)
    kw: dict[str, Any] = {"yields": yields}
    for name in ("scan_size_mb", "scan_delay_ms", "scan_period_min_ms", "scan_period_max_ms"):
        if name in v:
            kw[name] = int(v[name])
    for name in ("preempt", "mmu"):
        if name in v:
            kw[name] = str(v[name])
    if "epoch_ms" in v:
        kw["epoch_ms"] = int(v["epoch_ms"])
    for name in ("spte_4k", "thp_fault_fallback"):
        if name in v:
            kw[name] = float(v[name])
    return replace(base, **kw)


def _stretch(nodes: list[Any], vcpus: int) -> list[Any]:
    """A per-vCPU node list stretched to ``vcpus`` entries, keeping each node's share."""
    return [nodes[i * len(nodes) // vcpus] for i in range(vcpus)]


def apply_workload(
    doc: Mapping[str, Any], workload: tuple[tuple[str, Value], ...]
) -> dict[str, Any]:
    """A copy of the spec document with the workload keys applied to every VM and region.

    * ``pinned``: every region's ``pinned`` (0 -> "none", 1 -> "all", else the fraction);
    * ``thp``: every region whose backing is not hugetlbfs;
    * ``vcpus``: every VM's ``vcpus``; a ``vcpu_nodes`` list is stretched to the new count
      (vCPU i of n runs where vCPU i*m//n of the m listed ran), ``vcpu_tids`` are dropped;
    * ``mem_gib``: every VM's guest RAM and the size of its only region (a VM with several
      regions keeps them, so the spec check reports the mismatch);
    * ``duration_s``: the top-level ``duration_s``;
    * ``synth_seed``: the top-level ``seed``.
    """
    out: dict[str, Any] = _deep_copy(doc)
    values = dict(workload)
    if "synth_seed" in values:
        out["seed"] = int(values["synth_seed"])
    if "duration_s" in values:
        out["duration_s"] = float(values["duration_s"])
    for vm in out.get("vm", []) if isinstance(out.get("vm"), list) else []:
        if not isinstance(vm, dict):
            continue
        if "vcpus" in values:
            n = int(values["vcpus"])
            vm["vcpus"] = n
            nodes = vm.get("vcpu_nodes")
            if isinstance(nodes, list) and nodes:
                vm["vcpu_nodes"] = _stretch(nodes, n)
            vm.pop("vcpu_tids", None)
        if "mem_gib" in values:
            _set_size(vm, "mem_", int(values["mem_gib"]))
            regions = vm.get("region")
            if isinstance(regions, list) and len(regions) == 1 and isinstance(regions[0], dict):
                _set_size(regions[0], "size_", int(values["mem_gib"]))
        regions = vm.get("region")
        if not isinstance(regions, list):
            if not ("pinned" in values or "thp" in values):
                continue
            # a VM given by mem_* alone has one implicit region: make it explicit
            size = {k.replace("mem_", "size_"): vm.pop(k) for k in list(vm) if k.startswith("mem_")}
            regions = vm["region"] = [{"name": "ram", **size}]
        for region in regions:
            if not isinstance(region, dict):
                continue
            if "pinned" in values:
                frac = float(values["pinned"])
                region["pinned"] = "none" if frac == 0 else "all" if frac == 1 else frac
            if "thp" in values and region.get("backing", "anon") != "hugetlbfs":
                region["thp"] = bool(values["thp"])
    return out


def _set_size(table: dict[str, Any], prefix: str, gib: int) -> None:
    """Replace every ``<prefix>*`` size key of ``table`` by ``<prefix>gib = gib``."""
    for key in [k for k in table if k.startswith(prefix)]:
        del table[key]
    table[f"{prefix}gib"] = gib


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def describe_workload(workload: tuple[tuple[str, Value], ...]) -> str:
    """``pinned = 0.5, vcpus = 8`` (for error messages)."""
    return ", ".join(f"{k} = {show(v)}" for k, v in workload) or "the spec as written"


def check_point_against(point: Point, grid_path: Path, *, spec_epoch_ms: int) -> None:
    """Checks that need the spec: ``epoch_ms`` must be a multiple of the spec's epoch_ms."""
    epoch_ms = point.values.get("epoch_ms")
    if epoch_ms is not None and int(epoch_ms) % spec_epoch_ms:
        msg = (
            f"`epoch_ms` = `{epoch_ms}`; expected a multiple of the spec's epoch_ms "
            f"({spec_epoch_ms})"
        )
        raise SpecError(grid_path, f"point {point.point}", msg)
