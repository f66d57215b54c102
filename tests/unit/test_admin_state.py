"""SHOW builders and metric collectors against a real, not-running App: clients and servers are real
ClientConn/ServerConn objects on socketpairs, put in the states the workers would put them in, and the
per-worker counters are filled by hand. Checks the state classification, the per-worker sums, the
15-second averages, and that /metrics and SHOW POOLS report the same numbers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgdoorman import observe
from pgdoorman.admin import console
from pgdoorman.admin.show import SHOW_BUILDERS, SHOW_COLUMNS, ShowContext
from pgdoorman.app import App
from pgdoorman.config import config_from_dict
from pgdoorman.metrics.collect import collect, error_bucket, render_metrics
from pgdoorman.observe import Observer, StatsSampler, Totals, averages
from pgdoorman.protocol import messages as m
from pgdoorman.session.client import READY, ClientConn
from pgdoorman.session.server import ACTIVE, IDLE, INTERNAL, LOGIN, ServerConn
from tests.unit.test_metrics_exposition import promtool_check


@pytest.fixture
def app() -> Iterator[App]:
    cfg = config_from_dict({
        "general": {"host": "127.0.0.1", "port": 6432, "admin_username": "admin", "admin_password": "pw",
                    "worker_threads": 2},
        "pools": {
            "app": {"server_host": "127.0.0.1", "server_port": 5432, "pool_mode": "transaction",
                    "users": [{"username": "u1", "password": "x", "pool_size": 2},
                              {"username": "u2", "password": "y", "pool_size": 7, "pool_mode": "session"}]},
            "other": {"server_host": "10.0.0.1", "server_port": 6000, "server_database": "real",
                      "users": [{"username": "u1", "password": "x", "pool_size": 3, "min_pool_size": 1}]},
        },
    })
    a = App(cfg)
    socks: list[socket.socket] = []
    a._test_socks = socks  # type: ignore[attr-defined]
    yield a
    for s in socks:
        s.close()
    for w in a.workers:
        for c in list(w.clients):
            c.sock.close()
        for sv in list(w.servers):
            sv.sock.close()
        w.loop.close()


@pytest.fixture
def obs(app: App) -> Iterator[Observer]:
    o = Observer(app)
    yield o
    o.stop()


def pair(app: App) -> socket.socket:
    a, b = socket.socketpair()
    app._test_socks.append(b)  # type: ignore[attr-defined]
    a.setblocking(False)
    return a


def client(app: App, wid: int, db: str, user: str, pid: int, **kw: Any) -> ClientConn:
    w = app.workers[wid]
    c = ClientConn(pair(app), w, "10.1.2.3:40000")
    c.login_timer.cancel()
    c.state = READY
    c.user, c.database, c.pid = user, db, pid
    c.pool = app.pools[(db, user)]
    for k, v in kw.items():
        setattr(c, k, v)
    w.clients.add(c)
    return c


def server(app: App, wid: int, db: str, user: str, st: int, pid: int) -> ServerConn:
    w = app.workers[wid]
    s = ServerConn(pair(app), w, app.pools[(db, user)], "127.0.0.1:5432")
    s.timer.cancel()
    s.state = st
    s.pid = pid
    s.params["application_name"] = "pg_doorman"
    w.servers.add(s)
    return s


def populate(app: App) -> dict[str, Any]:
    now = time.monotonic()
    waiting = [client(app, i % 2, "app", "u1", 100 + i, waiting=True, wait_start=now - 0.5 - i) for i in range(3)]
    active = client(app, 0, "app", "u1", 200, xact_start=now - 1.25, query_count=4, xact_count=2, error_count=1)
    idle = client(app, 1, "app", "u1", 201, application_name="batch")
    s_active = server(app, 0, "app", "u1", ACTIVE, 9001)
    s_active.client, active.server = active, s_active
    server(app, 1, "app", "u1", IDLE, 9002)
    server(app, 1, "other", "u1", INTERNAL, 9003)
    server(app, 0, "other", "u1", LOGIN, 0)
    client(app, 0, "app", "u2", 300)
    # A client still authenticating, and an admin session: neither is a pool client.
    login = client(app, 0, "app", "u2", 0)
    login.state = 1
    adm = client(app, 1, "app", "u2", 0)
    adm.admin = True
    # Prepared statements: two in the pool cache; the active client names one and holds the other unnamed.
    p = app.pools[("app", "u1")]
    st1 = p.ps_cache.get(b"select $1", b"\x00\x01\x00\x00\x00\x17", ())
    st2 = p.ps_cache.get(b"select 2", b"\x00\x00", ())
    p.ps_cache.get(b"select $1", b"\x00\x01\x00\x00\x00\x17", ())
    active.rw.define(b"mine", st1)
    active.rw.unnamed = st2
    s_active.ps_hits, s_active.ps_misses = 5, 2
    s_active.prepared[st1.name] = None
    # Counters live in per-worker shards; readers sum them.
    # Counts and time sums are the histograms' own: record samples, then pad to the wanted count with
    # mid-range samples (so p50 stays the 3 ms bucket and p99 the 40 ms one) and set the sums.
    for wid, (x, q) in enumerate([(10, 30), (5, 12)]):
        st = p.stats[wid]
        st.bytes_in, st.bytes_out = 1000 * (wid + 1), 5000 * (wid + 1)
        st.errors = 4
        st.errors_by_class.update({"08": 1, "42": 2, "26": 1} if wid == 0 else {"57": 1, "25P02": 2, "53": 1})
        for us in (200, 3000, 40_000):
            st.query_hist.record(us)
            st.xact_hist.record(us * 2)
        for _ in range(q - 3):
            st.query_hist.record(3000)
        for _ in range(x - 3):
            st.xact_hist.record(6000)
        for _ in range(3):
            st.wait_hist.record(50)
        st.xact_hist.total, st.query_hist.total = 150_000 * (wid + 1), 90_000 * (wid + 1)
        st.wait_hist.total = 30_000
    return {"waiting": waiting, "active": active, "idle": idle, "statements": (st1, st2)}


def rows_by(rs: Any, *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    names = rs.column_names()
    out = {}
    for r in rs.rows:
        d = dict(zip(names, r, strict=True))
        out[tuple(d[k] for k in keys)] = d
    return out


def test_show_pools_counts(app: App, obs: Observer) -> None:
    populate(app)
    rs = SHOW_BUILDERS["pools"](ShowContext(obs))
    assert rs.columns == SHOW_COLUMNS["pools"]
    rows = rows_by(rs, "database", "user")
    assert list(rows) == [("app", "u1"), ("app", "u2"), ("other", "u1")]  # config order
    u1 = rows[("app", "u1")]
    assert (u1["cl_idle"], u1["cl_active"], u1["cl_waiting"]) == (1, 1, 3)
    assert (u1["sv_active"], u1["sv_idle"], u1["sv_used"], u1["sv_login"]) == (1, 1, 0, 0)
    assert u1["pool_size"] == 2 and u1["pool_mode"] == "transaction" and u1["paused"] == 0
    # The oldest waiter queued 2.5 s ago: maxwait 2 s + 500000 us.
    assert u1["maxwait"] == 2 and 500_000 <= u1["maxwait_us"] < 700_000
    assert 1250 <= u1["oldest_active_age_ms"] < 1500
    assert u1["avg_xact_time"] == (150_000 + 300_000) // 15
    u2 = rows[("app", "u2")]
    assert (u2["cl_idle"], u2["cl_active"], u2["cl_waiting"], u2["pool_mode"]) == (1, 0, 0, "session")
    other = rows[("other", "u1")]
    assert (other["sv_used"], other["sv_login"], other["sv_idle"]) == (1, 1, 0)


def test_show_clients_servers_lists(app: App, obs: Observer) -> None:
    cl = populate(app)
    ctx = ShowContext(obs)
    clients = rows_by(SHOW_BUILDERS["clients"](ctx), "client_id")
    assert len(clients) == 6  # logging-in and admin clients are not listed
    a = clients[("#c200",)]
    assert (a["state"], a["wait"], a["addr"], a["tls"]) == ("active", "read", "10.1.2.3", "false")
    assert (a["transaction_count"], a["query_count"], a["error_count"]) == (2, 4, 1)
    assert clients[("#c201",)]["application_name"] == "batch" and clients[("#c201",)]["state"] == "idle"
    assert {clients[(f"#c{w.pid}",)]["state"] for w in cl["waiting"]} == {"waiting"}
    assert clients[("#c100",)]["wait"] == "idle"
    servers = rows_by(SHOW_BUILDERS["servers"](ctx), "server_process_id")
    assert {k[0]: v["state"] for k, v in servers.items()} == {
        "9001": "active", "9002": "idle", "9003": "used", "0": "login"}
    assert servers[("9001",)]["server_id"].startswith("0x") and len(servers[("9001",)]["server_id"]) == 10
    lists = dict(SHOW_BUILDERS["lists"](ctx).rows)  # type: ignore[arg-type]
    assert lists["databases"] == 3 and lists["users"] == 3 and lists["pools"] == 3
    assert (lists["free_clients"], lists["used_clients"], lists["login_clients"]) == (2, 4, 1)
    assert (lists["free_servers"], lists["used_servers"]) == (1, 2)


def test_show_stats_and_extended(app: App, obs: Observer) -> None:
    populate(app)
    ctx = ShowContext(obs)
    u1 = rows_by(SHOW_BUILDERS["stats"](ctx), "database", "user")[("app", "u1")]
    assert (u1["total_xact_count"], u1["total_query_count"]) == (15, 42)
    assert (u1["total_received"], u1["total_sent"]) == (3000, 15000)
    assert (u1["total_xact_time"], u1["total_query_time"], u1["total_wait_time"]) == (450_000, 270_000, 60_000)
    assert u1["total_errors"] == 8
    assert u1["avg_xact_time"] == 30_000 and u1["avg_query_time"] == 270_000 // 42
    assert u1["avg_wait_time"] == 60_000 // 15
    ext = rows_by(SHOW_BUILDERS["pools_extended"](ctx), "database", "user")[("app", "u1")]
    assert (ext["bytes_recieved"], ext["bytes_sent"]) == (3000, 15000)
    # p50 of {200, 3000, 40000} x2 is the 3000 us bucket; p99 the 40000 us one (bucket upper bounds, at
    # most 25% above the value).
    assert 3000 < ext["query_0.5"] <= 3000 * 1.25
    assert 40_000 < ext["query_0.99"] <= 40_000 * 1.25
    assert 80_000 < ext["transaction_0.99"] <= 80_000 * 1.25
    db = rows_by(SHOW_BUILDERS["databases"](ctx), "name", "force_user")
    assert db[("other", "u1")]["host"] == "10.0.0.1" and db[("other", "u1")]["database"] == "real"
    assert db[("other", "u1")]["min_pool_size"] == 1 and db[("other", "u1")]["port"] == "6000"
    assert db[("other", "u1")]["current_connections"] == 0  # pool.total: nothing reserved by the workers here


def test_prepared_statements_views(app: App, obs: Observer) -> None:
    st1, st2 = populate(app)["statements"]
    ctx = ShowContext(obs)
    ps = rows_by(SHOW_BUILDERS["prepared_statements"](ctx), "name")
    assert set(ps) == {(st1.name.decode(),), (st2.name.decode(),)}
    r1 = ps[(st1.name.decode(),)]
    assert (r1["pool"], r1["query"], r1["count_used"], r1["kind"]) == ("u1@app", "select $1", 2, "named")
    assert ps[(st2.name.decode(),)]["kind"] == "anonymous" and 0 <= r1["hash"] < 2**64
    mem = rows_by(SHOW_BUILDERS["pools_memory"](ctx), "database", "user")[("app", "u1")]
    assert (mem["pool_prepared_count"], mem["client_prepared_count"]) == (2, 2)
    assert (mem["client_named_count"], mem["client_anonymous_count"]) == (1, 1)
    assert mem["pool_prepared_bytes"] == len(st1.parse_msg) + len(st2.parse_msg) == mem["client_prepared_bytes"]
    sv = rows_by(SHOW_BUILDERS["servers"](ctx), "server_process_id")[("9001",)]
    assert (sv["prepare_cache_hit"], sv["prepare_cache_miss"], sv["prepare_cache_size"]) == (5, 2, 1)
    # The *_total counters survive the server: its increases were accumulated before it went away.
    sampler = obs.sampler
    sampler.track_prepared([observe.server_info(x) for x in observe.live_servers(app)])
    s = next(x for x in app.workers[0].servers if x.pid == 9001)
    s.ps_hits = 9
    sampler.track_prepared([observe.server_info(x) for x in observe.live_servers(app)])
    app.workers[0].servers.discard(s)
    sampler.track_prepared([observe.server_info(x) for x in observe.live_servers(app)])
    assert sampler.prepared_totals(("app", "u1")) == (9, 2)


def test_show_config_hides_passwords(app: App, obs: Observer) -> None:
    cfg = rows_by(SHOW_BUILDERS["config"](ShowContext(obs)), "key")
    assert cfg[("admin_password",)]["value"] == "********"
    assert cfg[("port",)]["value"] == "6432" and cfg[("port",)]["changeable"] == "no"
    assert cfg[("query_wait_timeout",)]["changeable"] == "yes"
    assert cfg[("pools.app.users.u2.pool_mode",)]["value"] == "session"
    assert "pw" not in str(cfg)


def test_averages_math() -> None:
    base = Totals(xact_count=100, query_count=200, bytes_in=1000, bytes_out=2000, xact_time_us=10_000,
                  query_time_us=4000, wait_time_us=500, errors=1)
    now = Totals(xact_count=250, query_count=500, bytes_in=16000, bytes_out=32000, xact_time_us=40_000,
                 query_time_us=10_000, wait_time_us=3500, errors=16)
    a = averages(now, base, 15.0)
    assert (a.xact_count, a.query_count, a.recv, a.sent, a.errors) == (10, 20, 1000, 2000, 1)
    assert (a.xact_time, a.query_time, a.wait_time) == (200, 20, 20)
    assert averages(base, base, 15.0).xact_time == 0


def test_sampler_window(app: App) -> None:
    s = StatsSampler(app, period=15.0)
    t0 = time.monotonic()
    s.origin = t0 - 100  # a process started long ago
    p = app.pools[("app", "u1")]
    for _ in range(10):
        p.stats[0].xact_hist.record(100)
    s.samples.append((t0 - 20, {("app", "u1"): Totals(xact_count=0)}))
    s.samples.append((t0 - 15.5, {("app", "u1"): Totals(xact_count=10)}))
    s.samples.append((t0 - 5, {("app", "u1"): Totals(xact_count=20)}))
    for _ in range(31):
        p.stats[0].xact_hist.record(100)
    a = s.averages_for(("app", "u1"), observe.pool_totals(p), t0)
    assert a.window == pytest.approx(15.5) and a.xact_count == 2  # (41 - 10) / 15.5
    # Nothing old enough and a process older than the period: the oldest sample gives a recent window.
    s.samples.popleft()
    s.samples.popleft()
    a = s.averages_for(("app", "u1"), Totals(xact_count=30), t0)
    assert a.window == pytest.approx(5.0) and a.xact_count == 2
    s.sample()
    assert s.samples[-1][1][("app", "u1")].xact_count == 41


def test_metrics_agree_with_show_pools(app: App, obs: Observer) -> None:
    populate(app)
    snap = obs.snapshot()
    text = render_metrics(obs)
    # A list, not a dict: the parser names both pg_doorman_pools_bytes (gauge) and
    # pg_doorman_pools_bytes_total (counter) "pg_doorman_pools_bytes".
    fams = list(text_string_to_metric_families(text))
    assert not [f for f in fams if f.type == "untyped"], "a sample fell outside its family"

    def value(name: str, **labels: str) -> float:
        for fam in fams:
            for smp in fam.samples:
                if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                    return smp.value
        raise KeyError((name, labels))

    for v in snap.pools:
        ud = {"user": v.info.user, "database": v.info.database}
        assert value("pg_doorman_pools_clients", status="waiting", **ud) == v.cl_waiting
        assert value("pg_doorman_pools_clients", status="active", **ud) == v.cl_active
        assert value("pg_doorman_pools_clients", status="idle", **ud) == v.cl_idle
        assert value("pg_doorman_pools_servers", status="active", **ud) == v.sv_active
        assert value("pg_doorman_pools_servers", status="idle", **ud) == v.sv_idle
        assert value("pg_doorman_pool_size", **ud) == v.info.pool_size
    u1 = {"user": "u1", "database": "app"}
    assert value("pg_doorman_pools_queries_total", **u1) == 42
    assert value("pg_doorman_pools_transactions_total", **u1) == 15
    assert value("pg_doorman_pools_bytes_total", direction="received", **u1) == 3000
    assert value("pg_doorman_pools_bytes_total", direction="sent", **u1) == 15000
    # the histogram's count is the same counter as queries_total (one write per query)
    assert value("pg_doorman_pools_query_duration_seconds_count", **u1) == 42
    assert value("pg_doorman_pools_query_duration_seconds_sum", **u1) == pytest.approx((90_000 + 180_000) / 1e6)
    assert value("pg_doorman_pools_query_duration_seconds_bucket", le="0.0005", **u1) == 2
    assert value("pg_doorman_pools_query_duration_seconds_bucket", le="0.005", **u1) == 40
    assert value("pg_doorman_pools_query_duration_seconds_bucket", le="0.05", **u1) == 42
    assert value("pg_doorman_pools_wait_duration_seconds_bucket", le="0.0001", **u1) == 6  # 3 waits of 50 us per worker
    errors = {s.labels["sqlstate"]: s.value for f in fams for s in f.samples
              if s.name == "pg_doorman_pools_errors_total" and s.labels["user"] == "u1"
              and s.labels["database"] == "app"}
    assert errors == {"08": 1, "53": 1, "57": 1, "25P02": 2, "26000": 1, "other": 2}
    assert value("pg_doorman_build_info") == 1
    assert value("pg_doorman_users_configured", user="u2", database="app", pool_mode="session") == 1
    assert value("pg_doorman_pools_maxwait_microseconds", **u1) == pytest.approx(2_500_000, rel=0.2)
    assert value("pg_doorman_pool_prepared_cache_entries", **u1) == 2
    assert value("pg_doorman_clients_prepared_named_entries", **u1) == 1
    assert value("pg_doorman_servers_prepared_hits", **u1) == 5
    assert value("pg_doorman_servers_prepared_hits_total", **u1) == 5
    assert value("pg_doorman_servers_prepared_misses_total", **u1) == 2
    assert value("pg_doorman_total_memory") > 1_000_000
    names = [f.name for f in collect(obs)]
    assert len(names) == len(set(names))
    promtool_check(text)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    undocumented = [n for n in names if f"`{n}`" not in doc]
    assert not undocumented, f"families missing from docs/metrics.md: {undocumented}"


def test_error_buckets() -> None:
    assert [error_bucket(c) for c in ("08006", "08", "53300", "57P01", "25P02", "25001", "26", "26000", "42",
                                      "XX000")] == ["08", "08", "53", "57", "25P02", "other", "26000", "26000",
                                                    "other", "other"]


def test_console_execute_pause_resume_unknown(app: App, obs: Observer) -> None:
    populate(app)
    w = app.workers[0]
    out = console.execute(obs, app, w, "PAUSE app; SHOW POOLS")
    msgs = list(m.iter_messages(out))
    assert [chr(t) for t, _ in msgs][:2] == ["C", "T"] and msgs[0][1] == b"PAUSE\x00"
    assert chr(msgs[-1][0]) == "Z"
    assert app.pools[("app", "u1")].paused and app.pools[("app", "u2")].paused
    assert not app.pools[("other", "u1")].paused
    console.execute(obs, app, w, "RESUME")
    assert not any(p.paused for p in app.pool_list)
    for sql, code in [("PAUSE nosuch", "3D000"), ("KILL nosuch", "3D000"), ("SHOW NOPE", "58000"),
                      ("SET log_level = 'loud'", "42601"), ("DROP TABLE x", "58000")]:
        msgs = list(m.iter_messages(console.execute(obs, app, w, sql)))
        assert [chr(t) for t, _ in msgs] == ["E", "Z"], sql
        assert m.parse_fields(msgs[0][1])["C"] == code, sql
    # A failing statement ends the query: the SHOW after it does not run.
    msgs = list(m.iter_messages(console.execute(obs, app, w, "PAUSE nosuch; SHOW POOLS")))
    assert [chr(t) for t, _ in msgs] == ["E", "Z"]
    epoch = app.pools[("other", "u1")].epoch
    console.execute(obs, app, w, "RECONNECT other")
    assert app.pools[("other", "u1")].epoch == epoch + 1
    assert app.pools[("app", "u1")].epoch == 0


def test_numeric_columns_render_as_numbers(app: App, obs: Observer) -> None:
    populate(app)
    out = console.execute(obs, app, app.workers[0], "SHOW STATS")
    rows = [body for t, body in m.iter_messages(out) if t == ord("D")]
    assert len(rows) == 3
    # First value after the two text columns is total_xact_count = 15 for app/u1.
    assert Decimal(_cells(rows[0])[2]) == 15


def _cells(body: bytes) -> list[str]:
    n = int.from_bytes(body[:2], "big")
    pos, out = 2, []
    for _ in range(n):
        ln = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        out.append(body[pos : pos + ln].decode())
        pos += ln
    return out
