"""Issue 12 items 1 and 3: in transaction mode a client's session settings follow it from server to server with
PostgreSQL's semantics, and what cannot move (temporary tables, session advisory locks, WITH HOLD cursors,
SQL prepared statements) pins it to its server until released. Every test runs the same steps directly on
PostgreSQL and through pgdoorman (transaction mode, pool_size 1 and 2, psycopg 3 and asyncpg) and compares
what the clients saw."""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import Pooler, free_port, wait_for
from tests.support.wire import WireClient, WireError, bind, execute, parse, parse_fields, rows, sync

pytestmark = pytest.mark.timeout(300)

Steps = list[tuple[str, str]]

SHOW = ("SELECT current_setting('work_mem'), current_setting('geqo'), "
        "current_setting('default_transaction_isolation'), current_setting('TimeZone'), "
        "current_setting('lock_timeout'), current_setting('search_path'), current_setting('transaction_isolation'), "
        "current_setting('application_name'), current_setting('DateStyle'), current_setting('role')")


@pytest.fixture(scope="module", params=[1, 2], ids=["pool_size1", "pool_size2"])
def pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    from tests.support.cluster import pooler_config

    cfg = pooler_config(pg, pool_mode="transaction", pool_size=request.param, general={"query_wait_timeout": 20000})
    web_port = free_port()
    cfg["web"] = {"enabled": True, "host": "127.0.0.1", "port": web_port}
    p = Pooler(cfg, str(tmp_path_factory.mktemp(f"txsession-{request.param}"))).start()
    p.pool_size = request.param  # type: ignore[attr-defined]
    p.web_port = web_port  # type: ignore[attr-defined]
    yield p
    p.stop()


@pytest.fixture(scope="module", autouse=True)
def _roles(pg: Any) -> Iterator[None]:
    pg.psql(f"DROP ROLE IF EXISTS txs_reader; CREATE ROLE txs_reader; GRANT txs_reader TO {SCRAM_USER};")
    yield
    pg.psql(f"REVOKE txs_reader FROM {SCRAM_USER}; DROP ROLE IF EXISTS txs_reader;")


def _dsn(host: str, port: int, **extra: str) -> str:
    more = "".join(f" {k}={v}" for k, v in extra.items())
    return f"host={host} port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname={DBNAME} sslmode=disable{more}"


def run_psycopg(host: str, port: int, steps: Steps, options: dict[str, dict[str, str]] | None = None) -> list[Any]:
    names = sorted({w for w, _ in steps})
    conns = {n: psycopg.connect(_dsn(host, port, **(options or {}).get(n, {})), autocommit=True) for n in names}
    out: list[Any] = []
    try:
        for who, sql in steps:
            if sql == "CLOSE-CONNECTION":
                conns.pop(who).close()
                time.sleep(0.5)  # the backend's exit (or the pooler's cleanup) is asynchronous
                continue
            try:
                cur = conns[who].execute(sql)
                out.append((who, sql, cur.fetchall() if cur.description else cur.statusmessage))
            except psycopg.Error as e:
                out.append((who, sql, "error", e.sqlstate))
    finally:
        for c in conns.values():
            c.close()
    return out


def run_asyncpg(host: str, port: int, steps: Steps, options: dict[str, dict[str, str]] | None = None) -> list[Any]:
    async def main() -> list[Any]:
        names = sorted({w for w, _ in steps})
        conns = {n: await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD,
                                          database=DBNAME, ssl=False, server_settings=(options or {}).get(n))
                 for n in names}
        out: list[Any] = []
        try:
            for who, sql in steps:
                if sql == "CLOSE-CONNECTION":
                    await conns.pop(who).close()
                    await asyncio.sleep(0.5)  # the backend's exit (or the pooler's cleanup) is asynchronous
                    continue
                try:
                    out.append((who, sql, [tuple(r) for r in await conns[who].fetch(sql)]))
                except asyncpg.PostgresError as e:
                    out.append((who, sql, "error", e.sqlstate))
        finally:
            for c in conns.values():
                await c.close()
        return out

    return asyncio.run(main())


DRIVERS: dict[str, Callable[..., list[Any]]] = {"psycopg": run_psycopg, "asyncpg": run_asyncpg}


def compare(pg: Any, p: Pooler, driver: str, steps: Steps, options: dict[str, dict[str, str]] | None = None) -> None:
    run = DRIVERS[driver]
    direct = run(pg.host, pg.port, steps, options)
    pooled = run(p.host, p.port, steps, options)
    for d, q in zip(direct, pooled, strict=True):
        assert q == d, f"through pgdoorman {q!r}, on PostgreSQL {d!r}"


SETTINGS_STEPS: Steps = [
    ("a", "SET work_mem = '9MB'"),
    ("a", "SELECT set_config('geqo', 'off', false)"),
    ("a", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
    ("a", "SET TimeZone = 'Asia/Tokyo'"),
    ("a", "SET ROLE txs_reader"),
    ("b", SHOW), ("a", SHOW), ("b", "SHOW work_mem"), ("a", "SHOW work_mem"),
    # SET LOCAL, set_config(..., true), a rolled back SET, savepoints
    ("a", "BEGIN"), ("a", "SET LOCAL work_mem = '1MB'"), ("a", SHOW), ("a", "COMMIT"), ("a", SHOW),
    ("a", "SELECT set_config('lock_timeout', '6s', true)"), ("a", SHOW),
    ("a", "BEGIN"), ("a", "SET lock_timeout = '3s'"), ("a", "ROLLBACK"), ("a", SHOW),
    ("a", "BEGIN"), ("a", "SET lock_timeout = '4s'"), ("a", "SAVEPOINT s"), ("a", "SET lock_timeout = '5s'"),
    ("a", "ROLLBACK TO SAVEPOINT s"), ("a", "COMMIT"), ("a", SHOW), ("b", SHOW),
    ("a", "BEGIN"), ("a", "SET search_path = pg_catalog, public"), ("a", "SELECT 1/0"), ("a", "ROLLBACK"),
    ("a", SHOW),
    # the other client's changes are its own
    ("b", "SET work_mem = '2MB'"), ("b", "SET DateStyle = 'German'"), ("a", SHOW), ("b", SHOW),
    ("a", "RESET work_mem"), ("a", SHOW), ("b", SHOW),
    ("a", "SET work_mem TO DEFAULT"), ("a", "RESET ROLE"), ("a", SHOW),
    ("a", "SET statement_timeout = '7s'"), ("a", "RESET ALL"), ("a", SHOW), ("a", "SHOW statement_timeout"),
    ("b", "RESET ALL"), ("b", SHOW), ("a", SHOW),
]


@pytest.mark.parametrize("driver", DRIVERS)
def test_settings_follow_their_client(pg: Any, pooler: Pooler, driver: str) -> None:
    compare(pg, pooler, driver, SETTINGS_STEPS)


def test_startup_settings_and_reset_all(pg: Any, pooler: Pooler) -> None:
    """RESET returns a setting to the client's startup value (options=-c and the packet's own), as on
    PostgreSQL; DISCARD ALL too."""
    steps: Steps = [
        ("a", "SET work_mem = '9MB'"), ("a", "SET TimeZone = 'UTC'"), ("b", SHOW), ("a", SHOW),
        ("a", "RESET ALL"), ("b", SHOW), ("a", SHOW), ("a", "SET geqo = off"), ("a", "DISCARD ALL"),
        ("b", SHOW), ("a", SHOW), ("a", "SHOW geqo"),
    ]
    opts = {"a": {"options": "'-c work_mem=5MB -c lock_timeout=2s -c TimeZone=Europe/Paris'",
                  "application_name": "txs-a"}}
    compare(pg, pooler, "psycopg", steps, opts)


def test_reset_reports_the_startup_value(pg: Any, pooler: Pooler) -> None:
    """After RESET of a reported setting given at startup, the client is told the startup value (ParameterStatus),
    as PostgreSQL tells it; the other client is told nothing of it."""
    seen = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", pooler.host, pooler.port)):
        with psycopg.connect(_dsn(host, port, options="'-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo'"),
                             autocommit=True) as a, psycopg.connect(_dsn(host, port), autocommit=True) as b:
            got = []
            for who, sql in (("a", "SET DateStyle = 'German'"), ("a", "SET TimeZone = 'UTC'"), ("b", "SELECT 1"),
                             ("a", "RESET DateStyle"), ("a", "RESET TimeZone"), ("b", "SELECT 1"),
                             ("a", "SELECT 1"), ("a", "SET TimeZone = 'UTC'"), ("a", "RESET ALL"), ("a", "SELECT 1")):
                c = a if who == "a" else b
                c.execute(sql)
                # (Read after the next statement: through pgdoorman the corrected value follows the RESET's
                # ReadyForQuery; docs/transaction-mode.md, known differences.)
                shown = (c.execute("SHOW DateStyle").fetchone(), c.execute("SHOW TimeZone").fetchone())
                got.append((who, sql, c.info.parameter_status("DateStyle"), c.info.parameter_status("TimeZone"),
                            shown))
            seen[name] = got
    assert seen["pooled"] == seen["direct"]


def test_reset_reports_the_startup_value_asyncpg(pg: Any, pooler: Pooler) -> None:
    """The same with asyncpg, which must take the ParameterStatus that follows a ReadyForQuery in its stride."""
    async def run(host: str, port: int) -> list[Any]:
        a = await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD, database=DBNAME,
                                  ssl=False, server_settings={"DateStyle": "SQL, DMY"})
        got = []
        try:
            for sql in ("SET DateStyle = 'German'", "RESET DateStyle", "SELECT 1", "RESET ALL", "SELECT 1"):
                await a.execute(sql)
                shown = await a.fetchval("SHOW DateStyle")
                got.append((sql, shown, a.get_settings().DateStyle))
        finally:
            await a.close()
        return got

    direct = asyncio.run(run(pg.host, pg.port))
    assert asyncio.run(run(pooler.host, pooler.port)) == direct


PIN_STEPS: Steps = [
    ("a", "CREATE TEMP TABLE pin_t (x int)"),
    ("a", "INSERT INTO pin_t VALUES (1)"),
    ("a", "SELECT count(*) FROM pin_t"),
    ("a", "SELECT pg_advisory_lock(7701)"),
    ("a", "DECLARE pin_c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)"),
    ("a", "FETCH 1 FROM pin_c"),
    ("a", "PREPARE pin_p AS SELECT 41 + $1"),
    ("a", "EXECUTE pin_p(1)"),
    ("a", "FETCH 1 FROM pin_c"),
    ("a", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
    ("a", "DROP TABLE pin_t"),
    ("a", "SELECT pg_advisory_unlock(7701)"),
    ("a", "CLOSE pin_c"),
    ("a", "DEALLOCATE pin_p"),
    ("b", "SELECT to_regclass('pin_t') IS NULL, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
          "AND pid = pg_backend_pid()), (SELECT count(*) FROM pg_cursors), "
          "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)"),
    ("a", "SELECT to_regclass('pin_t') IS NULL"),
]

# Two servers: B runs while A is pinned, and sees nothing of A's.
PIN_STEPS_2: Steps = [
    ("a", "CREATE TEMP TABLE pin_t (x int)"),
    ("a", "SELECT pg_advisory_lock(7702)"),
    ("b", "SELECT to_regclass('pin_t') IS NULL, pg_try_advisory_xact_lock(7702)"),
    ("a", "INSERT INTO pin_t VALUES (2)"),
    ("b", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
    ("a", "SELECT x FROM pin_t"),
    ("a", "CLOSE-CONNECTION"),  # A leaves pinned: its server is cleaned and goes back to the pool
    ("b", "SELECT pg_try_advisory_xact_lock(7702)"),
    ("b", "SELECT to_regclass('pin_t') IS NULL"),
]


@pytest.mark.parametrize("driver", DRIVERS)
def test_what_cannot_move_pins_the_client(pg: Any, pooler: Pooler, driver: str) -> None:
    compare(pg, pooler, driver, PIN_STEPS)
    if pooler.pool_size == 2:  # type: ignore[attr-defined]
        compare(pg, pooler, driver, PIN_STEPS_2)


def _admin(p: Pooler, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"host={p.host} port={p.port} user={ADMIN_USER} password={ADMIN_PASSWORD} "
                         "dbname=pgdoorman sslmode=disable", autocommit=True) as c:
        cur = c.execute(sql, prepare=False)
        cols = [d.name for d in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]  # type: ignore[misc]


def _metric(p: Pooler, name: str) -> float:
    body = urllib.request.urlopen(f"http://{p.host}:{p.web_port}/metrics", timeout=10).read().decode()  # type: ignore[attr-defined]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()
               if ln.startswith(name + "{") and f'user="{SCRAM_USER}"' in ln)


def test_pinning_is_shown(pooler: Pooler) -> None:
    """SHOW CLIENTS and SHOW SERVERS name what pins a client, and the metrics count it."""
    # Clients of the tests before this one may still be leaving (their close is asynchronous).
    wait_for(lambda: _metric(pooler, "pg_doorman_pools_clients_pinned") == 0, what="no pinned client")
    pins_before = _metric(pooler, "pg_doorman_pools_pins_total")
    def pinned_clients() -> list[str]:
        return [r["pinned"] for r in _admin(pooler, "SHOW CLIENTS") if r["application_name"] == "txs-shown"]

    with psycopg.connect(_dsn(pooler.host, pooler.port, application_name="txs-shown"), autocommit=True) as a:
        a.execute("CREATE TEMP TABLE shown_t ()")
        a.execute("SELECT pg_advisory_lock(7703)")
        # The check runs once the client has its ReadyForQuery: wait for it.
        wait_for(lambda: pinned_clients() == ["temp,advisory_lock"], what="client pinned")
        servers = [r for r in _admin(pooler, "SHOW SERVERS") if r["user"] == SCRAM_USER and r["pinned"]]
        assert [r["pinned"] for r in servers] == ["temp,advisory_lock"]
        assert _metric(pooler, "pg_doorman_pools_clients_pinned") == 1
        assert _metric(pooler, "pg_doorman_pools_pins_total") == pins_before + 1
        a.execute("DROP TABLE shown_t")
        a.execute("SELECT pg_advisory_unlock(7703)")
        wait_for(lambda: pinned_clients() == [""], what="client unpinned")
        assert _metric(pooler, "pg_doorman_pools_clients_pinned") == 0


# The leak checker: many clients run a random mix of session-state statements; each then looks for
# settings, temporary tables, locks, cursors and prepared statements and must find only its own.
def _leak_program(rng: random.Random, me: int) -> list[str]:
    ops = [
        lambda: f"SET application_name = 'leak{me}'",
        lambda: f"SELECT set_config('work_mem', '{64 + me}kB', false)",
        lambda: f"SET LOCAL lock_timeout = '{me + 1}s'",
        lambda: f"CREATE TEMP TABLE IF NOT EXISTS leak_t{me} ()",
        lambda: f"DROP TABLE IF EXISTS leak_t{me}",
        lambda: f"SELECT pg_advisory_lock({9000 + me})",
        lambda: "SELECT pg_advisory_unlock_all()",
        lambda: f"DECLARE leak_c{me} CURSOR WITH HOLD FOR SELECT 1",
        lambda: "CLOSE ALL",
        lambda: f"PREPARE leak_p{me} AS SELECT {me}",
        lambda: "DEALLOCATE ALL",
        lambda: "RESET ALL",
        lambda: "DISCARD ALL",
        lambda: f"SET leak.v = 'c{me}'",
        lambda: f"SELECT set_config('leak.c{me}', 'v{me}', false)",
        lambda: f"SET LOCAL leak.c{me} = 'local{me}'",
    ]
    return [rng.choice(ops)() for _ in range(12)]


LEAK_CHECK = (
    "SELECT current_setting('application_name'), current_setting('work_mem'), current_setting('lock_timeout'), "
    "(SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), "
    "(SELECT string_agg(objid::text, ',' ORDER BY objid) FROM pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_backend_pid()), (SELECT string_agg(name, ',' ORDER BY name) FROM pg_cursors), "
    "(SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements WHERE from_sql), "
    # Custom settings: the values; a name another client created reads '' on a server it used rather than NULL
    # (PostgreSQL cannot remove a placeholder: docs/transaction-mode.md), so NULL and '' are one here.
    "concat_ws(',', coalesce(current_setting('leak.v', true), ''), "
    + ", ".join(f"coalesce(current_setting('leak.c{i}', true), '')" for i in range(4)) + ")"
)


@pytest.mark.parametrize("seed", range(1, 7))
def test_no_client_sees_another_clients_state(pg: Any, pooler: Pooler, seed: int) -> None:
    rng = random.Random(seed)
    n = 4 if pooler.pool_size == 2 else 3  # type: ignore[attr-defined]
    programs = {f"c{i}": _leak_program(rng, i) for i in range(n)}
    steps: Steps = []
    cursors = {k: 0 for k in programs}
    while any(cursors[k] < len(v) for k, v in programs.items()):
        k = rng.choice([k for k in programs if cursors[k] < len(programs[k])])
        steps.append((k, programs[k][cursors[k]]))
        steps.append((k, LEAK_CHECK))
        cursors[k] += 1
    # pool_size 1 and 2 allow only so many pinned clients at once: release everything, then check all
    steps = _bounded(steps, pooler.pool_size)  # type: ignore[attr-defined]
    for k in programs:
        steps.append((k, LEAK_CHECK))
    compare(pg, pooler, "psycopg", steps)


def _bounded(steps: Steps, servers: int) -> Steps:
    """The steps with releases inserted so that at most `servers - 1` clients are pinned at once (others may
    still run): a pinned client holds its server as on PostgreSQL, and a client that waits for one would
    hang the sequential script."""
    out: Steps = []
    pinned: set[str] = set()
    for who, sql in steps:
        if _pins(sql) and who not in pinned:
            while len(pinned) >= servers - 1 and pinned:
                other = pinned.pop()
                out.extend(_release(other))
            if servers - 1 <= 0:
                continue  # pool_size 1: nobody may stay pinned; skip pinning statements
            pinned.add(who)
        out.append((who, sql))
        if who in pinned and sql == "DISCARD ALL":
            pinned.discard(who)
    for who in sorted(pinned):
        out.extend(_release(who))
    return out


def _pins(sql: str) -> bool:
    return sql.startswith(("CREATE TEMP", "SELECT pg_advisory_lock", "DECLARE", "PREPARE"))


def _release(who: str) -> Steps:
    return [(who, "DISCARD ALL")]


# transaction_pinning: refuse
REFUSED_STEPS: Steps = [
    ("a", "CREATE TEMP TABLE refused_t (a int)"),
    ("a", "SELECT pg_advisory_lock(7704)"),
    ("a", "DECLARE refused_c CURSOR WITH HOLD FOR SELECT 1"),
    ("a", "PREPARE refused_p AS SELECT 1"),
    ("a", "BEGIN"), ("a", "SELECT 1"), ("a", "CREATE TEMPORARY TABLE refused_t ()"), ("a", "SELECT 1"),
    ("a", "ROLLBACK"),
    ("a", "SELECT pg_advisory_xact_lock(7704), 'create temp table x'"),  # not pinning: runs
    # not recognised up front (inside a DO block): runs, and is cleaned at the end of the transaction
    ("a", "DO $$ BEGIN CREATE TEMP TABLE hidden_t (); END $$"),
    ("b", "SELECT to_regclass('refused_t') IS NULL, to_regclass('hidden_t') IS NULL"),
    ("a", "SELECT to_regclass('refused_t') IS NULL, to_regclass('hidden_t') IS NULL, "
          "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
          "(SELECT count(*) FROM pg_cursors WHERE is_holdable), "
          "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)"),
]


@pytest.mark.parametrize("driver", DRIVERS)
def test_refuse_policy(pg: Any, pooler_factory: Any, driver: str) -> None:
    """transaction_pinning: refuse: what would pin is refused with 0A000 before PostgreSQL sees it (simple
    queries and prepared statements), the transaction fails as PostgreSQL's own error would fail it, and what
    slips through is cleaned, not kept."""
    port = free_port()
    p = pooler_factory(start=False, pool_size=1, pool={"transaction_pinning": "refuse"})
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    p.start()
    p.web_port = port
    got = DRIVERS[driver](p.host, p.port, REFUSED_STEPS)
    codes = [r[3] if r[2] == "error" else "ok" for r in got]
    assert codes == ["0A000"] * 4 + ["ok", "ok", "0A000", "25P02", "ok", "ok", "ok", "ok", "ok"]
    assert got[-2][2] == [(True, True)]
    assert got[-1][2] == [(True, True, 0, 0, 0)]
    assert _metric(p, "pg_doorman_pools_pinning_refused_total") == 5
    assert _metric(p, "pg_doorman_pools_pins_total") == 0
    assert p.wait_for_log("transaction_pinning: refuse does not keep")
    with psycopg.connect(_dsn(p.host, p.port), autocommit=True) as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
            c.execute("create temp table t2 ()")
        assert ei.value.diag.message_primary == "temporary tables are not supported in transaction pooling mode"
        assert "transaction_pinning = refuse" in (ei.value.diag.message_hint or "")


def test_sql_execute_finds_a_protocol_prepared_statement(pg: Any, pooler: Pooler) -> None:
    """SQL EXECUTE of a statement the client prepared with a Parse finds it, as on PostgreSQL, on whichever
    server the client gets (pool_size 2: another client holds one server in between)."""
    answers = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", pooler.host, pooler.port)):
        got: list[Any] = []
        with WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as a, \
                WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as b:
            a.send(parse("plus1", "select $1::int + 1"), parse("Mixed", "select 'm' || $1"), sync())
            got.append([t for t, _ in a.read_until("Z")])
            for sql in ("EXECUTE plus1(41)", "  execute PLUS1 (1)", 'EXECUTE "Mixed"(\'x\')', "EXECUTE mixed('y')",
                        "EXECUTE nosuch", "BEGIN", "EXECUTE plus1(2)", "COMMIT"):
                if sql == "BEGIN" and pooler.pool_size == 2:  # type: ignore[attr-defined]
                    b.query("BEGIN")  # b holds a server: a's next transaction may run on the other one
                try:
                    got.append(a.query_rows(sql))
                except WireError as e:
                    got.append(e.fields.get("C"))
            b.query("COMMIT")
        answers[name] = got
    assert answers["pooled"] == answers["direct"]
    assert answers["direct"][1] == [["42"]]


# Custom (placeholder) settings: `myapp.user_id`, which pg_settings does not list. A client reads only the
# custom settings it set itself: one another client created reads '' on a server that client used, rather than
# undefined (PostgreSQL cannot remove a placeholder: a known difference), and a pooled server keeps the names of
# earlier tests, so each run names its own (`tag`).
def custom_steps(tag: str) -> Steps:
    a_show = ("SELECT current_setting('myapp.user_id@', true), current_setting('myapp.tenant@', true), "
              "current_setting('a.b.c@', true), current_setting('myapp.quoted@', true), "
              "current_setting('x.multi@', true), current_setting('x.never@', true)")
    b_show = "SELECT current_setting('myapp.user_id@', true), current_setting('myapp.tenant@', true)"
    steps: Steps = [
        ("b", "SET myapp.user_id@ = '7'"), ("b", "SELECT set_config('myapp.tenant@', 'b-tenant', false)"),
        ("a", "SET myapp.user_id@ = '42'"), ("a", "SELECT set_config('myapp.tenant@', 't1', false)"),
        ("a", a_show), ("b", b_show), ("a", "SHOW myapp.user_id@"), ("b", "SHOW myapp.user_id@"),
        ("a", "SHOW x.never@"),
        # SET LOCAL and set_config(..., true) end with the transaction, leaving the setting defined ('')
        ("a", "BEGIN"), ("a", "SET LOCAL a.b.c@ = 'local'"), ("a", a_show), ("a", "COMMIT"), ("a", a_show),
        ("a", "SELECT set_config('myapp.tenant@', 't2', true)"), ("a", a_show),
        # a rolled back SET or set_config is undone; a savepoint rolled back to as well
        ("a", "BEGIN"), ("a", "SET myapp.user_id@ = '43'"), ("a", "ROLLBACK"), ("a", a_show),
        ("a", "BEGIN"), ("a", "SELECT set_config('myapp.user_id@', '44', false)"), ("a", "ROLLBACK"),
        ("a", a_show),
        ("a", "BEGIN"), ("a", "SET myapp.user_id@ = '45'"), ("a", "SAVEPOINT s"), ("a", "SET myapp.user_id@ = '46'"),
        ("a", "ROLLBACK TO SAVEPOINT s"), ("a", "COMMIT"), ("a", a_show), ("b", b_show),
        ("a", "BEGIN"), ("a", "SET myapp.user_id@ = '47'"), ("a", "SELECT 1/0"), ("a", "COMMIT"), ("a", a_show),
        # quoted names (setting names are case-insensitive), several statements in one query
        ("a", """SET "MyApp"."Quoted@" = 'q'"""), ("a", a_show), ("a", "SELECT 1; SET x.multi@ = 'm'"),
        ("a", a_show),
        # RESET, SET ... TO DEFAULT, RESET ALL, DISCARD ALL: '' and still defined
        ("a", "RESET myapp.tenant@"), ("a", a_show), ("a", "SHOW myapp.tenant@"),
        ("a", "SET myapp.user_id@ TO DEFAULT"), ("a", a_show), ("b", b_show),
        ("a", "SET myapp.user_id@ = '50'"), ("a", "RESET ALL"), ("a", a_show),
        ("a", "SET myapp.user_id@ = '51'"), ("a", "DISCARD ALL"), ("a", a_show), ("b", b_show),
        ("b", "RESET ALL"), ("b", b_show), ("a", "SET myapp.user_id@ = '52'"), ("b", b_show), ("a", a_show),
    ]
    return [(who, sql.replace("@", tag)) for who, sql in steps]


def _tag() -> str:
    return f"_{random.randrange(10**9)}"


@pytest.mark.parametrize("driver", DRIVERS)
def test_custom_settings_follow_their_client(pg: Any, pooler: Pooler, driver: str) -> None:
    compare(pg, pooler, driver, custom_steps(_tag()))


def test_custom_settings_simple_query(pg: Any, pooler: Pooler) -> None:
    """The same over the simple query protocol (psql, client-side binding), where the texts are read as they pass
    (prepared statements are read once, in the pool's cache)."""
    compare_wire(pg, pooler, custom_steps(_tag()))


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "unnamed_parse"])
def test_custom_settings_prepared_statements_off(pg: Any, pooler_factory: Any, extended: bool) -> None:
    """Without prepared_statements, where Parse texts are read as they pass too (unnamed statements: named ones
    need prepared_statements in transaction mode)."""
    p = pooler_factory(pool_size=1, general={"prepared_statements": False})
    compare_wire(pg, p, custom_steps(_tag()), extended)


def compare_wire(pg: Any, p: Pooler, steps: Steps, extended: bool = False) -> None:
    """compare() on the wire (WireClient): simple queries, or unnamed Parse/Bind/Execute/Sync."""
    answers = {}
    for name, host, port in (("direct", pg.host, pg.port), ("pooled", p.host, p.port)):
        got: list[Any] = []
        with WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as a, \
                WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD) as b:
            for who, sql in steps:
                c = a if who == "a" else b
                if extended:
                    c.send(parse("", sql), bind(), execute(), sync())
                    msgs = c.read_until("Z")
                else:
                    msgs = c.query(sql)
                errors = [parse_fields(body).get("C") for t, body in msgs if t == "E"]
                got.append((who, sql, errors or rows(msgs)))
        answers[name] = got
    for d, q in zip(answers["direct"], answers["pooled"], strict=True):
        assert q == d, f"through pgdoorman {q!r}, on PostgreSQL {d!r}"


def test_custom_setting_named_by_a_parameter(pg: Any, pooler: Pooler) -> None:
    """set_config($1, $2, false) with the name as a parameter (psycopg's and asyncpg's server-side binding): the
    name is taken from each Bind (prepared statements on)."""
    tag = _tag()
    name_a, name_b = f"param.a{tag}", f"param.b{tag}"

    def run_psycopg_params(host: str, port: int) -> list[Any]:
        with psycopg.connect(_dsn(host, port), autocommit=True) as a, \
                psycopg.connect(_dsn(host, port), autocommit=True) as b:
            out: list[Any] = []
            for c, sql, args in ((a, "SELECT set_config(%s, %s, false)", (name_a, "a1")),
                                 (b, "SELECT set_config(%s, %s, false)", (name_b, "b1")),
                                 (a, "SELECT current_setting(%s, true)", (name_a,)),
                                 (b, "SELECT current_setting(%s, true)", (name_b,)),
                                 (a, "SELECT set_config(%s, %s, true)", (name_a, "local")),
                                 (a, "SELECT current_setting(%s, true)", (name_a,)),
                                 (a, "RESET ALL", None), (a, "SELECT current_setting(%s, true)", (name_a,)),
                                 (b, "SELECT current_setting(%s, true)", (name_b,))):
                cur = c.execute(sql, args)
                out.append(cur.fetchall() if cur.description else cur.statusmessage)
            return out

    async def run_asyncpg_params(host: str, port: int) -> list[Any]:
        conns = [await asyncpg.connect(host=host, port=port, user=SCRAM_USER, password=SCRAM_PASSWORD,
                                       database=DBNAME, ssl=False) for _ in range(2)]
        a, b = conns
        try:
            out: list[Any] = []
            for c, sql, args in ((a, "SELECT set_config($1, $2, false)", (name_a, "a2")),
                                 (b, "SELECT set_config($1, $2, false)", (name_b, "b2")),
                                 (a, "SELECT current_setting($1, true)", (name_a,)),
                                 (b, "SELECT current_setting($1, true)", (name_b,)),
                                 (b, "SELECT set_config($1, $2, false)", (name_b, "b3")),
                                 (a, "SELECT current_setting($1, true)", (name_a,)),
                                 (b, "SELECT current_setting($1, true)", (name_b,))):
                out.append(await c.fetchval(sql, *args))
            return out
        finally:
            for c in conns:
                await c.close()

    assert run_psycopg_params(pooler.host, pooler.port) == run_psycopg_params(pg.host, pg.port)
    direct = asyncio.run(run_asyncpg_params(pg.host, pg.port))
    assert asyncio.run(run_asyncpg_params(pooler.host, pooler.port)) == direct


def test_custom_startup_settings(pg: Any, pooler: Pooler) -> None:
    """options=-c myapp.x=...: the startup value follows the client, SET over it too, and RESET returns to it."""
    steps: Steps = [
        ("a", "SELECT current_setting('myapp.start', true)"), ("b", "SELECT current_setting('myapp.start', true)"),
        ("a", "SET myapp.start = 'changed'"), ("b", "SHOW myapp.start"), ("a", "SHOW myapp.start"),
        ("a", "RESET myapp.start"), ("b", "SHOW myapp.start"), ("a", "SHOW myapp.start"),
        ("a", "SELECT set_config('myapp.start', 'again', false)"), ("b", "SHOW myapp.start"),
        ("a", "SHOW myapp.start"), ("a", "RESET ALL"), ("b", "SHOW myapp.start"), ("a", "SHOW myapp.start"),
    ]
    opts = {"a": {"options": "'-c myapp.start=from-a'"}, "b": {"options": "'-c myapp.start=from-b'"}}
    compare(pg, pooler, "psycopg", steps, opts)


def test_deallocate_all_of_a_pinned_client(pg: Any, pooler: Pooler) -> None:
    """A simple-query DEALLOCATE ALL (answered by the pooler for protocol-level statements) deallocates the SQL
    PREPAREd statements of a client pinned by them, as on PostgreSQL, and unpins it."""
    steps: Steps = [
        ("a", "PREPARE dp AS SELECT 1"), ("a", "EXECUTE dp"), ("a", "DEALLOCATE ALL"),
        ("a", "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"), ("a", "EXECUTE dp"),
        ("a", "PREPARE dp AS SELECT 2"), ("a", "EXECUTE dp"), ("a", "DEALLOCATE ALL"), ("a", "DEALLOCATE ALL"),
        ("b", "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"),
        ("a", "SELECT count(*) FROM pg_prepared_statements WHERE from_sql"),
    ]
    compare_wire(pg, pooler, steps)
