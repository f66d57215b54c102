"""The JSON API's views beyond one SHOW each (top lists, apps, one statement's text, the process, the sign-in
facts) on a pooler subprocess: each compared with the SHOW rows it is made of, taken on the same pooler
while nothing moves, and the access each role gets."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_admin import admin, client, show
from tests.integration.test_auth_query import aq_section, drop_test_roles, new_user, setup_cluster
from tests.integration.test_auth_query import connect as aq_connect
from tests.integration.test_auth_query import refused as aq_refused
from tests.integration.test_jwt import keypair, token
from tests.integration.test_web_api import PASSWORD, comparable, get, request, web_pooler
from tests.support.cluster import ADMIN_USER, DBNAME, SCRAM_USER, PgCluster

pytestmark = pytest.mark.timeout(180)


def fresh_window() -> None:
    time.sleep(1.05)  # the API's next read takes a new snapshot


def test_top_lists_and_apps_are_the_show_rows(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory, pool_size=2)
    with admin(p, password=PASSWORD) as a, client(p, application_name="app-a") as c1, \
            client(p, application_name="app-a") as c2, client(p, application_name="app-b") as c3:
        for _ in range(3):
            c1.execute("SELECT 1").fetchall()
        c2.execute("SELECT %s::int * 2", (1,), prepare=True).fetchall()
        c2.execute("SELECT %s::int * 2", (2,), prepare=True).fetchall()
        with pytest.raises(psycopg.errors.DivisionByZero):
            c3.execute("SELECT 1/0")
        time.sleep(0.2)
        fresh_window()
        _, clients = show(a, "CLIENTS")
        _, prepared = show(a, "PREPARED_STATEMENTS")
        ours = [r for r in clients if r["application_name"] in ("app-a", "app-b")]
        assert len(ours) == 3

        top = get(port, "top/clients?n=50")
        want = [{"client_id": r["client_id"], "application_name": r["application_name"], "user": r["user"],
                 "database": r["database"], "addr": r["addr"], "queries_total": r["query_count"],
                 "errors_total": r["error_count"]} for r in clients]
        got = [{k: v for k, v in r.items() if k not in ("age_seconds", "qps")} for r in top["rows"]]
        assert comparable(got) == comparable(want)
        assert [c["name"] for c in top["columns"]] == ["client_id", "application_name", "user", "database", "addr",
                                                       "age_seconds", "queries_total", "errors_total", "qps"]
        qps = [r["qps"] for r in top["rows"]]
        assert qps == sorted(qps, reverse=True)
        by_errors = get(port, "top/clients?by=errors&n=1")["rows"]
        assert len(by_errors) == 1 and by_errors[0]["application_name"] == "app-b" and by_errors[0]["errors_total"] == 1
        assert get(port, f"top/clients?pool={SCRAM_USER}@{DBNAME}&n=50")["rows"] == top["rows"]
        assert get(port, f"top/clients?pool=nobody@{DBNAME}")["rows"] == []
        assert request(port, "/api/top/clients?by=nope")[0] == 400
        assert request(port, "/api/top/clients?n=x")[0] == 400

        apps = {r["application_name"]: r for r in get(port, "apps")["rows"]}
        for name in ("app-a", "app-b"):
            mine = [r for r in clients if r["application_name"] == name]
            assert apps[name] == {"application_name": name, "clients": len(mine),
                                  "queries_total": sum(int(r["query_count"]) for r in mine),
                                  "transactions_total": sum(int(r["transaction_count"]) for r in mine),
                                  "errors_total": sum(int(r["error_count"]) for r in mine)}
        assert apps["app-a"]["clients"] == 2 and apps["app-b"]["errors_total"] == 1
        asc = [r["queries_total"] for r in get(port, "apps?sort=queries&order=asc")["rows"]]
        assert asc == sorted(asc)
        assert request(port, "/api/apps?order=sideways")[0] == 400

        top_prepared = get(port, "top/prepared")["rows"]
        assert comparable(top_prepared) == comparable([{k: v for k, v in r.items() if k != "query"} for r in prepared])
        assert request(port, "/api/top/prepared?by=misses")[0] == 400
        queries = get(port, "top/queries")["rows"]
        (q,) = [r for r in queries if "* 2" in r["query"]]
        (row,) = [r for r in prepared if "* 2" in r["query"]]
        assert (q["hash"], q["query"], q["count"]) == (int(row["hash"]), row["query"][:120], int(row["count_used"]))

        # One statement's text: the SHOW rows with its hash, by decimal or hexadecimal hash.
        h = int(row["hash"])
        text = get(port, f"prepared/text/{h}")
        assert comparable(text["rows"]) == comparable([r for r in prepared if int(r["hash"]) == h])
        assert text["rows"][0]["query"] == row["query"] and text["hash"] == str(h)
        assert get(port, f"prepared/text/{h:#x}")["rows"] == text["rows"]
        status, _, body = request(port, "/api/prepared/text/12345")
        assert (status, body["error"]) == (404, "not_found")
        for bad in ("nope", "0xzz", str(1 << 64), "-1"):
            status, _, body = request(port, f"/api/prepared/text/{bad}")
            assert (status, body["error"]) == (400, "bad_hash"), bad


def test_process(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory, general={"worker_threads": 2})
    proc = get(port, "process")["data"]
    assert proc["pid"] == p.proc.pid and proc["hostname"] == os.uname().nodename
    assert proc["uptime_seconds"] >= 0 and proc["started_at"] <= time.time()
    assert proc["rss_bytes"] > 1 << 20 and proc["vm_size_bytes"] >= proc["rss_bytes"]
    names = {t["name"] for t in proc["threads_breakdown"]}
    assert proc["threads"] == len(proc["threads_breakdown"]) >= 3  # main, two workers, the web listener
    assert {"MainThread", "metrics-http"} <= names, names
    assert len(os.listdir(f"/proc/{p.proc.pid}/fd")) - 5 <= proc["fd_open"] <= proc["fd_limit"]
    assert proc["cpu_user_us"] + proc["cpu_system_us"] > 0 and proc["cpu_cores"] >= 1
    totals = [t["cpu_user_us"] + t["cpu_system_us"] for t in proc["threads_breakdown"]]
    assert totals == sorted(totals, reverse=True)


def test_roles_of_the_new_views(pooler_factory: Any, tmp_path: Path) -> None:
    _, pub, key = keypair(tmp_path, "sso")
    web = {"sso_enabled": True, "sso_public_key_file": str(pub), "sso_allowed_users": ["alice"],
           "sso_proxy_url": "https://sso.example/login", "sso_admin_groups": ["dba"]}
    p, port = web_pooler(pooler_factory, anonymous=True, web=web)
    with client(p) as c:
        c.execute("SELECT %s::int * 3", (1,), prepare=True).fetchall()
        c.execute("SELECT %s::int * 3", (2,), prepare=True).fetchall()
    fresh_window()
    (row,) = [r for r in get(port, "top/prepared")["rows"] if r["count_used"]]
    alice = "Bearer " + token(key, "alice", groups=["dev"])
    paths = {"/api/process": False, "/api/auth_query": False, "/api/top/prepared": False, "/api/top/clients": True,
             "/api/top/queries": True, "/api/apps": True, f"/api/prepared/text/{row['hash']}": True}
    for path, personal in paths.items():
        assert request(port, path, auth=None)[0] == (403 if personal else 200), path  # Anonymous
        assert request(port, path, auth=alice)[0] == 200, path  # Sso
        assert request(port, path)[0] == 200, path  # Admin
    assert request(port, "/api/top/queries", auth=None)[2] == {"error": "forbidden", "message": "admin role required"}

    # auth/config: for anyone, even where nothing else is; who is asking.
    p2, port2 = web_pooler(pooler_factory, web=web)
    assert request(port2, "/api/pools", auth=None)[0] == 401
    facts = {"sso_enabled": True, "sso_proxy_url": "https://sso.example/login", "sso_config_error": None,
             "sso_admin_groups_configured": True}
    assert get(port2, "auth/config", auth=None)["data"] == {**facts, "current_user": None}
    assert get(port2, "auth/config", auth=alice)["data"]["current_user"] == {"username": "alice", "source": "sso",
                                                                              "role": "sso"}
    assert get(port2, "auth/config")["data"]["current_user"] == {"username": ADMIN_USER, "source": "basic",
                                                                 "role": "admin"}
    bad = "Basic " + "eDp5"  # x:y
    assert get(port2, "auth/config", auth=bad)["data"]["current_user"] is None
    assert request(port2, "/api/auth/config", method="POST", headers={"X-Requested-With": "t"})[0] == 405
    assert request(port2, "/api/top/clients?n=100000")[0] == 200  # n is capped, not refused
    assert request(port2, "/api/prepared/text/")[0] == 404

    # SSO on but unusable: said, and SSO counts as off.
    p3, port3 = web_pooler(pooler_factory, web={**web, "sso_public_key_file": str(tmp_path / "missing.pem")})
    data = get(port3, "auth/config", auth=None)["data"]
    assert data["sso_enabled"] is False and "missing.pem" in data["sso_config_error"]


@pytest.fixture(scope="module")
def aq_pg(pg: PgCluster) -> Iterator[PgCluster]:
    setup_cluster(pg)
    yield pg
    drop_test_roles(pg)


def test_auth_query_view_is_show_auth_query(aq_pg: PgCluster, pooler_factory: Any) -> None:
    user, password = new_user(aq_pg)
    p, port = web_pooler(pooler_factory, pool={"auth_query": aq_section(pool_size=2)})
    with aq_connect(p, user, password) as c:
        c.execute("SELECT 1").fetchall()
    aq_refused(p, user, "wrong")
    fresh_window()
    with admin(p, password=PASSWORD) as a:
        names, want = show(a, "AUTH_QUERY")
    body = get(port, "auth_query")
    assert [c["name"] for c in body["columns"]] == names
    (row,) = [r for r in body["rows"] if r["database"] == DBNAME]
    assert row["auth_success"] == 1 and row["auth_failure"] == 1 and row["dynamic_pools_current"] == 1
    assert comparable(body["rows"]) == comparable(want)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, text = request(port, "/metrics", auth=None)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(before: dict[Any, float], after: dict[Any, float], name: str) -> dict[tuple[str, ...], float]:
    """name's series that grew between the scrapes: {label values: increase}."""
    return {tuple(v for _, v in labels): n - before.get((nm, labels), 0)
            for (nm, labels), n in after.items() if nm == name and n - before.get((nm, labels), 0)}


def test_web_metrics(pooler_factory: Any, tmp_path: Path) -> None:
    _, pub, key = keypair(tmp_path, "sso")
    _, _, other = keypair(tmp_path, "other")
    web = {"sso_enabled": True, "sso_public_key_file": str(pub), "sso_audience": ["pg_doorman"],
           "sso_allowed_users": ["alice", "bob"], "sso_admin_groups": ["dba"]}
    p, port = web_pooler(pooler_factory, web=web)
    before = scrape(port)
    assert before[("pg_doorman_web_sso_enabled", ())] == 1 and before[("pg_doorman_web_sso_config_error", ())] == 0

    def bearer(user: str | None, key: Any = key, **claims: Any) -> str:
        return "Bearer " + token(key, user, **{"aud": "pg_doorman", **claims})  # type: ignore[arg-type]

    bad_basic = "Basic " + "eDp5"  # x:y
    sent = [  # (auth, expected status)
        (None, 401), (None, 401), (bad_basic, 401),  # nothing presented twice, wrong password
        (bearer("alice"), 200), (bearer("bob", groups=["dba"]), 200),  # Sso, and an SSO admin
        ("Basic " + base64.b64encode(f"{ADMIN_USER}:{PASSWORD}".encode()).decode(), 200),
        (bearer("alice", exp_in=-5), 401), (bearer("alice", aud="elsewhere"), 401), (bearer("mallory"), 401),
        (bearer(None), 401), (bearer("alice", key=other), 401), ("Bearer x.y.z", 401),
    ]
    for auth, want in sent:
        assert request(port, "/api/pools", auth=auth)[0] == want, auth
    assert request(port, "/api/nope")[0] == 404  # answered before anyone is asked who they are
    after = scrape(port)
    assert delta(before, after, "pg_doorman_web_requests_total") == {  # (role, status_class)
        ("anonymous", "2xx"): 1,  # the first scrape
        ("rejected", "4xx"): 9, ("sso", "2xx"): 1, ("admin", "2xx"): 2, ("anonymous", "4xx"): 1}
    assert delta(before, after, "pg_doorman_web_auth_attempts_total") == {
        ("anonymous", "none"): 2, ("rejected", "none"): 7, ("sso", "sso"): 1, ("admin", "sso"): 1,
        ("admin", "basic"): 1}
    assert delta(before, after, "pg_doorman_web_sso_validation_errors_total") == {
        ("expired",): 1, ("audience",): 1, ("allowlist",): 1, ("no_username",): 1, ("signature",): 2}
    reasons = {dict(labels)["reason"] for (nm, labels) in after if nm == "pg_doorman_web_sso_validation_errors_total"}
    assert reasons == {"signature", "expired", "audience", "no_username", "allowlist", "insecure_transport"}

    # Views built: at most once per snapshot window, however many ask.
    fresh_window()
    started = time.monotonic()
    for _ in range(5):
        assert request(port, "/api/servers")[0] == 200
    quick = time.monotonic() - started < 0.9
    built = scrape(port)
    n = built[("pg_doorman_web_view_build_duration_seconds_count", (("view", "servers"),))]
    assert n == 1 or (not quick and n <= 2), n
    assert built[("pg_doorman_web_view_build_duration_seconds_bucket", (("le", "+Inf"), ("view", "servers")))] == n
    assert 0 < built[("pg_doorman_web_view_build_duration_seconds_sum", (("view", "servers"),))] < 1
    assert 1 <= built[("pg_doorman_web_view_build_duration_seconds_count", (("view", "pools"),))] <= 3

    # sso_require_https without a trusted proxy saying https.
    p2, port2 = web_pooler(pooler_factory, web={**web, "sso_require_https": True})
    assert request(port2, "/api/pools", auth=bearer("alice"))[0] == 401
    assert scrape(port2)[("pg_doorman_web_sso_validation_errors_total", (("reason", "insecure_transport"),))] == 1
    # SSO on with a key that is not there: the gauges say so.
    p3, port3 = web_pooler(pooler_factory, web={**web, "sso_public_key_file": str(tmp_path / "missing.pem")})
    got = scrape(port3)
    assert got[("pg_doorman_web_sso_enabled", ())] == 0 and got[("pg_doorman_web_sso_config_error", ())] == 1
