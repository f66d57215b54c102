"""DEALLOCATE of a client's protocol-level statements (transparent prepared statements): answered by the pooler,
since the server copies are the pool's and shared (docs/prepared-statements.md), as a simple query or as a
prepared statement; the transaction snapshot PostgreSQL's DEALLOCATE, or its Parse of a query, takes where the
pooler answers one itself in a transaction block (snapshot_parse). A part of RewriterBase (session/rewrite_replies.py).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pgdoorman.core import prepared as ps
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import HOLD
from pgdoorman.session.states import DIRTY_PREPARE

_CLOSE_UNNAMED = m.msg(b"C", b"S\x00")
_SNAPSHOT = ps.Statement((b"SELECT", b"\x00\x00", ()), b"SELECT", b"\x00\x00")  # what takes a snapshot


class _NoNames(dict[bytes, Any]):
    """The statement names of a client that never named one: always empty, shared, and loud if anything is
    added (Rewriter.define gives a client its own dict at its first named Parse)."""

    def __setitem__(self, k: bytes, v: Any) -> None:
        raise RuntimeError("statement named in the shared empty table")

    def setdefault(self, k: bytes, v: Any = None) -> Any:
        raise RuntimeError("statement named in the shared empty table")

    def update(self, *a: Any, **kw: Any) -> None:
        raise RuntimeError("statement named in the shared empty table")


NO_NAMES: dict[bytes, ps.Statement] = _NoNames()


class Deallocating:
    """RewriterBase's DEALLOCATE (its fields and methods, declared here, are RewriterBase's and Rewriter's)."""

    __slots__ = ("named", "win", "holding", "dealloc_portal")  # (RewriterBase's, assigned here too)
    relay: Any  # rewrite_replies.Relay
    rq: deque[tuple[int, Any]]
    named: dict[bytes, ps.Statement]
    win: int
    holding: bool
    dealloc_portal: tuple[bytes, bytes] | None

    def lookup(self, name: bytes) -> ps.Statement | None:
        raise NotImplementedError  # (RewriterBase's)

    def define(self, name: bytes, st: ps.Statement | None) -> None:
        raise NotImplementedError  # (RewriterBase's)

    def forget_statements(self) -> None:
        raise NotImplementedError  # (RewriterBase's)

    def _track(self) -> deque[tuple[int, Any]]:
        raise NotImplementedError  # (Rewriter's)

    def on_header(self, t: int, ln: int) -> None:
        raise NotImplementedError  # (Rewriter's)

    def hold(self) -> bytes:
        """The message being read, and what follows it, wait until the answers in flight before it came
        (RewriterBase._waits, DEALLOCATE): the relay feeds them again after `relay.resume_held` (_resume)."""
        self.holding = True
        self.relay.expect += 1  # (so the server stays: given back by relay.resume_held)
        return HOLD

    def snapshot_parse(self, st: ps.Statement) -> bytes:
        """What takes the snapshot PostgreSQL's Parse of a query or DEALLOCATE takes, for one answered here in a
        transaction block: `st`'s text parsed as the unnamed statement, then closed, both answers swallowed (an
        error, should the text fail now, is the client's, as PostgreSQL's Parse would fail)."""
        self.rq.extend(((ps.INJECT, st), (ps.UNPARSE, None)))  # (the server keeps no unnamed statement of ours)
        rest = st.parse_msg[5 + len(st.name) :]  # (an unnamed Parse's body: "", the text, the types)
        return b"P" + m.U32.pack(len(rest) + 4) + rest + _CLOSE_UNNAMED

    # ------------------------------------------------------------------ DEALLOCATE
    def deallocate(self, ident: bytes) -> bytes | None:
        """Simple-query DEALLOCATE of the client's own statements, answered here (dealloc_here); behind requests in
        flight (one may fail the transaction: PostgreSQL refuses it then, 25P02), once they are answered (held as
        _waits holds); in a transaction block with a snapshot taken (snapshot_parse, then our Sync: INJ_SYNC)."""
        if self.relay.expect > 0:
            self._track()  # (the server relay walks the queue: its ReadyForQuery resumes the held message)
            return self.hold()
        tag = self.dealloc_here(ident)
        if tag is None:
            self.on_header(81, 0)
            return None  # PostgreSQL answers
        s = self.relay.server
        status = s.txn_status if s is not None else 73
        rq = self._track()
        pre = b""
        if status == 84:
            pre = self.snapshot_parse(_SNAPSHOT) + m.SYNC
            self.win += 1
            rq.append((ps.INJ_SYNC, None))
        rq.append((ps.SYNTH, m.command_complete(tag) + m.ready_for_query(bytes([status]))))
        return pre

    def dealloc_here(self, ident: bytes) -> str | None:
        """`DEALLOCATE ident` (a name as SQL spells it, or ALL) of this client's protocol-level statements: done
        here (their server copies are shared), returning its CommandComplete tag; None when PostgreSQL must
        answer it: in a failed transaction (25P02: nothing is deallocated), for a name the client does not hold
        (26000 in PostgreSQL's words; or its own SQL-PREPAREd statement on a pinned server), and for ALL when
        the server holds SQL-PREPAREd statements of the client's (PostgreSQL deallocates them too)."""
        if self._surely_failed():
            return None
        if ident.lower() == b"all":
            self.forget_statements()
            held = self.relay.server
            return None if held is not None and held.dirty & DIRTY_PREPARE else "DEALLOCATE ALL"
        name = self._dealloc_name(ident)
        if name is None:
            return None
        self.define(name, None)
        return "DEALLOCATE"

    def _surely_failed(self) -> bool:
        """The last ReadyForQuery said the transaction failed, and nothing sent since is unanswered or queued:
        PostgreSQL refuses what comes now (25P02) but a statement that ends the transaction."""
        relay = self.relay
        return relay.last_status == 69 and not relay.expect and not self.rq

    def _dealloc_name(self, ident: bytes) -> bytes | None:
        """The client's statement `ident` names: folded to lower case unless quoted (and as written, for a name
        a driver prepared in capitals); None when it holds no such statement."""
        name = ident[1:-1].replace(b'""', b'"') if ident[:1] == b'"' else ident.lower()
        if name in self.named:
            return name
        return ident if ident[:1] != b'"' and ident in self.named else None

    def dealloc_bind(self, st: ps.Statement, portal: bytes, rq: deque[tuple[int, Any]]) -> bytes | None:
        """A Bind of a prepared `DEALLOCATE ident` (psycopg evicts its statements so in pipeline mode, with a
        libpq before 17): b"" when it is answered here, as the simple query is (BindComplete now, the Execute's
        CommandComplete by dealloc_exec); HOLD behind requests in flight (as `deallocate` waits); None: sent on,
        PostgreSQL answers (dealloc_here's cases)."""
        ident = st.dealloc
        if ident is None or self._surely_failed():
            return None
        if ident.lower() == b"all":
            held = self.relay.server
            if held is not None and held.dirty & DIRTY_PREPARE:
                return None
        elif self._dealloc_name(ident) is None:
            return None
        if self.relay.expect > 0:
            return self.hold()
        rq.append((ps.SYNTH, m.BIND_COMPLETE))
        self.dealloc_portal = (portal, ident)
        return b""

    def dealloc_exec(self, body: memoryview, rq: deque[tuple[int, Any]]) -> bytes | None:
        """An Execute: of the portal dealloc_bind answered, it deallocates here and is answered with
        CommandComplete (undone by _skipped if PostgreSQL skips it after an earlier error in its batch); in a
        transaction block the server takes the snapshot PostgreSQL's DEALLOCATE takes (snapshot_parse)."""
        portal, ident = self.dealloc_portal or (b"", b"")
        if bytes(body[: len(body) - 5]) != portal:
            return None
        self.dealloc_portal = None
        self.relay.unsynced = True
        out = self.snapshot_parse(_SNAPSHOT) if self.relay.last_status == 84 else b""
        if ident.lower() == b"all":
            rq.append((ps.SYNTH, (m.command_complete("DEALLOCATE ALL"), (None, self.named, None))))
            self.named = NO_NAMES  # (not the unnamed statement: see forget_statements)
            return out
        name = self._dealloc_name(ident) or ident  # (closed since its Bind: nothing to drop)
        rq.append((ps.SYNTH, (m.command_complete("DEALLOCATE"), (name, self.lookup(name), None))))
        self.define(name, None)
        return out

