"""Session mode's RESET. On PostgreSQL, `RESET name`, `RESET ALL` and `DISCARD ALL` return a setting to its
value at the session's start: the one the client's startup packet gave. A pooled server started for the pool,
and the client's startup settings were set on it with set_config() (core/params.py), so there a RESET returns
them to the pool's values instead. So after the transaction that ran a RESET (ServerConn._note_tag:
DIRTY_RESTORE), before the client's next statement reaches the server, the settings its session holds are read
back (core/txstate.py's query, as transaction mode's check reads them) and the startup settings the RESET took
away are set again (the RESET's own report already told the client the startup value: ServerConn._on_parameter),
their ParameterStatus sent to the client if it has not heard them. The same runs after a SET that took a
reported startup setting to the pool's value (ServerConn._on_parameter): it may have been `SET name TO DEFAULT`.
Inside a transaction block (and for `SET name TO DEFAULT` of a setting PostgreSQL does not report) the request's
text says what it reset: session/txresets.py. What stays different: docs/transparency.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from pgdoorman.core import txstate
from pgdoorman.core.params import set_config_call
from pgdoorman.protocol import messages as m
from pgdoorman.session import reports
from pgdoorman.session.peer import ClientPeer
from pgdoorman.session.states import DIRTY_RESTORE

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.server import ServerConn

log = logging.getLogger("pgdoorman.client")


class Session(ClientPeer, Protocol):
    """What of a session-mode client (ClientConn) this module reads and calls, besides what its server does."""

    addr: str
    user: str
    database: str
    pool: Pool | None
    want_base: dict[str, str]
    customs: tuple[str, ...]

    def _server_ready(self) -> None: ...


def restore(c: Session, s: ServerConn) -> bool:
    """Session mode, `s` (`c`'s, for the whole session) idle after a transaction that ran a RESET: read the
    session's settings back, then set again the startup settings it lost. True: `s` stays with `c`. (Never
    with a cancel request on its way: Worker.release_server waits for it first, ServerWrapped.wait_for_cancel.)"""
    s.dirty &= ~DIRTY_RESTORE
    q = txstate.settings_query(sorted(set(txstate.customs_to_read(c.want, c.customs))))
    s.run_internal([q], lambda ok: _read(c, s, ok), rows=True, extended=True)  # (the client's unnamed statement stays)
    return True


def _read(c: Session, s: ServerConn, ok: bool) -> None:
    rows, s.internal_rows = s.internal_rows or [], None
    # The settings a RESET reported (ServerConn._on_parameter), with the values the client last heard of them
    # (`want`: what was passed on since, a ROLLBACK's or a later SET's report, included).
    told = {k: c.want.get(k, t) for k, t in s.untold[1].items()} if s.untold is not None and s.untold[0] is c else {}
    s.untold = None
    if s.client is not c or c.closed:
        s.held_ps = None
        return
    lost: dict[str, str] = {}
    if ok:
        pool = c.pool
        login_user = pool.server_params.get("session_authorization") if pool and pool.server_params else None
        session, _, customs = txstate.read_rows(rows, login_user)
        lost = txstate.lost_at_reset(reports.startup_keys(c), c.want_base, session, customs)
    else:
        log.warning("client %s (%s@%s): its settings could not be read back after a RESET: %s", c.addr, c.user,
                    c.database, (s.internal_error or {}).get("M"))
    if reports.waiting(s):  # its ReadyForQuery waits: told with it, once the settings are right
        told = {}
    stale = [m.parameter_status(k, v) for k, t in told.items()
             if k not in lost and (v := s.params.get(k)) is not None and v != t]
    if stale:  # (not put back: the client must hear the value its session has now)
        c.write(b"".join(stale))
    if not lost:
        reports.tell(s, c, s.params if ok else None)
        c._server_ready()  # what the client sent meanwhile
        return
    before = {k: told.get(k, s.params.get(k)) for k in lost}  # as the client last heard them
    calls = ", ".join(set_config_call(k, v) for k, v in lost.items())
    s.run_internal(["SELECT " + calls], lambda ok: _restored(c, s, ok, before), extended=True)


def _restored(c: Session, s: ServerConn, ok: bool, before: dict[str, str | None]) -> None:
    if s.client is not c or c.closed:
        s.held_ps = None
        return
    if not ok:
        log.warning("client %s (%s@%s): its startup settings could not be set again after a RESET: %s", c.addr,
                    c.user, c.database, (s.internal_error or {}).get("M"))
    if reports.waiting(s):
        reports.tell(s, c, s.params)  # what PostgreSQL would have reported, then the held ReadyForQuery
    else:
        news = [m.parameter_status(k, v) for k, b in before.items()
                if (v := s.params.get(k)) is not None and v != b]
        if news:
            c.write(b"".join(news))
    c._server_ready()
