"""A search_path that puts pg_temp first makes `CREATE TABLE t` a temporary table, with no TEMP in its text:
what leaks.py's keywords cannot see. Through a transaction-mode pool that table stayed on the server, which the
next client got (it read the rows of another client's table, `select * from t` finding pg_temp first); the
client that made it lost it when its next transaction went to another server. Now the end-of-transaction check
(core/txstate.py's PINS_QUERY, `temp_path`) keeps such a client on its server while its search_path creates in
pg_temp (found by test_state_random's `set search_path = pg_temp, public` step with its DDL steps).

The same steps run directly on PostgreSQL and through pgdoorman, in both modes, pool_size 1 and 2, clients A and
B with different settings; the search_path set by SET or given at startup.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.test_transparency import SETTINGS_A, connect
from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SUPERUSER
from tests.support.relay import GateProxy
from tests.support.wire import WireClient, WireError

pytestmark = pytest.mark.timeout(120)

OTHER = {"DateStyle": "SQL, MDY", "TimeZone": "Asia/Tokyo", "work_mem": "9MB", "application_name": "bee"}
COUNT = "select count(*) from tsp_t"


def _q(c: WireClient, sql: str) -> Any:
    try:
        return c.query_rows(sql)
    except WireError as e:
        return ("E", e.fields.get("C"))


def _a(host: str, port: int, startup: bool) -> WireClient:
    if startup:
        return connect(host, port, {**SETTINGS_A, "search_path": "pg_temp, public"})
    a = connect(host, port, SETTINGS_A)
    a.query_rows("set search_path = pg_temp, public")
    return a


def _both(host: str, port: int, startup: bool) -> list[Any]:
    """Pool of 2: A's table while A is still there, for A and for B."""
    b = connect(host, port, OTHER)
    a = _a(host, port, startup)
    got = [_q(a, "create table tsp_t (x int)"), _q(a, "insert into tsp_t values (1)")]
    got += [_q(b, COUNT), _q(b, "show search_path"), _q(b, "show work_mem")]  # (B: no such table)
    got += [_q(a, COUNT), _q(a, "select relpersistence from pg_class where oid = 'tsp_t'::regclass")]
    got += [_q(b, COUNT), _q(a, "insert into tsp_t values (2)"), _q(a, COUNT)]
    got += [_q(a, "drop table tsp_t"), _q(a, "set search_path = public"), _q(a, "show search_path")]
    got += [_q(b, COUNT), _q(a, COUNT)]
    a.close()
    b.close()
    return got


def _after(host: str, port: int, startup: bool) -> list[Any]:
    """Pool of 1: A makes its table and leaves; B, on the one server, finds none."""
    a = _a(host, port, startup)
    got = [_q(a, "create table tsp_t (x int)"), _q(a, "insert into tsp_t values (1)"), _q(a, COUNT)]
    a.close()
    with connect(host, port, OTHER) as b:
        got += [_q(b, COUNT), _q(b, "show search_path"), _q(b, "show timezone")]
        got += [_q(b, "select count(*) from pg_class where relnamespace = pg_my_temp_schema()")]
    return got


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("startup", [False, True], ids=["set", "startup"])
@pytest.mark.parametrize("size", [1, 2])
def test_a_table_created_in_pg_temp_by_its_search_path_stays_the_clients_own(
        pg: Any, pooler_factory: Any, mode: str, startup: bool, size: int) -> None:
    p = pooler_factory(pool_mode=mode, pool_size=size, general={"query_wait_timeout": 20000})
    run = _both if size == 2 else _after
    direct = run(pg.host, pg.port, startup)
    pooled = run(p.host, p.port, startup)
    assert pooled == direct
    assert direct[2 if size == 2 else 3] == ("E", "42P01")  # (B has no such table on PostgreSQL)


@pytest.mark.parametrize("startup", [False, True], ids=["set", "startup"])
def test_transaction_pinning_refuse_keeps_such_a_client_too(pg: Any, pooler_factory: Any, startup: bool) -> None:
    """`transaction_pinning: refuse` refuses what it recognises up front (CREATE TEMP ...); a table made in
    pg_temp by the search_path is found only afterwards, where the cleanup it does for the rest would not change
    the search_path: the client keeps its server as with `allow`, not another client's table."""
    p = pooler_factory(pool_mode="transaction", pool_size=2, pool={"transaction_pinning": "refuse"},
                       general={"query_wait_timeout": 20000})
    assert _both(p.host, p.port, startup) == _both(pg.host, pg.port, startup)


def test_a_search_path_with_pg_temp_last_does_not_pin(pg: Any, pooler_factory: Any) -> None:
    """`public, pg_temp` (the hardening PostgreSQL's docs advise) creates in public: the client moves freely
    between servers as before; the pin check sees no reason to keep it (SHOW CLIENTS' pinned column). The
    paths whose first existing schema is pg_temp pin."""
    p = pooler_factory(pool_mode="transaction", pool_size=2)
    pinned = []
    # (A schema that does not exist is skipped by CREATE, as "$user" is when no schema has the role's name: pg_temp
    # is then the first; PostgreSQL creates there, checked directly.)
    for path in ("public, pg_temp", "pg_temp, public", "nosuch, pg_temp", '"$user", pg_temp', "pg_catalog, pg_temp"):
        with connect(p.host, p.port, SETTINGS_A) as a:
            a.query_rows(f"set search_path = {path}")
            a.query_rows("select 1")
            with psycopg.connect(p.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman"), autocommit=True,
                                 prepare_threshold=None) as adm:
                cur = adm.execute("show clients")
                assert cur.description is not None
                i = [d.name for d in cur.description].index("pinned")
                pinned.append([r[i] for r in cur.fetchall() if r[i] is not None])
    assert pinned == [[""], ["temp_path"], ["temp_path"], ["temp_path"], [""]], pinned


def _own_equals(pg: Any) -> None:
    """A schema with an `=` for oids that is always false, which any role may put in its search_path (a role
    with CREATE on a schema can make one)."""
    with WireClient.connect(pg.host, pg.port, SUPERUSER, DBNAME, None) as su:
        su.query_rows("drop schema if exists tsp_ops cascade; create schema tsp_ops; grant usage on schema tsp_ops "
                      "to public; create function tsp_ops.never(oid, oid) returns bool language sql immutable "
                      "as 'select false'; create operator tsp_ops.= (leftarg = oid, rightarg = oid, "
                      "function = tsp_ops.never)")


def _hidden(host: str, port: int) -> list[Any]:
    a = connect(host, port, SETTINGS_A)
    got = [_q(a, "set search_path = tsp_ops, pg_catalog, public"), _q(a, "create temp table tsp_t (x int)"),
           _q(a, "insert into tsp_t values (1)"), _q(a, COUNT)]
    a.close()
    with connect(host, port, OTHER) as b:
        got += [_q(b, COUNT), _q(b, "show search_path")]
    return got


def test_the_pin_check_does_not_use_the_clients_operators(pg: Any, pooler_factory: Any) -> None:
    """The pin check runs under the client's search_path: with an `=` of the client's before pg_catalog's, a
    check written with a bare `=` found no temporary table, and the table reached the next client of the one
    server (B read A's row). Its operators are named with their schema (core/txstate.py)."""
    _own_equals(pg)
    p = pooler_factory(pool_mode="transaction", pool_size=1, general={"query_wait_timeout": 20000})
    direct = _hidden(pg.host, pg.port)
    assert _hidden(p.host, p.port) == direct
    assert direct[4] == ("E", "42P01")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_role_default_search_path_with_pg_temp_first(pg: Any, pooler_factory: Any, mode: str) -> None:
    """`ALTER ROLE ... SET search_path = pg_temp, public`: every session of the role creates in pg_temp, its
    startup packet and its text saying nothing. PostgreSQL 18 reports search_path at login, so the pool's
    reported settings carry it and the client's first transaction is checked (login.py); before 18 a server
    of a transaction-mode pool reads it once at login (`SHOW search_path`, server.py) for the same check
    (`make test-pg-newest` runs this on 18 in CI). Pool of 1: B, the same role, finds no table of A's."""
    pg.psql("ALTER ROLE app_scram IN DATABASE app SET search_path = pg_temp, public")
    try:
        p = pooler_factory(pool_mode=mode, pool_size=1, general={"query_wait_timeout": 20000})
        direct = _role_default(pg.host, pg.port)
        pooled = _role_default(p.host, p.port)
    finally:
        pg.psql("ALTER ROLE app_scram IN DATABASE app RESET search_path")
    assert pooled == direct
    assert direct[0] == [["pg_temp, public"]] and direct[5] == ("E", "42P01")


def _role_default(host: str, port: int) -> list[Any]:
    a = connect(host, port, {k: v for k, v in SETTINGS_A.items() if k != "search_path"})
    got = [_q(a, "show search_path"), _q(a, "create table tsp_t (x int)"), _q(a, "insert into tsp_t values (1)")]
    got += [_q(a, COUNT), _q(a, "select relpersistence from pg_class where oid = 'tsp_t'::regclass")]
    a.close()
    with connect(host, port, OTHER) as b:
        got += [_q(b, COUNT), _q(b, "show search_path"), _q(b, "show timezone")]
    return got


def test_a_server_lost_while_its_login_reads_search_path_frees_its_slot(pg: Any, pooler_factory: Any) -> None:
    """Before 18 a transaction-mode server's login ends with `SHOW search_path` (server.py). A server lost then
    (here: the relay cuts it) must give its slot back and a new server must open for the waiting client; the
    slot was lost for good at first (pool of 1: every client waited out query_wait_timeout)."""
    with connect(pg.host, pg.port) as c:
        if "search_path" in c.parameters:
            pytest.skip(f"PostgreSQL {c.parameters['server_version']} reports search_path: no read at login (before "
                        "18 only; the main run's PostgreSQL 15 runs this)")
    relay = GateProxy(pg.host, pg.port)
    relay.cut_after_login()
    try:
        p = pooler_factory(pool_mode="transaction", pool_size=1, general={"query_wait_timeout": 10000},
                           pool={"server_port": relay.port})
        for n in range(2):
            with connect(p.host, p.port) as c:
                assert c.query_rows(f"select {n}") == [[str(n)]]
    finally:
        relay.close()
