"""startup_parameters end to end: general's and a pool's settings in every server's StartupMessage (they are
the servers' session defaults), an auth_query row's on top for its user, what is dropped and counted, and
53400 for a packet PostgreSQL would refuse."""

from __future__ import annotations

import http.client
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.test_auth_query import (
    CREATED,
    EXEC_USER,
    aq_section,
    connect,
    drop_test_roles,
    new_user,
    setup_cluster,
    show,
)
from tests.support.cluster import DBNAME, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, PgCluster
from tests.support.pooler import free_port

pytestmark = pytest.mark.timeout(120)

ROW_QUERY = "SELECT passwd, startup_parameters FROM public.aq_lookup_sp($1)"



@pytest.fixture(scope="module", autouse=True)
def _drop_roles_after(pg: PgCluster) -> Iterator[None]:
    yield
    drop_test_roles(pg)

def setup_rows(pg: PgCluster) -> None:
    setup_cluster(pg)
    pg.psql(f"""
CREATE TABLE IF NOT EXISTS public.aq_params (usename text PRIMARY KEY, sp jsonb);
CREATE OR REPLACE FUNCTION public.aq_lookup_sp(uname text) RETURNS TABLE (passwd text, startup_parameters jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT s.passwd, p.sp FROM pg_catalog.pg_shadow s LEFT JOIN public.aq_params p ON p.usename = s.usename
  WHERE s.usename = uname $$;
REVOKE ALL ON FUNCTION public.aq_lookup_sp(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.aq_lookup_sp(text) TO {EXEC_USER};
""", dbname=DBNAME)


def settings(c: psycopg.Connection[Any], *names: str) -> tuple[str, ...]:
    row = c.execute("select " + ", ".join(f"current_setting('{n}')" for n in names)).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_general_and_pool_levels(pg: PgCluster, pooler_factory: Any, mode: str) -> None:
    p = pooler_factory(pool_mode=mode, general={"startup_parameters": {"work_mem": "8MB", "lock_timeout": "7s"}},
                       pool={"startup_parameters": {"work_mem": "16MB", "statement_timeout": 12000}})
    with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
        assert settings(c, "work_mem", "lock_timeout", "statement_timeout") == ("16MB", "7s", "12s")
        c.execute("set work_mem = '1MB'")
        c.execute("reset all")  # back to the server's session defaults: the startup parameters
        assert settings(c, "work_mem") == ("16MB",)
    with connect(p, MD5_USER, MD5_PASSWORD, options="-c work_mem=2MB") as c:  # the client's own setting wins
        assert settings(c, "work_mem", "lock_timeout") == ("2MB", "7s")
    rows = {(r["user"], r["parameter"]): r for r in show(p, "STARTUP_PARAMETERS")}
    assert rows[(SCRAM_USER, "work_mem")]["value"] == "16MB" and rows[(SCRAM_USER, "work_mem")]["source"] == "pool"
    assert rows[(MD5_USER, "lock_timeout")]["source"] == "general"
    assert {r["state"] for r in rows.values()} == {"applied"}


def test_reload_replaces_servers(pg: PgCluster, pooler_factory: Any) -> None:
    p = pooler_factory(pool={"startup_parameters": {"work_mem": "16MB"}})
    with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
        assert settings(c, "work_mem") == ("16MB",)
    p.config["pools"][DBNAME]["startup_parameters"] = {"work_mem": "24MB"}
    p.write_config()
    with psycopg.connect(p.dsn("admin", "admin", "pgdoorman"), autocommit=True, prepare_threshold=None) as a:
        a.execute("RELOAD")
    with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
        assert settings(c, "work_mem") == ("24MB",)


def test_auth_query_row_level(pg: PgCluster, pooler_factory: Any) -> None:
    setup_rows(pg)
    good, good_pw = new_user(pg, "scram-sha-256")
    bad, bad_pw = new_user(pg, "md5")
    pg.psql(f"""INSERT INTO public.aq_params VALUES
        ('{good}', '{{"work_mem": "32MB", "bad name!": 1, "user": "x", "deep": {{"a": 1}}}}'),
        ('{bad}', '[1, 2]')""", dbname=DBNAME)
    port = free_port()
    p = pooler_factory(start=False, pool={"startup_parameters": {"work_mem": "16MB", "lock_timeout": "7s"},
                                          "auth_query": aq_section(query=ROW_QUERY)})
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    p.start()
    with connect(p, good, good_pw) as c:
        assert settings(c, "work_mem", "lock_timeout") == ("32MB", "7s")
    with connect(p, bad, bad_pw) as c:  # its row is not an object: the pool's settings only
        assert settings(c, "work_mem") == ("16MB",)
    rows = {(r["user"], r["parameter"]): r for r in show(p, "STARTUP_PARAMETERS")}
    assert rows[(good, "work_mem")]["source"] == "auth_query" and rows[(good, "lock_timeout")]["source"] == "pool"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for line in (f'pg_doorman_startup_parameters_dropped_total{{pool="{DBNAME}",reason="auth_query_invalid_entry"}} 2',
                 f'pg_doorman_startup_parameters_dropped_total{{pool="{DBNAME}",reason="auth_query_bad_type"}} 1',
                 f'pg_doorman_startup_parameters_dropped_total{{pool="{DBNAME}",reason="auth_query_invalid_shape"}} 1'):
        assert line in text, (line, [x for x in text.splitlines() if "startup" in x])


def test_dedicated_mode_drops_row_settings(pg: PgCluster, pooler_factory: Any) -> None:
    setup_rows(pg)
    user, pw = new_user(pg, "md5")
    pg.psql(f"""INSERT INTO public.aq_params VALUES ('{user}', '{{"work_mem": "32MB"}}')""", dbname=DBNAME)
    p = pooler_factory(users=[], pool={"startup_parameters": {"work_mem": "16MB"}, "auth_query": aq_section(
        query=ROW_QUERY, server_user=SCRAM_USER, server_password=SCRAM_PASSWORD)})
    with connect(p, user, pw) as c:
        assert settings(c, "work_mem") == ("16MB",)


def test_packet_too_big_is_53400(pg: PgCluster, pooler_factory: Any) -> None:
    """The config check counts the static users' names; an auth_query user with a long name can still
    overflow the packet: its login gets 53400."""
    setup_rows(pg)
    user = ("aq_long_" + uuid.uuid4().hex * 2)[:63]
    pg.create_role(user, "long_pw", "md5")
    CREATED.append(user)  # dropped with the others when the module ends
    pg.psql(f"GRANT CONNECT ON DATABASE {DBNAME} TO {user};")
    users = [{"username": "u", "password": "x", "server_username": SCRAM_USER, "server_password": SCRAM_PASSWORD,
              "pool_size": 1}]
    # 9,900 bytes of settings (4,900 + 5,000, each level under its 9,488): with user app_scram the packet is
    # 9,965 bytes, with a 63-byte user name 10,019, over PostgreSQL's 10,000.
    p = pooler_factory(users=users, general={"startup_parameters": {"search_path": "x" * 4887}},
                       pool={"startup_parameters": {"myapp.note": "y" * 4988}, "auth_query": aq_section()})
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(p, user, "long_pw").close()
    assert "startup parameters do not fit in a startup packet" in str(ei.value)


def test_log_client_parameter_status_changes(pg: PgCluster, pooler_factory: Any) -> None:
    p = pooler_factory(pool={"log_client_parameter_status_changes": True})
    with connect(p, SCRAM_USER, SCRAM_PASSWORD) as c:
        c.execute("set application_name = 'billing-report'")
        c.execute("set work_mem = '9MB'")  # not a reported setting: nothing to log
    assert p.wait_for_log("application_name changed to 'billing-report'")
    assert "work_mem changed" not in p.log()
    q = pooler_factory()  # off by default
    with connect(q, SCRAM_USER, SCRAM_PASSWORD) as c:
        c.execute("set application_name = 'quiet'")
    assert "changed to 'quiet'" not in q.log()
