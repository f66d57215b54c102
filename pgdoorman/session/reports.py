"""ParameterStatus where PostgreSQL sends it, after SET, RESET and DISCARD ALL.

On PostgreSQL a client's startup settings are its session's defaults: RESET and `SET name TO DEFAULT` return
to them, and PostgreSQL tells the client (just before the request's ReadyForQuery) each reported setting whose
value is not the one it last told. A pooled server was started for the pool, and the client's startup settings
were set on it (core/params.py): its defaults are the pool's values. So on a server

* `SET name TO DEFAULT` reports the pool's value, where PostgreSQL reports the startup value (or nothing, when
  the client had not changed it); a SET to the pool's own value reports the same thing, rightly;
* a RESET of a setting the client had set to the pool's own value changes nothing there, so the server reports
  nothing, where PostgreSQL reports the startup value.

Which of these it was, only the session's settings tell: whether the session holds the setting (core/txstate.py
reads them back). So for a client whose startup settings are not all the pool's, the reports of a request that
ran SET, RESET or DISCARD ALL are held (`Held`, from its first such CommandComplete on: PostgreSQL sends them
all just before the ReadyForQuery). When one of them, or a missing one, is doubtful, the ReadyForQuery (status
I) waits as well: the settings are read back (transaction mode: the check at the transaction's end,
ClientBase.session_check; session mode: resets.restore), the client is told what PostgreSQL would have told it,
in the server's order, and then it gets the ReadyForQuery. Otherwise the held reports go out as the server sent
them (a RESET's report of the pool's value already replaced: ServerConn._on_parameter) just before it.

Inside a transaction nothing that takes a snapshot may run before the client's next statement (SET TRANSACTION
must come first). When the request's text said what it reset (session/txresets.py), the startup values are set
again with SET before its ReadyForQuery and the reports are what PostgreSQL sends (`_put_back`); otherwise a
doubtful report goes out as it came, and the reports of the requests that follow are held until the one that
ends the transaction: the values are put right before its ReadyForQuery (docs/transparency.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from pgdoorman.core.params import READ_ONLY, server_major
from pgdoorman.protocol import messages as m
from pgdoorman.session import txresets
from pgdoorman.session.states import DIRTY_RESTORE, DIRTY_SET

if TYPE_CHECKING:
    from pgdoorman.session.peer import ClientPeer


class Held:
    """The ParameterStatus messages of one request, held until its ReadyForQuery."""

    __slots__ = ("heard", "emit", "doubt", "ready")

    def __init__(self, doubt: bool = False) -> None:
        self.heard: dict[str, str | None] = {}  # each reported setting, in the server's order: what the client last heard
        # What the relay passes on when nothing is read back: the value (None: nothing), and whether it is a
        # RESET's startup value put in place of the pool's (ClientPeer.param_synced) or the server's own.
        self.emit: dict[str, tuple[str | None, bool]] = {}
        self.doubt = doubt  # only the session's settings can tell what PostgreSQL would report
        self.ready: bytes | None = None  # the ReadyForQuery, waiting for them to be read back


class Server(txresets.Server, Protocol):
    """What of a server connection (ServerConn) this module reads; it owns `held_ps` there, and marks `dirty`
    with DIRTY_RESTORE (session mode: the settings are read back, resets.py)."""

    held_ps: Held | None
    params: dict[str, str]  # the values the server reported last
    release_pending: bool


def startup_keys(c: ClientPeer) -> dict[str, None]:
    """The settings a RESET returns to the client's startup value: its startup packet's, and application_name
    (one the client did not send is '' or the pool's, never the server's own)."""
    return dict.fromkeys((*c.settings, "application_name"))


def start(s: Server, c: ClientPeer) -> None:
    """A SET, RESET or DISCARD ALL completed on `s` for `c`: hold this request's reports when `c` started with
    reported settings that are not the pool's. When the client had set one of those to the pool's own value,
    a RESET (or `SET name TO DEFAULT`) of it gets no report from the server where PostgreSQL sends one:
    doubtful."""
    if c.resets is not None and s.held_ps is None:
        s.held_ps = Held()  # (its ReadyForQuery may wait for a reset inside a transaction block: txresets.py)
    pool_params = s.pool.server_params or {}
    differ = [k for k in startup_keys(c) if (p := pool_params.get(k)) is not None and c.want_base.get(k, p) != p]
    if not differ:
        return
    held = s.held_ps
    if held is None:
        s.held_ps = held = Held()
    if any(c.want.get(k) == pool_params[k] for k in differ):
        held.doubt = True
        if not c.transaction_mode:
            s.dirty |= DIRTY_RESTORE  # (session mode reads the settings back after a RESET: resets.py)


def hold(held: Held, k: str, emit: str | None, synced: bool, heard: str | None) -> bytes:
    """A report of the request, held (ServerConn._on_parameter): b"", relayed in its place."""
    held.heard.setdefault(k, heard)
    held.emit[k] = (emit, synced)
    return b""


def at_ready(s: Server, c: ClientPeer | None, st: int, body: memoryview) -> bytes | None:
    """The request's ReadyForQuery (status `st`) came: the held reports to put before it, or None when it
    waits (kept in Held.ready) for the settings to be read back. After the ReadyForQuery of a client whose
    server goes back to the pool (release_pending) the worker runs that read-back (transaction mode) or
    resets.restore (session mode, DIRTY_RESTORE)."""
    held = s.held_ps
    assert held is not None
    if c is None:
        s.held_ps = None
        return b""
    if c.resets is not None and (back := txresets.taken(s, c, st)):
        s.held_ps = None  # (the request's text said what its reports of the pool's values were: nothing in doubt)
        _put_back(s, held, c, back)
        txresets.run(s, c, [q for _, _, q in back], _as_reported(held, c) + m.msg(b"Z", body))
        return None
    if (held.doubt and st == 73 and s.release_pending and not s.cancel_pending and not c.copy_confused
            and s.dirty & (DIRTY_SET if c.transaction_mode else DIRTY_RESTORE)):
        held.ready = m.msg(b"Z", body)
        for k in startup_keys(c):  # (a RESET the server did not report: what the client heard, before the read-back)
            if k in s.params:
                held.heard.setdefault(k, c.want.get(k))
        return None
    s.held_ps = Held(True) if held.doubt and st != 73 else None  # (put right at the transaction's end)
    return _as_reported(held, c)


def _put_back(s: Server, held: Held, c: ClientPeer, back: list[tuple[str, str, str]]) -> None:
    """The request reset these startup settings (name, startup value) and they are set again before its
    ReadyForQuery (txresets.py): it reports the startup value of each reported one, as PostgreSQL does, where
    the client last heard another, and nothing where it heard that one (a report of the pool's value dropped)."""
    for k, v, _ in back:
        if k in s.params:
            held.emit[k] = (None, False) if held.heard.get(k, c.want.get(k)) == v else (v, True)
    if _sorts_reports(s.params.get("server_version", "")):
        held.emit = dict(sorted(held.emit.items(), key=lambda e: e[0].lower()))


def _as_reported(held: Held, c: ClientPeer) -> bytes:
    out = []
    for k, (v, synced) in held.emit.items():
        if v is not None:
            out.append(m.parameter_status(k, v))
            if synced:
                c.param_synced(k, v)
            else:
                c.param_changed(k, v)
    return b"".join(out)


def _sorts_reports(version: str) -> bool:
    """PostgreSQL before 16 sends a request's reports sorted by name (it walks its sorted table of settings);
    16 and later in the reverse order of the changes, which the pooler cannot know for one the server did not
    report: it goes after the server's."""
    return 0 < server_major(version) < 16


def waiting(s: Server) -> bool:
    """A ReadyForQuery is held for the settings read back (at_ready)."""
    return s.held_ps is not None and s.held_ps.ready is not None


def tell(s: Server, c: ClientPeer, final: Mapping[str, str] | None) -> None:
    """The settings were read back (`final`: the session's reported settings as PostgreSQL would have them; None:
    they could not be read): tell the client each one whose value is not what it last heard, in PostgreSQL's
    order where it is known (_sorts_reports; else the server's), then the held ReadyForQuery. Session mode
    notes what it told (transaction mode's check replaces the client's settings as a whole:
    ClientBase._follow)."""
    held, s.held_ps = s.held_ps, None
    if held is None:
        return
    if final is None:
        out = _as_reported(held, c)
    else:
        parts = []
        keys = list(held.heard)
        if _sorts_reports(s.params.get("server_version", "")):
            keys.sort(key=str.lower)
        for k in keys:
            heard = held.heard[k]
            if k in READ_ONLY:  # (no setting the read-back gives: `is_superuser` after SET ROLE, as reported)
                v = held.emit[k][0] if k in held.emit else None
            else:
                v = final.get(k, s.params.get(k))
            if v is not None and heard is not None and v != heard:
                parts.append(m.parameter_status(k, v))
                if not c.transaction_mode:
                    c.param_changed(k, v)
        out = b"".join(parts)
    ready = held.ready or b""
    lsn = c.lsn
    if lsn is not None and (lsn.queue or lsn.notified) and ready[5:] == b"I" and not c.pending and not c.raw:
        # A listening client: its notifications go before the reports, as PostgreSQL sends them, and when its
        # transaction may have notified it, all of it waits for the LISTEN connection's round trip (listening.py).
        c.write(lsn.before_ready(c, out + ready))
        return
    c.write(out + ready)
