"""A listening client's queued notifications at a ReadyForQuery (session/listening.py ListenState.before_ready).
End to end against PostgreSQL: tests/integration/test_listen_notify.py."""

from __future__ import annotations

import struct
from types import SimpleNamespace

from pgdoorman.core import listen as ls
from pgdoorman.protocol import messages as m
from pgdoorman.session.listening import ListenState


def test_own_notifications_wait_for_the_last_ready_for_query_of_a_pipeline() -> None:
    """ListenState.before_ready at a ReadyForQuery with requests pipelined behind it: notifications another
    backend sent go out, the client's own server's stay queued (a later request of the pipeline may have sent
    them: `LISTEN ch` and `NOTIFY ch` pipelined, its notification delivered early by the LISTEN connection's
    thread); at the last ReadyForQuery they go too."""
    def note(pid: int, ch: bytes) -> bytes:
        return m.msg(b"A", struct.pack("!I", pid) + ch + b"\x00p\x00")

    st = ListenState(ls.Channels("pool"), 0)
    st.channels = {b"ch", b"other"}
    mine, theirs = note(4242, b"ch"), note(7, b"other")
    st.queue.extend([(b"ch", mine), (b"other", theirs)])
    z = m.ready_for_query(b"I")
    c = SimpleNamespace(expect=1, rw=SimpleNamespace(rq=[]), server=SimpleNamespace(pid=4242), closed=False)
    assert st.before_ready(c, z) == theirs + z
    assert list(st.queue) == [(b"ch", mine)]
    c.expect = 0
    assert st.before_ready(c, z) == mine + z and not st.queue
