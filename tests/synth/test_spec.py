"""The synth spec: workloads, phases, validation messages; the sample specs in traces/."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import SpecError
from pipeline.synth.spec import load_spec, parse_spec

TRACES = Path(__file__).resolve().parents[2] / "traces"


def base(**workload: Any) -> dict[str, Any]:
    """A 2-node host, one 4 GiB VM with vCPUs 0,1 on node 0 and 2,3 on node 1."""
    doc: dict[str, Any] = {
        "duration_s": 10,
        "host": {"nodes": 2},
        "vm": [
            {
                "name": "v",
                "vcpus": 4,
                "region": [{"name": "lo", "size_gib": 1}, {"name": "hi", "size_gib": 3}],
            }
        ],
    }
    if workload:
        doc["vm"][0]["workload"] = [workload]
    return doc


def parse(doc: dict[str, Any], **kw: Any) -> Any:
    return parse_spec(copy.deepcopy(doc), Path("s.toml"), **kw)


def error(doc: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse(doc)
    return str(info.value)


def test_defaults_and_one_phase_shorthand() -> None:
    spec = parse(base(kind="zipf", rate_mib_per_s=10))
    assert spec.epoch_ms == 100
    assert spec.seed == 0
    assert spec.nr_epochs == 100
    (w,) = spec.workloads[0]
    assert w.vcpus == (0, 1, 2, 3)
    (p,) = w.phases
    assert p.kind == "zipf"
    assert (p.start_ms, p.end_ms) == (0, 10_000)
    assert p.region == "lo"
    assert (p.win_gfn_start, p.win_nr_pages) == (0, 1 << 18)
    assert p.hot_nr_pages == 1 << 18
    assert p.skew == 1.0
    assert p.granule_pages == 512


def test_phases_run_in_sequence_from_start_s() -> None:
    doc = base(
        vcpus="node:1",
        start_s=1,
        phase=[
            {"kind": "sweep", "duration_s": 2, "rate_mib_per_s": 64, "region": "hi"},
            {"kind": "idle", "duration_s": 3},
            {"kind": "uniform", "rate_mib_per_s": 4, "offset_mib": 512, "window_mib": 256},
        ],
    )
    (w,) = parse(doc).workloads[0]
    assert w.vcpus == (2, 3)
    assert [(p.kind, p.start_ms, p.end_ms) for p in w.phases] == [
        ("sweep", 1000, 3000),
        ("idle", 3000, 6000),
        ("uniform", 6000, 10_000),
    ]
    sweep, _, uniform = w.phases
    assert sweep.win_gfn_start == (1 << 30) >> 12  # region `hi` follows `lo`
    assert uniform.win_gfn_start == (512 << 20) >> 12
    assert uniform.win_nr_pages == (256 << 20) >> 12


def test_seed_override_and_sample_specs_load() -> None:
    assert parse(base(), seed=5).seed == 5
    names = sorted(p.name for p in TRACES.glob("*.toml"))
    assert {"vfio-pinned.toml", "no-device.toml", "mixed.toml", "large-1tib.toml"} <= set(names)
    for name in names:
        spec = load_spec(TRACES / name)
        assert len(spec.sha256) == 64
        assert all(spec.workloads), name


def test_vfio_and_no_device_differ_only_in_pinning() -> None:
    a = load_spec(TRACES / "vfio-pinned.toml")
    b = load_spec(TRACES / "no-device.toml")
    assert a.workloads == b.workloads
    assert a.model.host == b.model.host
    assert a.model.vms[0].regions[0].pinned == ((0, 8 << 18),)
    assert b.model.vms[0].regions[0].pinned == ()
    assert len(set(a.model.vms[0].vcpu_nodes)) == 2


@pytest.mark.parametrize(
    ("workload", "fragment"),
    [
        ({"kind": "random"}, "`kind` = `random`; expected one of uniform, zipf, sweep"),
        ({"kind": "zipf", "rate_mib_per_s": 1, "skw": 1}, "unknown key `skw`; did you mean"),
        ({"kind": "sweep", "rate_mib_per_s": 1, "hot_mib": 1}, "unknown key `hot_mib`"),
        ({"kind": "zipf"}, "missing `rate_mib_per_s`"),
        ({"kind": "zipf", "rate_mib_per_s": -1}, "`rate_mib_per_s` = `-1`; expected a number"),
        ({"kind": "uniform", "rate_mib_per_s": 1, "region": "mid"}, "one of this VM's regions"),
        (
            {"kind": "uniform", "rate_mib_per_s": 1, "offset_mib": 1000, "window_mib": 100},
            "does not fit in region `lo`",
        ),
        ({"kind": "zipf", "rate_mib_per_s": 1, "hot_gib": 2}, "larger than its window"),
        ({"kind": "uniform", "rate_mib_per_s": 1, "granule_kib": 24}, "a power of two"),
        ({"kind": "uniform", "rate_mib_per_s": 1, "write_fraction": 2}, "in [0, 1]"),
        ({"kind": "idle", "vcpus": [0, 4]}, "a vCPU index in [0, 3]"),
        ({"kind": "idle", "vcpus": [1, 1]}, "without repeats"),
        ({"kind": "idle", "vcpus": "node:5"}, "no vCPU of this VM runs on host node 5"),
        (
            {"kind": "moving", "vcpus": "node:0", "rate_mib_per_s": 1, "move_every_s": 1},
            "at least two host nodes",
        ),
        ({"kind": "moving", "rate_mib_per_s": 1, "move_every_s": 0.01}, "at least one epoch"),
        ({"kind": "idle", "start_s": 10}, "at or after the end of the run"),
        ({"kind": "idle", "duration_s": 0.05}, "at least one epoch"),
        (
            {"phase": [{"kind": "idle"}, {"kind": "idle"}]},
            "phase 1: missing `duration_s` (only the last phase",
        ),
        ({"phase": [{"kind": "idle"}], "kind": "idle"}, "workload 1: unknown key `kind`"),
    ],
)
def test_workload_errors(workload: dict[str, Any], fragment: str) -> None:
    message = error(base(**workload))
    assert message.startswith("s.toml: vm `v`: workload 1")
    assert fragment in message


def test_top_level_errors() -> None:
    doc = base()
    del doc["duration_s"]
    assert "missing `duration_s`" in error(doc)
    doc = base()
    doc["epoch_ms"] = 0
    assert "`epoch_ms` = `0`; expected an integer in [1," in error(doc)
    doc = base()
    doc["durations"] = 3
    assert "unknown key `durations`; did you mean `duration_s`?" in error(doc)
    doc = base()
    doc["vm"][0]["workload"] = {"kind": "idle"}
    assert "write `[[vm.workload]]`" in error(doc)


def test_load_spec_reports_toml_syntax_with_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("duration_s = 10\n[host\n")
    with pytest.raises(SpecError, match=r"bad.toml: not valid TOML: .*line 2"):
        load_spec(path)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def test_docs_full_example_parses(tmp_path: Path) -> None:
    text = DOCS.read_text()
    example = text.split("## Full example", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.toml"
    path.write_text(example)
    spec = load_spec(path)
    assert [w.name for w in spec.workloads[0]] == ["boot", "page-cache", "kernel"]


def test_docs_name_every_key() -> None:
    from pipeline.model import vmmodel
    from pipeline.synth import spec as spec_module

    text = DOCS.read_text()
    keys = {
        *vmmodel.HOST_KEYS,
        *vmmodel.VM_KEYS,
        *vmmodel.REGION_KEYS,
        *spec_module.TOP_KEYS,
        *spec_module.WORKLOAD_KEYS,
        *spec_module.PHASE_KEYS,
        *(k for keys in spec_module.KIND_KEYS.values() for k in keys),
        *spec_module.KINDS,
    }
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/spec.md does not document {missing}"


def test_errors_name_the_line_of_nested_and_inline_phases(tmp_path: Path) -> None:
    head = 'duration_s = 5\n[[vm]]\nname = "v"\nmem_gib = 1\nvcpus = 2\n'
    path = tmp_path / "s.toml"
    path.write_text(
        head + "[[vm.workload]]\nvcpus = [0]\n"  # lines 6-7
        '[[vm.workload.phase]]\nkind = "idle"\nduration_s = 1\n'  # lines 8-10
        '[[vm.workload.phase]]\nkind = "zipf"\n\nrate_mib_per_s = 0\n'  # lines 11-14
    )
    with pytest.raises(SpecError, match=r"s.toml:14: vm `v`: workload 1: phase 2: `rate_mib"):
        load_spec(path)
    path.write_text(
        head + "[[vm.workload]]\nvcpus = [0]\n"
        'phase = [{ kind = "idle", duration_s = 1 }, { kind = "zipf", skw = 1 }]\n'  # line 8
    )
    with pytest.raises(SpecError, match=r"s.toml:8: vm `v`: workload 1: phase 2: unknown key"):
        load_spec(path)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path of a parsed TOML document."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


WEIRD = st.one_of(
    st.integers(-(1 << 64), 1 << 64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["all", "none", "node:1", "node:x", "first-touch", "zipf", "anon"]),
    st.lists(st.integers(-5, 5), max_size=3),
    st.lists(st.lists(st.integers(-5, 1 << 20), max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["kind", "name", "x"]), st.integers(0, 3), max_size=2),
    st.builds(list),
    st.builds(dict),
)


@pytest.mark.parametrize("sample", ["mixed.toml", "vfio-pinned.toml"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_mutated_spec_parses_or_is_a_spec_error(sample: str, data: st.DataObject) -> None:
    import tomllib

    doc = tomllib.loads((TRACES / sample).read_text())
    paths = _paths(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = doc
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = data.draw(WEIRD)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        parse_spec(doc, Path("m.toml"))
    except SpecError as exc:
        assert str(exc).startswith("m.toml")
        assert "\n" not in str(exc)
