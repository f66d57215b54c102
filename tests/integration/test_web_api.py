"""The JSON API (`web.ui`) end to end: a pooler subprocess with the web listener on, its /api views
compared with the admin console's SHOW output on the same pooler, the access rules (401 / 403 / 200 per
role), refusal of cross-site POSTs, the console's commands over POST, and the one-second snapshot cache."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgdoorman.web.api import ACTIONS, PERSONAL, TABLE_VIEWS, VIEWS
from tests.integration.test_admin import admin, client, pool_row_when, show, waiting_clients
from tests.integration.test_jwt import keypair, token
from tests.support.cluster import ADMIN_USER, DBNAME, SCRAM_USER
from tests.support.pooler import free_port, wait_for

pytestmark = pytest.mark.timeout(180)

PASSWORD = "s3cret-admin-pw"
AUTH = "Basic " + base64.b64encode(f"{ADMIN_USER}:{PASSWORD}".encode()).decode()
XHR = {"X-Requested-With": "test"}
# Columns that move with the clock between the SHOW and the API's snapshot.
VOLATILE = {"age_seconds", "oldest_active_age_ms", "maxwait", "maxwait_us"}


def web_pooler(pooler_factory: Any, ui: bool = True, anonymous: bool = False, **kw: Any) -> tuple[Any, int]:
    port = free_port()
    general = {"admin_password": PASSWORD, **kw.pop("general", {})}
    web = kw.pop("web", {})
    p = pooler_factory(start=False, general=general, **kw)
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port, "ui": ui, "ui_anonymous": anonymous, **web}
    p.start()
    return p, port


def request(port: int, path: str, method: str = "GET", auth: str | None = AUTH,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = auth
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            conn.close()
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    got = {k.lower(): v for k, v in resp.getheaders()}
    body: Any = raw.decode()
    if got.get("content-type", "").startswith("application/json"):
        body = json.loads(raw)
    return resp.status, got, body


def get(port: int, view: str, **kw: Any) -> Any:
    status, _, body = request(port, f"/api/{view}", **kw)
    assert status == 200, (view, status, body)
    return body


def post(port: int, action: str, query: str = "", **kw: Any) -> tuple[int, Any]:
    kw.setdefault("headers", XHR)
    status, _, body = request(port, f"/api/admin/{action}{query}", method="POST", **kw)
    return status, body


def norm(v: Any) -> Any:
    """A SHOW cell (psycopg: Decimal/int/str) and an API value (int/float/bool/str) in one form."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, Decimal)):
        return Decimal(str(v))
    if isinstance(v, str) and v.isdigit():
        return Decimal(v)
    return v


def comparable(rows: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    out = [[(k, norm(v)) for k, v in r.items() if k not in VOLATILE and not k.startswith("avg_")] for r in rows]
    return sorted(out, key=repr)


def test_every_view_is_its_show(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory, pool_size=3)
    with admin(p, password=PASSWORD) as a, client(p) as c1, client(p) as c2:
        c1.execute("SELECT 1").fetchall()
        c2.execute("SELECT %s::int + 1", (1,), prepare=True).fetchall()  # a prepared statement with SQL text
        c2.execute("SELECT %s::int + 1", (2,), prepare=True).fetchall()
        time.sleep(0.2)  # let the servers go back to idle
        for view, sub in TABLE_VIEWS.items():
            names, want = show(a, sub.upper())
            body = get(port, view)
            assert body["view"] == view
            assert [col["name"] for col in body["columns"]] == names, view
            assert all(list(r) == names for r in body["rows"]), view
            assert comparable(body["rows"]) == comparable(want), view
    pools = get(port, "pools")
    (row,) = [r for r in pools["rows"] if r["user"] == SCRAM_USER]
    assert isinstance(row["sv_idle"], int) and row["paused"] == 0 and row["database"] == DBNAME
    clients = get(port, "clients")["rows"]
    assert clients and all(isinstance(r["tls"], bool) for r in clients)
    prepared = get(port, "prepared")["rows"]
    assert any("+ 1" in r["query"] for r in prepared), prepared
    assert isinstance(get(port, "databases")["rows"][0]["port"], int)
    assert get(port, "version")["rows"][0]["version"].startswith("PgDoorman ")

    overview = get(port, "overview")["data"]
    assert overview["pools"] == len(pools["rows"]) and overview["uptime_seconds"] >= 0
    assert overview["version"].startswith("PgDoorman ")
    sockets = get(port, "sockets")["data"]
    assert sockets["available"] is False or sockets["counts"]["tcp"] >= 1
    assert "path=/api/pools status=200" in p.log() and "who=admin" in p.log()


def test_roles(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory)
    for view in VIEWS:
        status, headers, body = request(port, f"/api/{view}", auth=None)
        assert status == 401 and headers["www-authenticate"] == 'Basic realm="pg_doorman"', (view, body)
        assert request(port, f"/api/{view}")[0] == 200
    bad = "Basic " + base64.b64encode(f"{ADMIN_USER}:wrong".encode()).decode()
    assert request(port, "/api/pools", auth=bad)[0] == 401
    assert request(port, "/api/pools", auth="Bearer x.y.z")[0] == 401
    assert request(port, "/api/pools", auth="Basic !!!")[0] == 401
    assert post(port, "pause", auth=None)[0] == 401
    assert request(port, "/api/nope")[0] == 404
    assert request(port, "/api/pools", method="POST", headers=XHR)[0] == 405
    assert request(port, "/api/admin/pause")[0] == 405
    assert request(port, "/metrics", auth=None)[0] == 200

    # Anonymous: read-only, no personal data; wrong credentials are still 401.
    p2, port2 = web_pooler(pooler_factory, anonymous=True)
    for view in VIEWS:
        status, _, body = request(port2, f"/api/{view}", auth=None)
        want = 403 if view in PERSONAL else 200
        assert status == want, (view, status, body)
        assert request(port2, f"/api/{view}")[0] == 200
    assert request(port2, "/api/clients", auth=None)[2] == {"error": "forbidden", "message": "admin role required"}
    for action in ACTIONS:
        assert post(port2, action, auth=None)[0] == 403
    assert request(port2, "/api/pools", auth=bad)[0] == 401

    # ui off: the API is not there, /metrics is.
    p3, port3 = web_pooler(pooler_factory, ui=False)
    assert request(port3, "/api/pools")[0] == 404
    assert request(port3, "/metrics", auth=None)[0] == 200


def paused(a: psycopg.Connection[Any]) -> int:
    (row,) = [r for r in show(a, "POOLS")[1] if r["user"] == SCRAM_USER]
    return int(row["paused"])


def test_commands_and_cross_site_refusal(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory)
    with admin(p, password=PASSWORD) as a:
        # A cross-site form or fetch: refused before anything happens, whatever the credentials.
        for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null", **XHR},
                        {"Sec-Fetch-Site": "cross-site", **XHR}, {"Sec-Fetch-Site": "same-site"}):
            status, body = post(port, "pause", headers=headers)
            assert (status, body["error"]) == (403, "cross_site"), headers
        assert paused(a) == 0

        status, body = post(port, "pause", headers={"Origin": f"http://127.0.0.1:{port}"})
        assert (status, body) == (200, {"ok": True, "command": "PAUSE", "database": None})
        assert paused(a) == 1
        # The command drops the cached snapshot: the next read shows it.
        assert all(r["paused"] == 1 for r in get(port, "pools")["rows"])
        assert post(port, "resume", f"?db={DBNAME}", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200
        assert paused(a) == 0

        status, body = post(port, "pause", "?db=nope")
        assert (status, body["error"], body["message"]) == (404, "unknown_database", 'No pool for database "nope"')
        assert post(port, "pause", f"?pool={SCRAM_USER}@{DBNAME}")[0] == 400
        assert paused(a) == 0

        with client(p) as c:
            c.execute("SELECT 1").fetchall()
        wait_for(lambda: any(r["sv_idle"] for r in get(port, "pools")["rows"]), what="an idle server")
        assert post(port, "reconnect", f"?db={DBNAME}") == (200, {"ok": True, "command": "RECONNECT",
                                                                  "database": DBNAME})
        wait_for(lambda: all(int(r["sv_idle"]) == 0 for r in show(a, "POOLS")[1]), what="idle servers closed")
        assert post(port, "reload") == (200, {"ok": True, "command": "RELOAD"})
        assert "RELOAD (web API)" in p.log() and "PAUSE (all pools) (web API)" in p.log()
        assert "refused cross-site POST /api/admin/pause" in p.log()


def test_pause_from_the_api_makes_clients_wait(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory, general={"query_wait_timeout": 20000})
    with client(p) as c:  # a first login learns the server's parameters from a server
        c.execute("SELECT 1").fetchall()
    with admin(p, password=PASSWORD) as a:
        assert post(port, "pause", f"?db={DBNAME}")[0] == 200
        with waiting_clients(p, 2) as results:
            pool_row_when(a, lambda r: r["cl_waiting"] == 2, "two clients waiting on the paused pool")
            wait_for(lambda: sum(r["cl_waiting"] for r in get(port, "pools")["rows"]) == 2,
                     what="/api/pools showing the waiters")
            assert results == []
            assert post(port, "resume", f"?db={DBNAME}")[0] == 200
        assert [tuple(r) for r in results] == [(42,), (42,)]
        assert pool_row_when(a, lambda r: r["cl_waiting"] == 0, "no waiters")["paused"] == 0


def test_one_snapshot_per_second(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory)
    with client(p) as c1:
        c1.execute("SELECT 1").fetchall()
        time.sleep(1.05)  # a fresh cache window from here
        first = get(port, "clients")
        with client(p) as c2:
            c2.execute("SELECT 1").fetchall()
            again = get(port, "clients")
            others = [get(port, v) for v in ("pools", "servers", "overview")]
            if time.time() - first["taken_at"] < 0.9:  # still inside the window (a slow machine may miss it)
                assert again == first  # the same snapshot: c2 is not in it yet
                assert {o["snapshot"] for o in others} == {first["snapshot"]}
            time.sleep(1.1)
            later = get(port, "clients")
            assert later["snapshot"] > first["snapshot"]
            assert len(later["rows"]) == len(first["rows"]) + 1


def test_odd_requests_get_an_http_answer(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory)
    assert request(port, "/api/admin/pause", "POST", headers={**XHR, "Content-Length": "x"})[0] == 413
    assert request(port, "/api/admin/pause", "POST", headers={**XHR, "Transfer-Encoding": "chunked"})[0] == 411
    assert request(port, "/api/pools", headers={"Content-Length": str(1 << 20)})[0] == 413
    assert request(port, "/api/pools")[0] == 200  # the listener is fine


def test_page_routes_and_paging(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory)
    status, headers, body = request(port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and "/static/app.js" in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    status, headers, body = request(port, "/", auth=None)
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="pg_doorman"' and "Sign in" in body
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        status, headers, _ = request(port, f"/static/{name}", auth=None)  # no data in them: no sign-in
        assert status == 200 and headers["content-type"].startswith(kind), name
    assert request(port, "/static/../web/api.py")[0] == 404
    assert request(port, "/static/nope.js")[0] == 404
    status, headers, _ = request(port, "/login")
    assert status == 303 and headers["location"] == "/"
    assert request(port, "/login", auth=None)[0] == 401
    assert get(port, "whoami") == {"role": "admin", "user": "", "admin": True, "personal": True}
    assert request(port, "/api/whoami", auth=None)[0] == 401

    conns = [client(p, application_name=f"pager-{i}") for i in range(5)]
    try:
        time.sleep(1.05)  # a new snapshot window with all five
        page = get(port, "clients?filter=PAGER-&sort=-application_name&offset=1&limit=2")
        assert page["total"] == 5 and page["offset"] == 1
        assert [r["application_name"] for r in page["rows"]] == ["pager-3", "pager-2"]
        assert request(port, "/api/clients?sort=nope")[0] == 400
    finally:
        for c in conns:
            c.close()

    # Anonymous (ui_anonymous): the page and the read-only views; /login still asks for the admin.
    p2, port2 = web_pooler(pooler_factory, anonymous=True)
    assert request(port2, "/", auth=None)[0] == 200
    assert get(port2, "whoami", auth=None) == {"role": "anonymous", "user": "", "admin": False, "personal": False}
    assert request(port2, "/login", auth=None)[0] == 401
    p3, port3 = web_pooler(pooler_factory, ui=False)
    assert request(port3, "/")[0] == 404 and request(port3, "/static/app.js")[0] == 404


def test_log_tap(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory, web={"log_tap_max_entries": 8})
    assert post(port, "reload") == (200, {"ok": True, "command": "RELOAD"})
    # The access line of a request is written after its response: wait for the POST's.
    def logs_when(query: str, cond: Any) -> Any:
        def check() -> Any:
            got = get(port, "logs" + query)
            return got if cond(got) else None
        return wait_for(check, what=f"/api/logs{query} as expected")

    body = logs_when("", lambda got: any("path=/api/admin/reload " in e["message"] for e in got["entries"]))
    assert body["capacity"] == 8 and 0 < len(body["entries"]) <= 8, body
    assert any(e["message"] == "RELOAD (web API)" and e["logger"] == "pgdoorman.web" for e in body["entries"])
    assert all(set(e) == {"seq", "time", "level", "logger", "thread", "message"} for e in body["entries"])
    seqs = [e["seq"] for e in body["entries"]]
    assert seqs == sorted(seqs) and seqs[-1] == body["last"]
    # Only what came after: the page's polls of /api/logs are not logged into the tap.
    assert get(port, f"logs?after={body['last']}")["entries"] == []
    for _ in range(10):
        assert request(port, "/api/version")[0] == 200  # an access log line each
    # Ten requests: an access line each (and a debug line at -l debug).
    later = logs_when(f"?after={body['last']}", lambda got: got["last"] - body["last"] >= 10)
    new = later["last"] - body["last"]
    assert len(later["entries"]) == 8 and later["dropped"] == new - 8, later  # the ring holds eight
    assert get(port, "logs?level=warning")["entries"] == []
    assert request(port, "/api/logs?level=nope")[0] == 400
    assert request(port, "/api/logs", auth=None)[0] == 401

    p2, port2 = web_pooler(pooler_factory, web={"log_tap_max_entries": 0})
    status, _, body = request(port2, "/api/logs")
    assert status == 404 and "log_tap_max_entries" in body["message"]


def test_trusted_proxies(pooler_factory: Any) -> None:
    fwd = {"X-Forwarded-For": "6.6.6.6, 198.51.100.4"}
    p, port = web_pooler(pooler_factory, web={"trusted_proxies": ["127.0.0.0/8"]})
    assert request(port, "/api/version", headers=fwd)[0] == 200
    assert request(port, "/api/pools", headers={"Forwarded": 'for="[2001:db8::1]:4711"'})[0] == 200
    assert p.wait_for_log("remote=198.51.100.4 proxy=127.0.0.1 method=GET path=/api/version status=200")
    assert p.wait_for_log('remote=2001:db8::1 proxy=127.0.0.1 method=GET path=/api/pools status=200')
    # Not a trusted proxy: the header is the client's own claim, ignored.
    p2, port2 = web_pooler(pooler_factory, web={"trusted_proxies": ["10.0.0.0/8"]})
    assert request(port2, "/api/version", headers=fwd)[0] == 200
    assert p2.wait_for_log("remote=127.0.0.1 method=GET path=/api/version status=200")
    assert "198.51.100.4" not in p2.log()


def started_events(port: int) -> Any:
    """GET /api/events once it holds the pooler's start event: serve.py records it just after the listeners are
    up, so a read as soon as the pooler accepts connections can come before it."""
    def read() -> Any:
        body = get(port, "events")
        return body if body["events"] else None

    return wait_for(read, what="the pooler's start event")


def test_events(pooler_factory: Any) -> None:
    p, port = web_pooler(pooler_factory, anonymous=True)
    start = started_events(port)
    assert [e["kind"] for e in start["events"]] == ["start"] and start["last"] == 1
    assert post(port, "pause", f"?db={DBNAME}")[0] == 200
    assert post(port, "resume", "?db=nope")[0] == 404  # changed nothing: not recorded
    assert post(port, "resume")[0] == 200
    with admin(p, password=PASSWORD) as a:
        a.execute("RECONNECT")
        a.execute("SET log_level = 'debug'")
    assert post(port, "reload")[0] == 200
    events = get(port, f"events?after={start['last']}")["events"]
    got = [(e["kind"], e["target"], e["ok"]) for e in events]
    assert got == [("pause", DBNAME, True), ("resume", "all pools", True), ("reconnect", "all pools", True),
                   ("log_level", "debug", True), ("reload", "", True)], got
    assert events[0]["source"] == "web API 127.0.0.1 (admin)"
    assert events[2]["source"].startswith("admin console 127.0.0.1:") and events[2]["source"].endswith(f"({ADMIN_USER})")
    # A failed RELOAD is recorded with why.
    p.config["general"]["port"] = "not a port"
    p.write_config()
    assert post(port, "reload")[0] == 409
    (failed,) = get(port, f"events?after={events[-1]['seq']}")["events"]
    assert failed["kind"] == "reload" and failed["ok"] is False and "port" in failed["detail"]
    # Anonymous: the events, not who (addresses).
    anon = get(port, "events", auth=None)["events"]
    assert len(anon) == 7 and {e["source"] for e in anon} == {""}


def test_sighup_reload_is_an_event(pooler_factory: Any) -> None:
    """A RELOAD by SIGHUP to the pooler process is in /api/events as the console's RELOAD is, with source
    SIGHUP; a refused one with why."""
    p, port = web_pooler(pooler_factory)
    last = started_events(port)["last"]
    p.config["general"]["query_wait_timeout"] = 12345
    p.write_config()
    p.signal(signal.SIGHUP)
    (ev,) = wait_for(lambda: get(port, f"events?after={last}")["events"], what="the SIGHUP reload's event")
    assert (ev["kind"], ev["target"], ev["source"], ev["ok"], ev["detail"]) == ("reload", "", "SIGHUP", True, "")
    with admin(p, password=PASSWORD) as a:
        (row,) = [r for r in show(a, "CONFIG")[1] if r["key"] == "query_wait_timeout"]
        assert "12345" in str(row["value"])  # the reload did happen
    p.config["general"]["port"] = "not a port"
    p.write_config()
    p.signal(signal.SIGHUP)
    (failed,) = wait_for(lambda: get(port, f"events?after={ev['seq']}")["events"], what="the refused reload's event")
    assert (failed["kind"], failed["source"], failed["ok"]) == ("reload", "SIGHUP", False)
    assert "port" in failed["detail"]


def test_sso(pooler_factory: Any, tmp_path: Path) -> None:
    _, pub, key = keypair(tmp_path, "sso")
    web = {"sso_enabled": True, "sso_public_key_file": str(pub), "sso_audience": ["pg_doorman"],
           "sso_allowed_users": ["alice", "bob", "carol"], "sso_admin_groups": ["dba"]}
    p, port = web_pooler(pooler_factory, web=web)

    def bearer(user: str, **claims: Any) -> str:
        return "Bearer " + token(key, user, **{"aud": "pg_doorman", **claims})

    alice = bearer("alice", groups=["dev"])  # Sso: read-only, personal data included
    assert get(port, "whoami", auth=alice) == {"role": "sso", "user": "alice", "admin": False, "personal": True}
    for view in VIEWS:
        assert request(port, f"/api/{view}", auth=alice)[0] == 200, view
    assert post(port, "pause", auth=alice) == (403, {"error": "forbidden", "message": "admin role required"})
    assert request(port, "/", auth=alice)[0] == 200
    assert request(port, "/login", auth=alice)[0] == 401
    # The cookie and ?token= carry it too.
    raw = alice.split(" ", 1)[1]
    assert get(port, "whoami", auth=None, headers={"Cookie": f"theme=dark; sso_access_token={raw}"})["user"] == "alice"
    assert get(port, f"whoami?token={raw}", auth=None)["role"] == "sso"

    bob = bearer("bob", groups=["dev", "dba"])  # an admin group: Admin
    assert get(port, "whoami", auth=bob)["role"] == "admin"
    assert post(port, "pause", auth=bob)[0] == 200 and post(port, "resume", auth=bob)[0] == 200
    assert get(port, "events", auth=bob)["events"][-1]["source"] == "web API 127.0.0.1 (admin:bob)"
    assert "who=admin:bob" in p.log() and "who=sso:alice" in p.log()

    _, _, other = keypair(tmp_path, "other")
    refused = {
        "expired": "Bearer " + token(key, "alice", exp_in=-5, aud="pg_doorman"),
        "wrong audience": "Bearer " + token(key, "alice", aud="someone-else"),
        "no audience": "Bearer " + token(key, "alice"),
        "not allowed": bearer("mallory"),
        "no user": "Bearer " + token(key, None, aud="pg_doorman"),  # type: ignore[arg-type]
        "other key": "Bearer " + token(other, "alice", aud="pg_doorman"),
        "garbage": "Bearer x.y.z",
    }
    for why, auth in refused.items():
        status, headers, body = request(port, "/api/pools", auth=auth)
        assert status == 401 and body["error"] == "unauthorized", (why, body)
    # Basic still works; the Bearer challenge is offered beside it.
    status, headers, _ = request(port, "/api/pools", auth=None)
    assert status == 401
    assert get(port, "whoami")["role"] == "admin"

    # SSO off: a Bearer token is not a way in.
    p2, port2 = web_pooler(pooler_factory)
    assert request(port2, "/api/pools", auth=alice)[0] == 401

    # sso_require_https: only through a trusted proxy that says https.
    p3, port3 = web_pooler(pooler_factory, web={**web, "sso_require_https": True, "trusted_proxies": ["127.0.0.1/32"]})
    assert request(port3, "/api/pools", auth=alice)[0] == 401
    assert request(port3, "/api/pools", auth=alice, headers={"X-Forwarded-Proto": "http"})[0] == 401
    assert request(port3, "/api/pools", auth=alice, headers={"X-Forwarded-Proto": "https"})[0] == 200


def test_sso_config_needs_a_key(pooler_factory: Any) -> None:
    p = pooler_factory(start=False, general={"admin_password": PASSWORD})
    p.config["web"] = {"enabled": True, "port": free_port(), "ui": True, "sso_enabled": True}
    p.write_config()
    res = subprocess.run([sys.executable, "-m", "pgdoorman", "-t", p.config_path], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "web.sso_enabled: needs web.sso_public_key_file" in res.stderr + res.stdout
