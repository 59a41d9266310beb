"""`tlbreplay query`: formats, read-only refusal, errors listing the views, --views, --audit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["query", *args])
    return result.exit_code, result.stdout, result.stderr


def test_table_format(small_run: Path) -> None:
    code, out, _ = run(
        str(small_run),
        "SELECT policy, remote_tlb_flushes FROM shootdowns_by_vm WHERE vm = 'vm0' ORDER BY policy",
    )
    assert code == 0
    lines = [line for line in out.splitlines() if "linux" in line or "oracle" in line]
    assert [line.split("│")[1:3] for line in lines] == [
        [" linux-6.5 ", "                 10 "],
        [" linux-7.1 ", "                  5 "],
        [" oracle    ", "                  0 "],
    ]


def test_csv_and_json_formats(small_run: Path) -> None:
    sql = "SELECT policy, vm, cost_us FROM shootdowns_by_vm WHERE vm = 'vm1' ORDER BY policy"
    code, out, _ = run(str(small_run), sql, "--format", "csv")
    assert code == 0
    assert out == "policy,vm,cost_us\nlinux-6.5,vm1,8.0\nlinux-7.1,vm1,8.0\noracle,vm1,4.0\n"
    code, out, _ = run(str(small_run), sql, "--format", "json")
    assert code == 0
    assert json.loads(out) == [
        {"policy": "linux-6.5", "vm": "vm1", "cost_us": 8.0},
        {"policy": "linux-7.1", "vm": "vm1", "cost_us": 8.0},
        {"policy": "oracle", "vm": "vm1", "cost_us": 4.0},
    ]


def test_hugeint_sums_stay_integers(small_run: Path) -> None:
    sql = (
        "SELECT sum(remote_tlb_flushes) AS n, sum(cost_us) AS c, 2.5::DECIMAL(4, 1) AS d "
        "FROM epochs"
    )
    assert run(str(small_run), sql, "--format", "json")[1] == (
        '[\n {\n  "n": 20,\n  "c": 95.0,\n  "d": 2.5\n }\n]\n'
    )
    assert run(str(small_run), sql, "--format", "csv")[1] == "n,c,d\n20,95.0,2.5\n"


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("DROP VIEW shootdowns", "DROP"),
        ("COPY (SELECT 1) TO '/tmp/tlbreplay-should-not-exist.csv'", "COPY"),
        ("INSERT INTO epochs VALUES (1)", "INSERT"),
        ("ATTACH '/tmp/tlbreplay-x.db' AS x", "ATTACH"),
        ("SET threads = 1", "SET"),
    ],
)
def test_writes_are_refused(small_run: Path, sql: str, kind: str) -> None:
    code, _, err = run(str(small_run), sql)
    assert code == 1
    assert err.strip() == (
        f"tlbreplay: error: the views are read-only: `{kind}` statements are refused; "
        "only SELECT runs"
    )
    assert not Path("/tmp/tlbreplay-should-not-exist.csv").exists()


def test_several_statements_refused(small_run: Path) -> None:
    code, _, err = run(str(small_run), "SELECT 1; SELECT 2")
    assert code == 1
    assert "2 statements given" in err


def test_bad_sql_lists_views(small_run: Path) -> None:
    code, _, err = run(str(small_run), "SELECT * FROM shootdown")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("tlbreplay: error: query failed: ")
    assert "shootdowns" in err and "savings, " in err and "timeline" in err
    assert "--views" in err
    code, _, err = run(str(small_run), "SELEC 1")
    assert code == 1
    assert "syntax error" in err.lower()


def test_views_lists_views_and_column_docs(small_run: Path) -> None:
    code, out, _ = run(str(small_run), "--views")
    assert code == 0
    for name in ("epochs", "shootdowns", "savings", "timeline", "by_vcpu", "observed"):
        assert f"\n{name}  " in "\n" + out
    assert "remote_tlb_flushes" in out and "kvm_flush_remote_tlbs calls" in out
    assert "\n_runs " not in "\n" + out  # private views are not listed


def test_argument_errors(small_run: Path, tmp_path: Path) -> None:
    assert run(str(small_run))[0] == 1
    code, _, err = run(str(small_run), "SELECT 1", "--format", "xml")
    assert code == 1 and "unknown format `xml`" in err
    code, _, err = run(str(tmp_path / "missing"), "SELECT 1")
    assert code == 1 and "no such RESULTS directory" in err


def test_audit_passes_on_consistent_results(tmp_path: Path) -> None:
    from tests.analyze.results_builder import ep, make_dataset, make_results, vm_row

    ds = make_dataset(tmp_path / "ds", [vm_row("vm0")])
    res = make_results(
        tmp_path / "r",
        ds,
        policies=["linux-6.5", "oracle"],
        epochs=[
            ep("linux-6.5", "vm0", 0, remote_tlb_flushes=1, shootdown_ipis=2, ept_violations=3)
        ],
        vcpu_epochs=[
            {
                "policy": "linux-6.5",
                "vm": "vm0",
                "vcpu": 0,
                "epoch": 0,
                "shootdown_ipis": 1,
                "ept_violations": 3,
            },
            {"policy": "linux-6.5", "vm": "vm0", "vcpu": 1, "epoch": 0, "shootdown_ipis": 1},
        ],
    )
    code, out, _ = run(str(res), "--audit")
    assert code == 0, out
    assert out.count("ok ") == 5


def test_audit_fails_and_prints_rows(small_run: Path) -> None:
    # small_run's vcpu_epochs cover only part of linux-6.5/vm0 on purpose
    code, out, err = run(str(small_run), "--audit")
    assert code == 1
    assert "FAIL vcpu_totals_match_epochs" in out
    assert "audit(s) returned rows" in err


def test_query_as_a_subprocess(small_run: Path) -> None:
    """The installed entry point refuses a write with one line and exit 1, no traceback
    (success through the entry point is covered by tests/test_e2e.py)."""
    exe = Path(sys.executable).parent / "tlbreplay"
    bad = subprocess.run(
        [str(exe), "query", str(small_run), "DELETE FROM epochs"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr == (
        "tlbreplay: error: the views are read-only: `DELETE` statements are refused; "
        "only SELECT runs\n"
    )


#: Libraries `query` must not load for a result of plain types (issue 13: start-up < 0.5 s).
HEAVY = {"polars", "pyarrow", "numpy", "pandas", "pydantic", "matplotlib", "dask"}


def test_query_path_imports_duckdb_not_polars_or_pyarrow(small_run: Path, tmp_path: Path) -> None:
    """The modules a query loads, listed in a fresh interpreter (not a timed test). The
    first query of a RESULTS state builds its saved catalog (ADR 0420) and may load more;
    the next ones open it."""
    sql = (
        "SELECT policy, vm, sum(remote_tlb_flushes) AS flushes, sum(cost_us) AS cost_us "
        "FROM epochs GROUP BY ALL ORDER BY ALL"
    )
    code = (
        "import sys\n"
        "from pipeline.cli import app\n"
        f"sys.argv = ['tlbreplay', 'query', {str(small_run)!r}, {sql!r}]\n"
        "try:\n"
        "    app()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
    )
    env = {**os.environ, "TLBREPLAY_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
    loaded = set(res.stderr.split())
    assert "duckdb" in loaded
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    assert "linux-6.5" in res.stdout


#: One expression per DuckDB type the fast path takes, and some it leaves to Arrow.
TYPED_SQL = [
    "SELECT 1 AS a, 2::TINYINT AS b, 3::UBIGINT AS c, 18446744073709551615::UBIGINT AS d",
    "SELECT sum(remote_tlb_flushes) AS n, sum(cost_us) AS c, 2.5::DECIMAL(4, 1) AS d FROM epochs",
    "SELECT 170141183460469231731687303715884105727::HUGEINT AS h, NULL::HUGEINT AS hn",
    "SELECT 1.1::FLOAT AS f, 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, -0.0::DOUBLE AS z",
    "SELECT NULL AS n, true AS t, 'x,\"y\"' AS s, '' AS e, 'é—' AS u",
    "SELECT [1, NULL, 3] AS l, {'a': 1, 'b': 'x', 'c': [1.5::FLOAT]} AS s, "
    "[[2.5::DECIMAL(3,1)]] AS d",
    "SELECT manifest, manifest ->> 'epoch_ms' AS epoch_ms FROM results_manifest",
    "SELECT policy, vm, epoch, remote_tlb_flushes, cost_us FROM epochs ORDER BY ALL",
    "SELECT 1 AS a, 2 AS a",
    "SELECT DATE '2026-12-03' AS d, TIMESTAMP '2026-12-03 10:00:00' AS t, INTERVAL 3 DAY AS i",
    "SELECT MAP {'k': 1} AS m, 'x'::UUID IS NULL AS u, [1::HUGEINT] AS lh",
    "SELECT * FROM range(0) AS t(i)",
]


@pytest.mark.parametrize("sql", TYPED_SQL)
def test_fetched_rows_print_as_the_arrow_rows(small_run: Path, sql: str) -> None:
    """fetch_rows (DuckDB's Python values, no pyarrow) and run_query (Arrow) give the same
    records and the same table, CSV and JSON text, byte for byte."""
    from rich.console import Console

    from pipeline.analyze import query as q
    from pipeline.analyze.output import Rows, rich_table, to_csv, to_json, to_ndjson
    from pipeline.analyze.views import connect

    if "'x'::UUID" in sql:
        sql = sql.replace("'x'::UUID IS NULL", "gen_random_uuid() IS NULL")
    con, _ = connect(small_run)
    try:
        fast = q.fetch_rows(con, sql, [])
        slow = Rows.from_arrow(q.run_query(con, sql, []))
    finally:
        con.close()
    assert repr(fast) == repr(slow)  # repr: NaN equals NaN, -0.0 differs from 0.0

    def text(rows: Rows) -> str:
        buf = Console(width=10_000, record=True, file=io.StringIO())
        buf.print(rich_table(rows))
        return buf.export_text()

    for render in (to_csv, to_json, to_ndjson, text):
        assert render(fast) == render(slow)


def test_a_table_shows_the_first_rows_and_counts_the_rest(small_run: Path) -> None:
    from pipeline.analyze import query as q
    from pipeline.analyze.views import connect

    con, _ = connect(small_run)
    try:
        rows = q.fetch_rows(con, "SELECT range AS i FROM range(70000)", [], limit=3)
    finally:
        con.close()
    assert rows.values == [(0,), (1,), (2,)]
    assert rows.num_rows == 70000
    code, out, _ = run(str(small_run), "SELECT range AS i FROM range(10005)")
    assert code == 0
    assert "5 more rows not shown; use --format csv" in out
    assert "10,000 │" in out or "│ 9,999 │" in out


def test_two_columns_of_one_name_both_show(small_run: Path) -> None:
    """Once a traceback (the table lost a cell); CSV and the table show both columns, JSON
    objects keep the last value of a name."""
    sql = "SELECT 1 AS a, 2 AS a"
    assert run(str(small_run), sql, "--format", "csv")[1] == "a,a\n1,2\n"
    assert run(str(small_run), sql, "--format", "ndjson")[1] == '{"a": 2}\n'
    code, out, _ = run(str(small_run), sql)
    assert code == 0 and "│ 1 │ 2 │" in out
