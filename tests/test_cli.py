"""The CLI's small promises (issue 17): usage errors are one line with exit 1, no `<bool>`
in --help, every data command takes --quiet, words agree with their numbers, page sizes
sort by size, replay ends with a summary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.core import _TyperParameter as TyperParameter
from typer.testing import CliRunner

from pipeline import clikit
from pipeline.analyze.output import page_size_order, page_size_sql
from pipeline.cli import app

COMMANDS = ("ingest", "synth", "replay", "query", "verdict", "report", "export", "calibrate")


@pytest.mark.parametrize("args", [["replay"], ["query"], ["report", "x"], ["verdict"]])
def test_missing_argument_is_one_line_exit_1(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlbreplay: error: "), result.stderr
    assert f"see `tlbreplay {args[0]} --help`" in lines[0]
    assert "╭" not in result.stderr


def test_unknown_option_is_one_line_exit_1_as_a_subprocess() -> None:
    script = Path(sys.executable).with_name("tlbreplay")
    if not script.is_file():
        pytest.skip("the tlbreplay console script is not installed next to this python")
    res = subprocess.run(
        [str(script), "query", "--nope"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 1
    assert res.stderr == (
        "tlbreplay: error: no such option: --nope; see `tlbreplay query --help`\n"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_bool_and_offers_quiet(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    if command not in ("verdict",):  # verdict reads views and prints one line per RESULTS
        assert "--quiet" in result.stdout


def test_no_arguments_prints_help_exit_0() -> None:
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_replay_of_a_missing_dataset_names_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["replay", str(tmp_path / "nonexist"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "nonexist: no such DATASET directory" in result.stderr


def test_page_sizes_sort_by_size() -> None:
    assert page_size_order() == ["4K", "2M", "1G"]
    import duckdb

    rows = duckdb.sql(
        f"SELECT page_size FROM (VALUES ('2M'), ('4K'), ('1G')) AS t (page_size) "
        f"ORDER BY {page_size_sql()}"
    ).fetchall()
    assert [r[0] for r in rows] == ["4K", "2M", "1G"]


def test_synth_says_1_vm_and_replay_ends_with_a_summary(tmp_path: Path) -> None:
    spec = tmp_path / "one.toml"
    spec.write_text(
        'duration_s = 2\n[[vm]]\nname = "solo"\nmem_gib = 1\nvcpus = 2\n'
        '[[vm.workload]]\nkind = "uniform"\nrate_mib_per_s = 40\n'
    )
    ds, res = tmp_path / "ds", tmp_path / "res"
    synth = CliRunner().invoke(app, ["synth", str(spec), "--out", str(ds)])
    if synth.exit_code != 0:
        pytest.fail(synth.output)
    assert ": 1 VM, " in synth.stderr and "VMs" not in synth.stderr
    replay = CliRunner().invoke(app, ["replay", str(ds), "--out", str(res), "-j", "1"])
    assert replay.exit_code == 0, replay.output
    lines = replay.stdout.splitlines()
    assert re.match(r"res \(1 VM, [\d.]+ s replayed\): ", lines[0])
    assert lines[1].split()[:2] == ["policy", "KVM"]
    assert lines[-1].startswith(f"wrote {res} ")


def _probe_app() -> typer.Typer:
    """A command with the parameter kinds the CLI uses, echoing what it was given."""
    probe_app = typer.Typer()

    @probe_app.command()
    def probe(
        path: Annotated[Path, typer.Argument()],
        *,
        paths: Annotated[list[Path] | None, typer.Option("--paths")] = None,
        existing: Annotated[Path | None, typer.Option(exists=True, file_okay=False)] = None,
        real: Annotated[Path | None, typer.Option(resolve_path=True, dir_okay=False)] = None,
        dash: Annotated[Path | None, typer.Option(allow_dash=True)] = None,
        text: Annotated[str, typer.Option()] = "default",
        texts: Annotated[list[str] | None, typer.Option("--texts")] = None,
        n: int = 3,
        flag: bool = False,
    ) -> None:
        typer.echo(repr((path, paths, existing, real, dash, text, texts, n, flag)))

    return probe_app


@pytest.mark.parametrize(
    "args",
    [
        ["a/b"],
        [""],
        ["x", "--paths", "p1", "--paths", "p2", "--texts", "t1", "--texts", ""],
        ["x", "--existing", "{tmp}"],
        ["x", "--existing", "{tmp}/missing"],
        ["x", "--existing", "{tmp}/file"],
        ["x", "--real", "{tmp}/../file"],
        ["x", "--real", "{tmp}"],
        ["x", "--dash", "-"],
        ["x", "--text", "é \u2014 'q'", "--n", "7", "--flag"],
        ["x", "--n", "seven"],
        [],
    ],
)
def test_parameters_coerce_as_typer_does(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clikit coerces str and Path parameters without pydantic (issue 13); the values and
    the error messages are typer's own."""
    (tmp_path / "file").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    ours = CliRunner().invoke(_probe_app(), argv)
    monkeypatch.setattr(TyperParameter, "get_runtime_param", clikit.TYPER_GET_RUNTIME_PARAM)
    theirs = CliRunner().invoke(_probe_app(), argv)
    assert (ours.exit_code, ours.stdout, ours.stderr) == (
        theirs.exit_code,
        theirs.stdout,
        theirs.stderr,
    )


def test_importing_the_cli_loads_no_data_library() -> None:
    """Every command starts with `import pipeline.cli`: it loads typer, not polars, pyarrow,
    numpy, duckdb, pydantic or rich (a command imports what it uses). Checked in a fresh
    interpreter, not timed (issue 13)."""
    code = "import sys, pipeline.cli; print(' '.join({m.split('.')[0] for m in sys.modules}))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = {"polars", "pyarrow", "numpy", "pandas", "duckdb", "pydantic", "rich", "dask"}
    loaded = set(res.stdout.split())
    assert "typer" in loaded
    assert not loaded & heavy, sorted(loaded & heavy)
