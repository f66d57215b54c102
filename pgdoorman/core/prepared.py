"""Transparent prepared statements for transaction pooling.

Every Parse a client sends (named or unnamed) is mapped to a pooler-owned server-side name
`DOORMAN_<n>`, shared by all clients of the pool that prepare the same statement (same text, same
parameter types, same planner-relevant startup settings). A statement is parsed on a server only once;
when a client binds or describes a statement the server it holds does not have, the Parse is injected
just before, in the same batch, and its ParseComplete swallowed. When a Parse is skipped because the
server already has it, a synthetic ParseComplete is spliced into the response stream at the place
PostgreSQL would have put it.

Ordering is kept by a per-client queue of expected responses (one entry per frontend message that
PostgreSQL answers, plus synthetic and swallowed entries); the server-side relay walks it as responses
arrive (session/rewrite.py and rewrite_replies.py: one Rewriter per client).

Three caches: the pool's (statement key -> Statement, LRU of `prepared_statements_cache_size`), the
client's (its names -> Statement, as PostgreSQL would keep them for its session) and each server's LRU
of names it holds (`server_prepared_statements_cache_size`; evicted names are deallocated when the
server is next returned to the pool, never under a batch that may still bind them).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import OrderedDict, deque
from typing import Any

from pgdoorman.core import leaks, listen
from pgdoorman.core.leaks import may_leave_state
from pgdoorman.core.sqllex import resetting_steps, statement_settings
from pgdoorman.protocol import messages as m

# Entry kinds of the expected-response queue.
# bytes to emit to the client when everything before them has been answered; or (bytes, (name, previous)) for
# a client's Parse or Close answered here, undone (name means previous again) when PostgreSQL skips it
SYNTH = 0
PARSE = 1      # (statement, name, previous): ParseComplete or ErrorResponse; on error the statement is forgotten
INJECT = 2     # our own Parse: swallow ParseComplete; on error forget it on this server
BIND = 3
DESC_S = 4     # ParameterDescription, then RowDescription or NoData
DESC_P = 5     # RowDescription or NoData
EXEC = 6       # ... CommandComplete, EmptyQueryResponse or PortalSuspended
CLOSE = 7
SYNC = 8       # ReadyForQuery
QUERY = 9      # simple query: everything through ReadyForQuery
FUNC = 10      # function call: FunctionCallResponse through ReadyForQuery
DUP = 11       # (statement, name): a Parse of a name the client holds, sent to fail as PostgreSQL fails it (42P05)
UNPARSE = 12   # our own Close of a statement about to be parsed again: swallow CloseComplete
MALFORMED = 13  # a message sent on untouched for PostgreSQL to refuse (ErrorResponse, then the skip to Sync)
PARSE_ANY = 14  # prepared_statements off: a client's Parse sent untouched (session/tracking.py): ParseComplete
INJ_SYNC = 15  # our own Sync after an INJECT before a SQL EXECUTE: swallow ReadyForQuery; data True once that Parse failed

# Response types that complete an entry of each kind (ReadyForQuery and ErrorResponse are handled apart).
TERMINAL: tuple[frozenset[int], ...] = (
    frozenset(),                # SYNTH
    frozenset(b"1"),            # PARSE: ParseComplete
    frozenset(b"1"),            # INJECT
    frozenset(b"2"),            # BIND: BindComplete
    frozenset(b"Tn"),           # DESC_S: ParameterDescription first, then RowDescription or NoData
    frozenset(b"Tn"),           # DESC_P
    frozenset(b"CIs"),          # EXEC: CommandComplete, EmptyQueryResponse, PortalSuspended
    frozenset(b"3"),            # CLOSE: CloseComplete
    frozenset(),                # SYNC: ReadyForQuery
    frozenset(),                # QUERY
    frozenset(),                # FUNC
    frozenset(b"1"),            # DUP (always answered by an ErrorResponse)
    frozenset(b"3"),            # UNPARSE
    frozenset(),                # MALFORMED
    frozenset(b"1"),            # PARSE_ANY
    frozenset(),                # INJ_SYNC: ReadyForQuery
)
SWALLOWED = frozenset((INJECT, UNPARSE))

# Settings given at connection start that change what a statement means; part of the cache key so that
# clients with another search_path never share a plan (and never get rows from the wrong schema).
PLANNER_PARAMS = ("search_path", "default_transaction_isolation", "default_transaction_read_only",
                  "default_text_search_config", "role", "plan_cache_mode")

_names = itertools.count(1)  # process-wide: a name is never reused, even after eviction


# `DEALLOCATE [PREPARE] name | ALL`, alone: of a client's protocol-level statements it is answered by the pooler
# (their server copies are shared), as a simple query (Rewriter._deallocate) or prepared (Statement.dealloc).
DEALLOCATE_TEXT = re.compile(rb"^\s*deallocate\s+(?:prepare\s+)?(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$", re.I)


class Statement:
    __slots__ = ("name", "parse_msg", "query", "key", "uses", "dead", "leaves", "listen", "named", "seen",
                 "idle_since", "settings", "dealloc", "resets")

    def __init__(self, key: tuple[bytes, bytes, tuple[str, ...]], query: bytes, types: bytes) -> None:
        self.key = key
        self.name = b"DOORMAN_%d" % next(_names)
        self.query = query
        self.uses = 0
        self.dead = False  # forgotten by the pool (failed Parse, result type changed): never reuse
        # The query interner's view (PoolCache.sweep): a client prepared it under a name (else only unnamed,
        # dropped from the cache once idle past query_interner_anon_idle_ttl_seconds); `uses` at the last sweep,
        # and since when (monotonic) it has not moved.
        self.named = False
        self.seen = -1
        self.idle_since = 0.0
        self.leaves = may_leave_state(query)  # leaks.PINS | leaks.SETTINGS bits
        # The custom settings it names (read back when a transaction that bound it ends, core/txstate.py).
        self.settings = statement_settings(query)  # (an int: set_config($n + 1, ...), named at each Bind)
        if self.settings:
            self.leaves |= leaks.CUSTOM
        # What it returns to its default (sqllex.resetting_steps), noted at each Bind (session/txresets.py).
        self.resets = resetting_steps(query)
        if self.resets is not None:
            self.leaves |= leaks.RESETS
        # LISTEN, UNLISTEN or DISCARD ALL (core/listen.py): flagged in `leaves` too (leaks.LISTENS, no cleanup), so
        # that binding it takes the same rare branch; a LISTEN is parsed on servers as LISTEN of a channel nobody
        # notifies.
        mt = DEALLOCATE_TEXT.match(query) if query[:1] in b"dD \t\r\n" else None
        self.dealloc: bytes | None = None if mt is None else mt.group(1)  # the name DEALLOCATE gives (or ALL)
        if mt is not None:
            self.leaves |= leaks.DEALLOC
        self.listen = listen.statement(query)
        if self.listen is not None:
            self.leaves |= leaks.LISTENS
            query = listen.server_text(self.listen, query)
        body = self.name + b"\x00" + query + b"\x00" + types
        self.parse_msg = b"P" + m.U32.pack(len(body) + 4) + body


class PoolCache:
    """Statements of one pool, shared by its clients across workers."""

    def __init__(self, size: int) -> None:
        self.lock = threading.Lock()
        self.size = max(1, size)
        self.entries: OrderedDict[tuple[bytes, bytes, tuple[str, ...]], Statement] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        # Each client's LRU of its unnamed statements (session/rewrite_replies.py RewriterBase.anon): its size
        # (client_anonymous_prepared_cache_size; 0: no limit) and the entries all clients evicted from theirs.
        self.anon_size = self.size
        self.anon_evictions = 0
        self.ttl_evictions = 0  # entries sweep() dropped: prepared unnamed only, idle past the TTL

    def get(self, query: bytes, types: bytes, sig: tuple[str, ...]) -> Statement:
        key = (query, types, sig)
        with self.lock:
            st = self.entries.get(key)
            if st is not None:
                self.entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
                st = Statement(key, query, types)
                self.entries[key] = st
                # Evicting here never closes anything: clients and servers keep their references.
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)
            st.uses += 1
            return st

    def peek(self, query: bytes, types: bytes, sig: tuple[str, ...]) -> Statement | None:
        """The statement if some client already prepared it successfully (a failed Parse is forgotten).
        Counts nothing: the caller may still decide to send the Parse (see count_hit)."""
        key = (query, types, sig)
        with self.lock:
            st = self.entries.get(key)
            if st is not None:
                self.entries.move_to_end(key)
            return st

    def count_hit(self, st: Statement) -> None:
        """A statement found without get() was really used. Statistics only: no lock on this hot path
        (under free-threading a concurrent increment may rarely be lost)."""
        self.hits += 1
        st.uses += 1

    def forget(self, st: Statement) -> None:
        st.dead = True
        with self.lock:
            if self.entries.get(st.key) is st:
                del self.entries[st.key]

    def invalidate(self) -> None:
        """Forget every statement (DDL ran): the next Parse of each text makes a new one, parsed afresh on
        the server. Clients keep what they prepared by name, as PostgreSQL keeps a session's statements."""
        with self.lock:
            for st in self.entries.values():
                st.dead = True
            self.entries.clear()
            self.invalidations += 1

    def sweep(self, now: float, ttl: float) -> int:
        """query_interner_anon_idle_ttl_seconds, called every query_interner_gc_interval_seconds / 4: forget the
        statements no client ever named whose use count has not moved for `ttl` seconds (seen at two sweeps at
        least `ttl` apart). Their text goes with the last reference: the clients and servers that still hold one
        keep using it (nothing is closed); the next Parse of that text makes a new entry. How many went."""
        dropped = 0
        with self.lock:
            for key, st in list(self.entries.items()):
                if st.named:
                    continue
                if st.uses != st.seen:
                    st.seen = st.uses
                    st.idle_since = now
                elif now - st.idle_since >= ttl:
                    del self.entries[key]
                    dropped += 1
            self.ttl_evictions += dropped
        return dropped

    def drop_anonymous(self) -> int:
        """RESET INTERNER: forget every statement no client ever named, now (as an expired TTL would)."""
        with self.lock:
            gone = [k for k, st in self.entries.items() if not st.named]
            for k in gone:
                del self.entries[k]
        return len(gone)

    def snapshot(self) -> list[Statement]:
        with self.lock:
            return list(self.entries.values())


def take_synth(rq: deque[tuple[int, Any]]) -> bytearray | None:
    """Pop the synthetic responses at the head of a client's expected-response queue: their bytes, or None
    when the head is not synthetic (everything before them has been answered, so they are due now)."""
    if not rq or rq[0][0] != SYNTH:
        return None
    out = bytearray()
    while rq and rq[0][0] == SYNTH:
        data = rq.popleft()[1]
        out += data if isinstance(data, bytes) else data[0]
    return out


def deallocate_queries(names: list[bytes]) -> list[str]:
    """The DEALLOCATE of a server's evicted statements, at check-in. The names are quoted: DOORMAN_n unquoted
    would be folded to doorman_n, which does not exist (26000, and the server would be closed)."""
    if not names:
        return []
    return ["; ".join(f'DEALLOCATE "{n.decode()}"' for n in names)]
