"""pgdoorman.observe: the snapshots admin/ and metrics/ read are plain data (no connection, pool or worker
objects in them), with states as names; counts and totals; the sampler starts only when asked; App
satisfies Source and Control, and a control command on an unknown database changes nothing."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from pgdoorman import observe
from pgdoorman.app import App
from pgdoorman.observe import ClientInfo, Control, Observer, PoolInfo, ServerInfo, Source, UnknownDatabase
from pgdoorman.session.server import CLOSED
from tests.unit.test_admin_state import app, client, obs, populate, server  # noqa: F401 (fixtures)

PLAIN = (str, int, float, bool, type(None))


def assert_plain(x: Any) -> None:
    if isinstance(x, PLAIN):
        return
    if isinstance(x, tuple):
        for y in x:
            assert_plain(y)
        return
    assert dataclasses.is_dataclass(x) and not isinstance(x, type), f"not plain data: {type(x)}"
    for f in dataclasses.fields(x):
        v = getattr(x, f.name)
        if isinstance(v, list):
            for y in v:
                assert_plain(y)
        else:
            assert_plain(v)


def test_snapshot_is_plain_data_with_state_names(app: App, obs: Observer) -> None:  # noqa: F811
    populate(app)
    snap = obs.snapshot()
    for v in snap.pools:
        assert_plain(v)
    for c in snap.clients:
        assert isinstance(c, ClientInfo) and dataclasses.is_dataclass(c)
        assert_plain(c)
    for s in snap.servers:
        assert isinstance(s, ServerInfo)
        assert_plain(s)
    # The admin session is not a pool client; the one still logging in is 'login' with no id yet.
    states = sorted(c.state for c in snap.clients)
    assert states == sorted(["waiting"] * 3 + ["active", "idle", "idle", "login"])
    login = next(c for c in snap.clients if c.state == "login")
    assert login.id == "" and login.pool == ("app", "u2")
    assert {c.id for c in snap.clients if c.state == "waiting"} == {"#c100", "#c101", "#c102"}
    assert sorted(s.state for s in snap.servers) == ["active", "idle", "login", "used"]
    active = next(c for c in snap.clients if c.state == "active")
    assert active.ps_named and active.ps_unnamed is not None and active.ps_bytes > 0


def test_pool_views(app: App, obs: Observer) -> None:  # noqa: F811
    populate(app)
    v = obs.snapshot().view(("app", "u1"))
    assert v is not None and isinstance(v.info, PoolInfo)
    assert (v.info.name, v.info.mode, v.info.pool_size, v.info.paused) == ("u1@app", "transaction", 2, False)
    assert (v.cl_idle, v.cl_active, v.cl_waiting, v.cl_login) == (1, 1, 3, 0)
    assert (v.sv_active, v.sv_idle, v.sv_used, v.sv_login) == (1, 1, 0, 0)
    assert len(v.clients) == 5 and len(v.servers) == 2
    u2 = obs.snapshot().view(("app", "u2"))
    assert u2 is not None and u2.cl_login == 1 and u2.cl_idle == 1
    assert obs.snapshot().view(("nope", "x")) is None
    assert [p.key for p in obs.pools()] == [("app", "u1"), ("app", "u2"), ("other", "u1")]


def test_closed_server_is_listed_but_not_counted(app: App, obs: Observer) -> None:  # noqa: F811
    s = server(app, 0, "app", "u1", CLOSED, 4242)
    snap = obs.snapshot()
    assert [x.state for x in snap.servers if x.pid == 4242] == ["closed"]
    v = snap.view(("app", "u1"))
    assert v is not None and not v.servers and (v.sv_idle, v.sv_login) == (0, 0)
    s.state = 99
    assert [x.state for x in obs.snapshot().servers if x.pid == 4242] == ["unknown"]


def test_totals_prepared_and_counts(app: App, obs: Observer) -> None:  # noqa: F811
    st1, st2 = populate(app)["statements"]
    t = obs.totals(("app", "u1"))
    assert (t.xact_count, t.query_count, t.bytes_in, t.bytes_out, t.errors) == (15, 42, 3000, 15000, 8)
    assert obs.totals(("gone", "x")) == observe.Totals()
    stmts = {s.name: s for s in obs.statements(("app", "u1"))}
    assert stmts[st1.name.decode()].uses == 2 and stmts[st1.name.decode()].size == len(st1.parse_msg)
    assert 0 <= stmts[st2.name.decode()].hash < 2**64
    v = obs.snapshot().view(("app", "u1"))
    assert v is not None
    pv = obs.prepared(v)
    assert (pv.pool_entries, pv.client_named, pv.client_anonymous, pv.server_hits, pv.server_cached) == (2, 1, 1, 5, 1)
    app.total_accepted, app.tls_connections, app.connection_errors = 10, 3, 2
    app.cancels.requests = 1
    app.listener_rejections["hba"] = 2
    assert obs.connection_counts() == {"total": 10, "errors": 2, "tls": 3, "plain": 4, "cancel": 1}
    r = obs.rejections()
    r["hba"] = 99  # a copy
    assert obs.rejections() == {"hba": 2}


def test_client_id_without_cancel_key_is_stable(app: App) -> None:  # noqa: F811
    c = client(app, 0, "app", "u1", 0)
    first = observe.client_id(c)
    assert first.startswith("#c") and int(first[2:]) >= 1 << 31
    assert observe.client_id(c) == first
    assert observe.client_id(client(app, 0, "app", "u1", 0)) != first


def test_sampler_starts_only_when_asked(app: App) -> None:  # noqa: F811
    calls: list[float] = []
    o = Observer(app, sampler_extra=lambda: calls.append(time.monotonic()))
    assert o._sampler is None
    try:
        o.start_sampler()
        s = o.sampler
        assert s is o.sampler and s.thread is not None and s.thread.is_alive()
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls, "the sampler runs the extra hook on its first tick"
    finally:
        o.stop()
    assert o._sampler is None


def test_app_is_a_source_and_a_control(app: App) -> None:  # noqa: F811
    src: Source = app
    ctl: Control = app
    assert src.pool_list and ctl is app
    w = app.workers[0]
    with pytest.raises(UnknownDatabase) as ei:
        app.pause("nosuch", w)
    assert ei.value.database == "nosuch"
    assert not any(p.paused for p in app.pool_list)
    app.pause("app", w)
    assert [p.paused for p in app.pool_list] == [True, True, False]
    app.resume(None, w)
    assert not any(p.paused for p in app.pool_list)
    with pytest.raises(UnknownDatabase):
        app.reconnect("nosuch")
    app.reconnect("other")
    assert [p.epoch for p in app.pool_list] == [0, 0, 1]
    with pytest.raises(UnknownDatabase):
        app.kill("nosuch")
