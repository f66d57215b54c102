"""auth_query end to end: users not in the config are looked up in PostgreSQL with a SECURITY DEFINER
function over pg_shadow (as PgDoorman's docs show), created at test time with their own roles; the pooler
runs as a subprocess. Every lookup the function answers is counted in a table, so the tests count the
queries on the PostgreSQL side."""

from __future__ import annotations

import asyncio
import http.client
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support.cluster import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    DBNAME,
    SCRAM_PASSWORD,
    SCRAM_USER,
    PgCluster,
    throwaway_cluster,
)
from tests.support.pooler import free_port, wait_for

pytestmark = pytest.mark.timeout(180)

EXEC_USER = "aq_exec"
EXEC_PASSWORD = "aq_exec_pw"
QUERY = "SELECT usename, passwd FROM public.aq_lookup($1)"

SETUP = f"""
CREATE TABLE IF NOT EXISTS public.aq_calls (usename text, at timestamptz DEFAULT now());
CREATE OR REPLACE FUNCTION public.aq_lookup(uname text) RETURNS TABLE (usename name, passwd text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO public.aq_calls (usename) VALUES (uname);
  RETURN QUERY SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s WHERE s.usename = uname;
END $$;
REVOKE ALL ON FUNCTION public.aq_lookup(text) FROM PUBLIC;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{EXEC_USER}') THEN
    SET password_encryption = 'scram-sha-256';
    CREATE ROLE {EXEC_USER} LOGIN PASSWORD '{EXEC_PASSWORD}';
  END IF;
END $$;
GRANT EXECUTE ON FUNCTION public.aq_lookup(text) TO {EXEC_USER};
"""


def setup_cluster(pg: PgCluster) -> None:
    pg.psql(SETUP, dbname=DBNAME)


@pytest.fixture(scope="module")
def aq_pg(pg: PgCluster) -> Iterator[PgCluster]:
    setup_cluster(pg)
    yield pg
    drop_test_roles(pg)


# Roles new_user() made (here and in test_startup_parameters.py): dropped when the module ends, so that later
# tests that list the cluster's roles (pg_doorman generate) see only the suite's own users.
CREATED: list[str] = []


def new_user(pg: PgCluster, method: str = "scram-sha-256", prefix: str = "aq") -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    password = f"pw_{uuid.uuid4().hex[:8]}"
    pg.create_role(name, password, method)
    CREATED.append(name)
    pg.psql(f"GRANT CONNECT ON DATABASE {DBNAME} TO {name};")
    return name, password


def drop_test_roles(pg: PgCluster) -> None:
    """Drop the roles new_user() made and the executor role, with their privileges (DROP OWNED)."""
    for name in [*CREATED, EXEC_USER]:
        pg.psql(f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN "
                f"EXECUTE 'DROP OWNED BY {name}'; EXECUTE 'DROP ROLE {name}'; END IF; END $$;", dbname=DBNAME)
    CREATED.clear()


def calls(pg: PgCluster, user: str | None = None, prefix: str | None = None) -> int:
    where = f"usename = '{user}'" if user else f"usename LIKE '{prefix}%'"
    return int(pg.psql(f"SELECT count(*) FROM public.aq_calls WHERE {where}", dbname=DBNAME))


def aq_section(**kw: Any) -> dict[str, Any]:
    return {"query": QUERY, "user": EXEC_USER, "password": EXEC_PASSWORD, "workers": 2, **kw}


def connect(p: Any, user: str, password: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(user, password, DBNAME), autocommit=True, connect_timeout=10, **kw)


def admin(p: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgdoorman"), autocommit=True, prepare_threshold=None)


def show(p: Any, what: str) -> list[dict[str, Any]]:
    with admin(p) as a:
        cur = a.execute(f"SHOW {what}")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def aq_row(p: Any) -> dict[str, Any]:
    (row,) = [r for r in show(p, "AUTH_QUERY") if r["database"] == DBNAME]
    return row


def refused(p: Any, user: str, password: str) -> str:
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, user, password).close()
    return str(ei.value)


# ------------------------------------------------------------------------------------------ passthrough
@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_passthrough_scram_and_md5(aq_pg: PgCluster, pooler_factory: Any, mode: str) -> None:
    scram_user, scram_pw = new_user(aq_pg, "scram-sha-256")
    md5_user, md5_pw = new_user(aq_pg, "md5")
    p = pooler_factory(pool_mode=mode, pool={"auth_query": aq_section(pool_size=3)})
    for user, pw in ((scram_user, scram_pw), (md5_user, md5_pw)):
        with connect(p, user, pw) as c:  # psycopg (libpq)
            assert c.execute("select current_user").fetchone() == (user,)
            assert c.execute("select %s::int + 1", (41,)).fetchone() == (42,)

        async def run(user: str = user, pw: str = pw) -> None:  # asyncpg: its own SCRAM/md5 code
            conn = await asyncpg.connect(host=p.host, port=p.port, user=user, password=pw, database=DBNAME,
                                         ssl=False)
            try:
                assert await conn.fetchval("select current_user") == user
                stmt = await conn.prepare("select $1::int * 2")
                assert await stmt.fetchval(21) == 42
            finally:
                await conn.close()

        asyncio.run(run())
        # Each user was looked up once: the second and third logins came from the cache.
        assert calls(aq_pg, user) == 1
    # psql (libpq's own binary, not Python)
    psql = os.path.join(aq_pg.bindir, "psql")
    out = subprocess.run([psql, "-X", "-At", "-h", p.host, "-p", str(p.port), "-U", md5_user, "-d", DBNAME,
                          "-c", "select current_user"], capture_output=True, text=True, timeout=30,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                              "PGPASSWORD": md5_pw, "PGSSLMODE": "disable"})
    assert out.stdout.strip() == md5_user, out.stderr
    # Wrong password, unknown user: the same 28P01 (nothing says which).
    wrong = refused(p, scram_user, "nope")
    unknown = refused(p, "aq_nobody_" + mode, "nope")
    assert 'password authentication failed for user "' in wrong and 'password authentication failed' in unknown
    row = aq_row(p)
    assert row["auth_success"] == 5 and row["auth_failure"] == 2
    assert row["cache_hits"] >= 3 and row["executor_queries"] == 3 and row["executor_errors"] == 0
    assert row["dynamic_pools_current"] == 2 and row["dynamic_pools_created"] == 2
    pools = {(r["database"], r["user"]): r for r in show(p, "POOLS")}
    assert pools[(DBNAME, scram_user)]["pool_size"] == 3 and pools[(DBNAME, scram_user)]["pool_mode"] == mode


def test_dedicated_mode(aq_pg: PgCluster, pooler_factory: Any) -> None:
    u1, pw1 = new_user(aq_pg, "scram-sha-256")
    u2, pw2 = new_user(aq_pg, "md5")
    port = free_port()
    p = pooler_factory(start=False, pool_mode="session", users=[], pool={"auth_query": aq_section(
        server_user=SCRAM_USER, server_password=SCRAM_PASSWORD, pool_size=2)})
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    p.start()
    for user, pw in ((u1, pw1), (u2, pw2)):
        with connect(p, user, pw) as c:  # PostgreSQL sees server_user; the pooler knows the client's name
            assert c.execute("select current_user").fetchone() == (SCRAM_USER,)

        async def run(user: str = user, pw: str = pw) -> None:
            conn = await asyncpg.connect(host=p.host, port=p.port, user=user, password=pw, database=DBNAME,
                                         ssl=False)
            try:
                assert await conn.fetchval("select current_user") == SCRAM_USER
            finally:
                await conn.close()

        asyncio.run(run())
    assert "password authentication failed" in refused(p, u1, pw2)
    dyn = [r for r in show(p, "POOLS") if r["database"] == DBNAME]
    assert [r["user"] for r in dyn] == [SCRAM_USER]  # one shared pool
    assert aq_row(p)["dynamic_pools_created"] == 1
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in ('pg_doorman_auth_query_dynamic_pools_total{type="created",database="app"} 1',
                 'pg_doorman_auth_query_auth_total{result="success",database="app"} 4',
                 'pg_doorman_auth_query_auth_total{result="failure",database="app"} 1',
                 'pg_doorman_auth_query_executor_total{type="queries",database="app"} 2',
                 'pg_doorman_auth_query_cache{type="entries",database="app"} 2'):
        assert line in text, (line, [x for x in text.splitlines() if "auth_query" in x])


def test_static_user_wins(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, pw = new_user(aq_pg, "scram-sha-256")
    static = [{"username": user, "password": "static_pw", "server_username": SCRAM_USER,
               "server_password": SCRAM_PASSWORD, "pool_size": 2}]
    p = pooler_factory(users=static, pool={"auth_query": aq_section()})
    with connect(p, user, "static_pw") as c:
        assert c.execute("select current_user").fetchone() == (SCRAM_USER,)
    assert "password authentication failed" in refused(p, user, pw)  # its PostgreSQL password: not looked up
    assert calls(aq_pg, user) == 0


def test_concurrent_first_logins_coalesce(aq_pg: PgCluster, pooler_factory: Any) -> None:
    prefix = f"aqc{uuid.uuid4().hex[:6]}"
    users = [new_user(aq_pg, "md5" if i % 2 else "scram-sha-256", prefix=prefix) for i in range(20)]
    p = pooler_factory(pool={"auth_query": aq_section(pool_size=2)},
                       general={"worker_threads": 2, "max_connections": 1000})

    async def one(user: str, pw: str) -> None:
        conn = await asyncpg.connect(host=p.host, port=p.port, user=user, password=pw, database=DBNAME,
                                     ssl=False, timeout=30)
        await conn.close()

    async def storm() -> None:
        await asyncio.gather(*(one(u, pw) for _ in range(10) for u, pw in users))

    asyncio.run(storm())
    assert calls(aq_pg, prefix=prefix) == 20  # 200 logins, 20 users: one query each
    row = aq_row(p)
    assert row["executor_queries"] == 20 and row["auth_success"] == 200


def test_password_rotation_without_reload(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, pw = new_user(aq_pg, "scram-sha-256")
    p = pooler_factory(pool={"auth_query": aq_section(min_interval="100ms")})
    with connect(p, user, pw) as c:
        c.execute("select 1")
    aq_pg.psql(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {user} PASSWORD 'rotated_pw';")
    time.sleep(0.15)
    # The cached verifier is the old one: this login fails and lets the next one fetch the new verifier.
    refused(p, user, "rotated_pw")
    with connect(p, user, "rotated_pw") as c:  # logs in to PostgreSQL with the new one too
        assert c.execute("select current_user").fetchone() == (user,)
    assert "password authentication failed" in refused(p, user, pw)
    row = aq_row(p)
    assert row["cache_refetches"] >= 1 and calls(aq_pg, user) == 2


def test_min_interval_rate_limits_refetches(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, pw = new_user(aq_pg, "md5")
    p = pooler_factory(pool={"auth_query": aq_section(min_interval="1h")})
    with connect(p, user, pw):
        pass
    for _ in range(3):
        refused(p, user, "wrong")
    row = aq_row(p)
    assert calls(aq_pg, user) == 1 and row["cache_rate_limited"] == 3 and row["cache_refetches"] == 0


def test_killed_executor_recovers(aq_pg: PgCluster, pooler_factory: Any) -> None:
    p = pooler_factory(pool={"auth_query": aq_section(workers=1)})
    u1, pw1 = new_user(aq_pg, "md5")
    with connect(p, u1, pw1):
        pass
    # Every executor backend (a pooler of an earlier test may still be leaving): at least ours.
    killed = aq_pg.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'pg_doorman_auth_query'")
    assert int(killed) >= 1
    u2, pw2 = new_user(aq_pg, "scram-sha-256")
    with connect(p, u2, pw2) as c:  # the executor notices its dead connection and opens another
        assert c.execute("select current_user").fetchone() == (u2,)
    assert aq_row(p)["executor_errors"] == 0


def test_stopped_postgres_then_recovers(pooler_factory: Any, tmp_path: Any) -> None:
    with throwaway_cluster() as pg2:
        setup_cluster(pg2)
        u1, pw1 = new_user(pg2, "md5")
        u2, pw2 = new_user(pg2, "scram-sha-256")
        p = pooler_factory(users=[], pool={"server_port": pg2.port, "server_host": pg2.host,
                                           "auth_query": aq_section()},
                           general={"connect_timeout": 1000})
        with connect(p, u1, pw1):
            pass
        pg2.stop("fast")
        # Not cached: the lookup fails and the client gets 28P01 (nothing says why); the log says why, once.
        for _ in range(3):
            assert "password authentication failed" in refused(p, u2, pw2)
        # Cached: authenticated; then no server for its query.
        with pytest.raises(psycopg.OperationalError) as ei, connect(p, u1, pw1) as c:
            c.execute("select 1")
        assert ei.value.sqlstate == "08006", ei.value
        log = p.log()
        assert log.count("auth_query of pool 'app': could not connect") == 1, log
        assert aq_row(p)["executor_errors"] >= 1
        pg2.start()
        time.sleep(1.1)  # the executor's back-off after a failed connect

        def ok() -> bool:
            try:
                with connect(p, u2, pw2) as c:
                    return c.execute("select current_user").fetchone() == (u2,)
            except psycopg.OperationalError:
                return False

        wait_for(ok, timeout=20, what="a login after PostgreSQL came back")


def test_dynamic_pool_collected_when_unused(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, pw = new_user(aq_pg, "scram-sha-256")
    p = pooler_factory(pool={"auth_query": aq_section()},
                       general={"retain_connections_time": 300, "idle_timeout": 300})
    c = connect(p, user, pw)
    c.execute("select 1")
    time.sleep(2.5)  # in use: kept although idle_timeout closed its server long ago
    assert any(r["user"] == user for r in show(p, "POOLS"))
    c.close()
    wait_for(lambda: not any(r["user"] == user for r in show(p, "POOLS")), timeout=20,
             what="the unused dynamic pool to be collected")
    row = aq_row(p)
    assert row["dynamic_pools_destroyed"] == 1 and row["dynamic_pools_current"] == 0
    with connect(p, user, pw) as c2:  # comes back on the next login
        assert c2.execute("select current_user").fetchone() == (user,)


def test_min_pool_size_pool_is_kept(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, pw = new_user(aq_pg, "md5")
    p = pooler_factory(pool={"auth_query": aq_section(min_pool_size=1)},
                       general={"retain_connections_time": 300, "idle_timeout": 300})
    with connect(p, user, pw):
        pass
    time.sleep(4)
    assert any(r["user"] == user for r in show(p, "POOLS"))
    assert aq_row(p)["dynamic_pools_destroyed"] == 0


def test_static_logins_not_stalled_by_a_slow_executor(aq_pg: PgCluster, pooler_factory: Any) -> None:
    """An auth_query that hangs (pg_sleep) holds its executors, never a worker: static users log in."""
    aq_pg.psql("CREATE OR REPLACE FUNCTION public.aq_slow(uname text) RETURNS TABLE (usename name, passwd text) "
               "LANGUAGE sql SECURITY DEFINER AS $$ SELECT NULL::name, NULL::text FROM pg_sleep(3) $$; "
               f"GRANT EXECUTE ON FUNCTION public.aq_slow(text) TO {EXEC_USER};", dbname=DBNAME)
    p = pooler_factory(pool={"auth_query": aq_section(query="SELECT * FROM public.aq_slow($1)", workers=1)},
                       general={"worker_threads": 1})
    errors: list[str] = []

    def slow_login() -> None:
        errors.append(refused(p, "aq_slow_user", "x"))

    th = threading.Thread(target=slow_login)
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
        c.execute("select 1")
    assert time.monotonic() - t0 < 1.5
    th.join(30)
    assert errors and "password authentication failed" in errors[0]


def test_reload_drops_the_cache(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, pw = new_user(aq_pg, "md5")
    p = pooler_factory(pool={"auth_query": aq_section()})
    with connect(p, user, pw):
        pass
    with admin(p) as a:
        a.execute("RELOAD")
    with connect(p, user, pw) as c:  # looked up again; the unchanged section keeps its dynamic pool
        assert c.execute("select current_user").fetchone() == (user,)
    row = aq_row(p)
    assert calls(aq_pg, user) == 2 and row["dynamic_pools_created"] == 1 and row["dynamic_pools_destroyed"] == 0


def test_pg_hba_applies_to_looked_up_users(aq_pg: PgCluster, pooler_factory: Any) -> None:
    rejected, rpw = new_user(aq_pg, "scram-sha-256")
    md5_user, mpw = new_user(aq_pg, "md5")
    scram_user, spw = new_user(aq_pg, "scram-sha-256")
    hba = (f"host all {rejected} 127.0.0.1/32 reject\n"
           "host all all 127.0.0.1/32 scram-sha-256\n")
    p = pooler_factory(general={"pg_hba": hba}, pool={"auth_query": aq_section()})
    assert "pg_hba.conf rejects connection" in refused(p, rejected, rpw)
    # A stored md5 hash needs an md5 rule, as for a static md5 user.
    assert "no pg_hba.conf entry" in refused(p, md5_user, mpw)
    with connect(p, scram_user, spw) as c:
        assert c.execute("select current_user").fetchone() == (scram_user,)
