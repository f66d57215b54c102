"""ServerHolder: in transaction mode with pool_size 2, make each step of the clients under test run on the other
server than the step before, and check through the admin console that it did.

Two helper connections of the same pool take turns: to move, the free helper takes the only idle server (the
one the last step used) in an open transaction, then the other helper lets its own server go; the next step
finds that one, the other server, idle. (Letting go first and taking afterwards would take back the server
just let go: idle servers are handed out most recent first.) A move waits until every client under test has
read a ReadyForQuery 'I' as the last thing it read since it last sent: inside a transaction block, a failed
one, after a Flush or during COPY the client keeps its server and the helper would wait for one.

The check: SHOW SERVERS' transaction_count of each server is read before and after every move. Between two
moves only the clients under test run transactions, so the servers whose count grew are the ones they used:
at most one, and not the one the interval before used. ``switches`` counts the intervals so checked.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.support.cluster import ADMIN_PASSWORD, ADMIN_USER, DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.wire import Message, WireClient


class ServerHolder:
    """``enabled=False``: does nothing (session mode, pool_size 1). ``move()`` after each step; ``close()``."""

    def __init__(self, host: str, port: int, clients: Sequence[WireClient], enabled: bool = True,
                 user: str = SCRAM_USER, password: str = SCRAM_PASSWORD, database: str = DBNAME) -> None:
        self.helpers: list[WireClient] = []
        self.held = [False, False]
        self.next = 0
        self.ready = [True] * len(clients)
        self.switches = 0
        self.used: list[str | None] = []  # the server (backend pid) each checked interval ran on
        self.admin: WireClient | None = None
        if not enabled:
            return
        try:
            self.helpers = [WireClient.connect(host, port, user, database, password) for _ in range(2)]
            self.admin = WireClient.connect(host, port, ADMIN_USER, "pgdoorman", ADMIN_PASSWORD)
        except BaseException:
            self.close()
            raise
        for n, c in enumerate(clients):
            self._watch(c, n)
        self.counts = self._counts()

    def _watch(self, c: WireClient, n: int) -> None:
        send, read = c.send, c.read_message

        def watched_send(*chunks: bytes) -> None:
            self.ready[n] = False
            send(*chunks)

        def watched_read(timeout: float | None = None) -> Message:
            t, body = read(timeout)
            self.ready[n] = t == "Z" and body == b"I"
            return t, body

        c.send = watched_send  # type: ignore[method-assign]
        c.read_message = watched_read  # type: ignore[method-assign]

    def _counts(self) -> dict[str, int]:
        assert self.admin is not None
        return {r[1] or "": int(r[8] or 0) for r in self.admin.query_rows("SHOW SERVERS")}

    def _check_interval(self) -> None:
        now = self._counts()
        used = sorted(pid for pid, n in now.items() if n > self.counts.get(pid, 0))
        assert len(used) <= 1, f"the steps since the last move ran on servers {used}, not one"
        last = self.used[-1] if self.used else None
        if used and last is not None:
            assert used[0] != last, f"two steps in a row ran on server {last}: the holder did not switch"
            self.switches += 1
        # A step the pooler answered alone used no server: the one after it may find the same one as before.
        self.used.append(used[0] if used else None)

    def move(self) -> None:
        if not self.helpers or not all(self.ready):
            return
        self._check_interval()
        i = self.next
        self.helpers[i].query("begin")
        self.helpers[i].query_rows("select 1")
        self.held[i] = True
        if self.held[1 - i]:
            self.helpers[1 - i].query("commit")
            self.held[1 - i] = False
        self.next = 1 - i
        self.counts = self._counts()

    def close(self) -> None:
        for h, held in zip(self.helpers, self.held, strict=False):
            try:
                if held:
                    h.query("commit")
            finally:
                h.close()
        if self.admin is not None:
            self.admin.close()
