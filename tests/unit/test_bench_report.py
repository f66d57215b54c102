"""scripts/bench.py's report and charts from made-up cells (no benchmark is run, nothing is timed): the current
PgBouncer's column and ratio, which PgBouncer runs -M prepared, the column left out when it cannot be built,
and one PNG per protocol referenced from the report."""

from __future__ import annotations

import datetime
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402


@pytest.fixture
def b(tmp_path: Path) -> Iterator[bench.Bench]:
    args = bench.parse_args(["--out", str(tmp_path / "report.md"), "--clients", "10,100", "--idle-clients", "0"])
    x = bench.Bench(args)
    x.versions.update(pgbouncer="PgBouncer 1.18.0", pooler_python="3.13.5", pooler_gil_disabled="True")
    x.versions["pgbouncer-new"] = "PgBouncer 1.24.1 (built from Debian's pgbouncer_1.24.1-1+deb13u2)"
    yield x
    shutil.rmtree(x.tmp, ignore_errors=True)


def cells() -> list[bench.Cell]:
    out = []
    for mode in ("simple", "prepared"):
        for n in (10, 100):
            for target, tps, us in (("direct", 30000.0, None), ("pgbouncer", 20000.0, 21.0),
                                    ("pgbouncer-new", 16000.0, 25.0), ("pgdoorman", 16000.0, 32.0)):
                if mode == "prepared" and target == "pgbouncer":
                    out.append(bench.Cell(target, mode, n, status="skipped", note=bench.PGBOUNCER_PREPARED_NOTE))
                    continue
                out.append(bench.Cell(target, mode, n, tps=tps, pooler_us=us, lat_ms=1.0, p99_ms=2.0, failed=0))
    return out


def test_prepared_runs_only_through_a_pgbouncer_that_keeps_prepared_statements(b: bench.Bench) -> None:
    assert b.pgbouncer_prepares("pgbouncer-new")
    assert not b.pgbouncer_prepares("pgbouncer")
    skipped = b.skip_reason("pgbouncer", "prepared", 100)
    assert skipped is not None and skipped.status == "skipped"
    assert b.skip_reason("pgbouncer-new", "prepared", 100) is None
    assert b.skip_reason("pgbouncer", "simple", 100) is None


def test_ratio_columns_against_both_pgbouncers(b: bench.Bench) -> None:
    b.cells = cells()
    rows = bench.mode_table([c for c in b.cells if c.mode == "simple"], "simple", [10, 100])
    assert rows[0].endswith("pgdoorman / pgbouncer tps | pgdoorman / pgbouncer-new tps |")
    doorman = [r for r in rows if r.startswith("| 100 | pgdoorman |")]
    assert doorman and doorman[0].endswith("| 0.80× | 1.00× |")
    rows = bench.mode_table([c for c in b.cells if c.mode == "prepared"], "prepared", [10, 100])
    doorman = [r for r in rows if r.startswith("| 100 | pgdoorman |")]
    assert doorman[0].endswith("| – | 1.00× |")


def test_without_the_current_pgbouncer_the_table_has_one_ratio(b: bench.Bench) -> None:
    b.cells = [c for c in cells() if c.target != "pgbouncer-new"]
    rows = bench.mode_table([c for c in b.cells if c.mode == "simple"], "simple", [10, 100])
    assert "pgbouncer-new" not in rows[0]
    assert all(r.count("|") == rows[0].count("|") for r in rows)


def test_unbuildable_pgbouncer_is_left_out_not_failed(b: bench.Bench, tmp_path: Path) -> None:
    b.args.pgbouncer_new = str(tmp_path / "missing-pgbouncer")
    b.find_pgbouncer_new()
    assert "pgbouncer-new" in b.unavailable and b.pgbouncer_new_exe is None
    assert b.bad_results() == []
    b.cells = [c for c in cells() if c.target != "pgbouncer-new"]
    now = datetime.datetime.now(datetime.UTC)
    report = bench.render(b, now, now, [])
    assert "pgbouncer-new was left out of this run" in report


def test_charts_one_png_per_protocol_referenced_from_the_report(b: bench.Bench, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    b.cells = cells()
    bench.draw_charts(b, Path(b.args.out))
    assert set(b.charts) == {"simple", "prepared"}
    for mode, rel in b.charts.items():
        png = tmp_path / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", mode
    now = datetime.datetime.now(datetime.UTC)
    report = bench.render(b, now, now, [])
    assert "![-S -M simple: tps and pooler CPU per transaction by clients](img/report-simple.png)" in report


STORM_OUT = """500 new connections/s for 3 s over 50 users (md5, select 1, close); pooler worker_threads=1
kind          logins  errors   p50 ms   p99 ms  CPU us/login
static          1500       0     2.10    24.00           510
{"rate": 500, "seconds": 3.0, "users": 50, "workers": "1", "passes": [], "kinds": {"static": {"kind": "static", \
"logins": 3000, "errors": 0, "p50_ms": 2.1, "p99_ms": 24.0, "cpu_us_per_login": 510.4}, "auth_query": {"kind": \
"auth_query", "logins": 2998, "errors": 2, "p50_ms": 2.3, "p99_ms": 31.5, "cpu_us_per_login": 548.9}}}
"""


def test_login_storm_rows_in_the_report(b: bench.Bench) -> None:
    b.storm = bench.storm_rows(STORM_OUT)
    assert [(r.kind, r.logins, r.errors) for r in b.storm] == [("static", 3000, 0), ("auth_query", 2998, 2)]
    now = datetime.datetime.now(datetime.UTC)
    report = bench.render(b, now, now, [])
    assert "## Login storm: static vs auth_query users" in report
    assert "| static | 3,000 | 0 | 2.10 | 24.00 | 510 |" in report
    assert "| auth_query | 2,998 | 2 | 2.30 | 31.50 | 549 |" in report
    # Failed logins fail the run, as failed transactions do.
    assert b.bad_results() == ["login storm (auth_query): 2 logins failed"]


def test_login_storm_without_a_result_says_so(b: bench.Bench) -> None:
    with pytest.raises(ValueError):
        bench.storm_rows("Traceback (most recent call last):\n  ...")
    b.storm_error = "no result from login_storm.py (no JSON line): Traceback"
    now = datetime.datetime.now(datetime.UTC)
    assert "Not measured: no result from login_storm.py" in bench.render(b, now, now, [])
    assert b.bad_results() == ["login storm: no result from login_storm.py (no JSON line): Traceback"]
    assert bench.parse_args(["--quick"]).login_storm == 3


def test_tls_runs_the_headline_cells_by_default() -> None:
    tls = bench.parse_args(["--tls"])
    assert (tls.headline_clients, tls.headline_duration, tls.login_storm, tls.login_storm_rate) == (10000, 20, 10, 100)
    plain = bench.parse_args([])
    assert (plain.headline_clients, plain.login_storm, plain.login_storm_rate) == (0, 5, 500)
    with pytest.raises(SystemExit):
        bench.parse_args(["--tls", "--headline-duration", "2"])


def headline_cells() -> list[bench.Cell]:
    return [bench.Cell("pgbouncer", "extended", 10000, kind="headline", tps=20000.0, lat_ms=500.0, p99_ms=800.0,
                       failed=0, pooler_us=22.0, conn_ms=9000.0),
            bench.Cell("pgbouncer-new", "extended", 10000, kind="headline", tps=16000.0, lat_ms=620.0, p99_ms=700.0,
                       failed=0, pooler_us=25.0, conn_ms=9500.0),
            bench.Cell("pgdoorman", "extended", 10000, kind="headline", tps=18000.0, lat_ms=550.0, p99_ms=760.0,
                       failed=0, pooler_us=30.0, conn_ms=12000.0)]


def storm_cells() -> list[bench.Cell]:
    return [bench.Cell(t, "simple", bench.STORM_CLIENTS, kind="storm", tps=100.0, n_tx=1000, failed=0, p50_ms=p50,
                       p99_ms=p99, conn_ms=3.0, pooler_us=us)
            for t, p50, p99, us in (("pgbouncer", 4.0, 9.0, 600.0), ("pgbouncer-new", 4.5, 10.0, 650.0),
                                    ("pgdoorman", 5.0, 12.0, 900.0))]


def test_headline_cells_first_with_ratios_and_the_target_per_pgbouncer(b: bench.Bench) -> None:
    b.args = bench.parse_args(["--tls", "--out", b.args.out])
    b.headline, b.storm_cells = headline_cells(), storm_cells()
    now = datetime.datetime.now(datetime.UTC)
    report = bench.render(b, now, now, ["--tls"])
    assert report.index("## Headline: 10,000 clients over TLS, -M extended") < report.index("## Machine and versions")
    assert "| pgdoorman | 18,000 | 550.0 | 760.0 | 0 | 12.0 | 30.0 |" in report
    # Fewer tps than PgBouncer 1.18 fails the target; more tps and a lower p99 than the current one meets it.
    assert ("pgdoorman / PgBouncer 1.18.0 (`pgbouncer`): tps **0.90×**, p99 760.0 ms vs 800.0 ms (0.95×), pooler "
            "CPU 1.36× per transaction: target **not met**.") in report
    assert "pgdoorman / PgBouncer 1.24.1 (`pgbouncer-new`): tps **1.12×**, p99 760.0 ms vs 700.0 ms" in report
    assert "(1.09×), pooler CPU 1.20× per transaction: target **not met**." in report
    assert "## Headline: login storm over TLS with SCRAM-SHA-256" in report
    assert "| pgdoorman | 100 | 1,000 | 0 | 5.00 | 12.00 | 3.00 | 900 |" in report
    assert "pooler CPU per login 900 µs vs 600 µs (1.50×)" in report
    assert "* **Headline cell** (`-c 10000`, `-M extended`)" in report and "* **Login storm** (" in report
    assert "| pgdoorman | extended (headline) | 10000 | 18,000 |" in report
    assert "| pgdoorman | simple (login storm) | 10 | 100 |" in report
    assert b.bad_results() == []


def test_headline_target_met_and_failed_cells_fail_the_run(b: bench.Bench) -> None:
    b.headline = headline_cells()
    b.headline[2].tps, b.headline[2].p99_ms = 20000.0, 800.0  # equal counts as met
    assert bench.comparisons(b, b.headline)[0].endswith("target **met**.")
    b.storm_cells = storm_cells()
    b.storm_cells[2].status, b.storm_cells[2].failed = "failed", 3
    assert bench.comparisons(b, b.storm_cells)[0] == ("* pgdoorman / PgBouncer 1.18.0 (`pgbouncer`): no ratio (a "
                                                      "cell of the pair failed).")
    assert b.bad_results() == ["pgdoorman login storm: failed"]
