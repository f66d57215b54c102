"""A RESET inside a transaction block put right at once (session/txresets.py): what a text resets
(sqllex.reset_steps), the SET statements that give the startup values back, and what the client gets when the
server refuses one. The end-to-end comparison with PostgreSQL is
tests/integration/test_transparency.py::test_a_reset_inside_a_transaction_block_reads_the_startup_value."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pgdoorman.core import sqllex
from pgdoorman.session import txresets
from pgdoorman.session.client import ClientConn
from pgdoorman.session.server import INTERNAL, ServerConn
from tests.support.app import linked_pair
from tests.support.wire import frame, parse_fields, query, split_messages

R, S, L = sqllex.RESET_STEP, sqllex.SET_STEP, sqllex.LOCAL_STEP


@pytest.mark.parametrize(("text", "steps"), [
    (b"RESET ALL\0", [("*", R)]),
    (b"reset TimeZone", [("timezone", R)]),
    (b"SET LOCAL timezone TO DEFAULT", [("timezone", R | L)]),
    (b"set time zone local", [("timezone", R)]),
    (b"SET TIME ZONE 'UTC'", [("timezone", S)]),
    (b"set search_path = default; select set_config('work_mem', '1MB', false)", [("search_path", R), ("work_mem", S)]),
    (b"SET SESSION AUTHORIZATION DEFAULT", [("session_authorization", R)]),
    (b"SET NAMES DEFAULT", [("client_encoding", R)]),
    (b"SET schema 'x'", [("search_path", S)]),
    (b'set "MyApp"."X" TO default', [("myapp.x", R)]),
    (b"SET datestyle TO default, mdy", [("datestyle", S)]),
    (b"SET TRANSACTION READ ONLY", []),
    (b"SET session.x = default", [("session.x", R)]),
    (b"reset all; rollback to a", [("*", R), ("!", S)]),
    (b"reset all; commit; begin", [("*", R), ("|", S)]),
    (b"reset work_mem; select set_config($1, $2, false)", [("work_mem", R), ("?", S)]),
    (b"select 'reset all' /* set x to default */", []),
])
def test_reset_steps(text: bytes, steps: list[tuple[str, int]]) -> None:
    assert sqllex.reset_steps(text) == steps


class _Client:
    settings = {"TimeZone": "Asia/Tokyo", "search_path": 's1, "My Schema",PUBLIC', "work_mem": "7MB",
                "transaction_isolation": "serializable", "myapp.x": "it's"}
    want_base = {**settings, "application_name": ""}


class _Pool:
    server_params = {"TimeZone": "Etc/UTC", "application_name": "pg_doorman"}


def _sets(text: bytes, block: bool = True) -> list[str]:
    steps = sqllex.reset_steps(text)
    return [q for _, _, q in txresets.statements(_Client(), _Pool(), steps, block)]  # type: ignore[arg-type]


def test_the_statements_give_back_the_startup_values() -> None:
    assert _sets(b"reset all") == [
        """SET "TimeZone" TO E'Asia/Tokyo'""",
        """SET "search_path" TO E's1', E'My Schema', E'public'""",  # (each element quoted again by SET)
        """SET "work_mem" TO E'7MB'""",
        """SET "myapp"."x" TO E'it''s'""",
        """SET "application_name" TO E''""",
    ]  # (never a transaction_* setting: 25001 after the transaction's first query)
    assert _sets(b"set local work_mem to default") == ["""SET LOCAL "work_mem" TO E'7MB'"""]
    assert _sets(b"reset work_mem; set work_mem = '1MB'") == []  # (changed after its reset: left alone)
    assert _sets(b"reset work_mem; rollback to a") == []
    assert _sets(b"reset timezone; commit; begin; reset work_mem") == ["""SET "work_mem" TO E'7MB'"""]
    assert _sets(b"reset lock_timeout") == []  # (no startup setting)


def test_a_set_local_outside_a_block_is_left_out() -> None:
    """A request that ended outside a transaction block (session mode puts its resets back too): its SET
    LOCAL did nothing that lasts (PostgreSQL warns, and the value after it is the one before), a plain reset
    before or after it counts."""
    assert _sets(b"set local work_mem to default", block=False) == []
    assert _sets(b"set work_mem to default; set local work_mem to default", block=False) == [
        """SET "work_mem" TO E'7MB'"""]
    assert _sets(b"set local timezone to default; reset work_mem", block=False) == ["""SET "work_mem" TO E'7MB'"""]


@pytest.fixture()
def tokyo() -> Iterator[tuple[ClientConn, ServerConn, socket.socket, socket.socket]]:
    """A transaction-mode client that started with TimeZone Asia/Tokyo, on a pool whose servers have Etc/UTC."""
    with linked_pair(ps=False) as (client, server, c_peer, s_peer):
        server.pool.server_params = {"TimeZone": "Etc/UTC"}
        server.params = {"TimeZone": "Asia/Tokyo"}
        client.settings = {"TimeZone": "Asia/Tokyo"}
        client.want_base = client.want = {"TimeZone": "Asia/Tokyo"}
        client.want_key = server.synced_key = tuple(client.want.items())
        yield client, server, c_peer, s_peer


def _read(peer: socket.socket) -> list[Any]:
    peer.settimeout(1)
    return list(split_messages(peer.recv(65536)))


def test_a_refused_put_back_reaches_the_client_as_an_error(tokyo: Any) -> None:
    """The server refuses our SET (its transaction fails): the client hears why, and a ReadyForQuery that says
    its transaction failed, not a success followed by 25P02 with no cause."""
    client, server, c_peer, s_peer = tokyo
    q = query("reset timezone")
    client._consume(memoryview(q), len(q))
    assert s_peer.recv(65536) == q
    s_peer.sendall(frame("C", b"RESET\0") + frame("S", b"TimeZone\0Etc/UTC\0") + frame("Z", b"T"))
    server.on_event(1)
    assert server.state == INTERNAL and b"""SET "TimeZone" TO E'Asia/Tokyo'""" in s_peer.recv(65536)
    assert _read(c_peer) == [("C", b"RESET\0")]  # (its report and ReadyForQuery wait)
    s_peer.sendall(frame("3") + frame("1") + frame("2") + frame("E", b"SERROR\0C22023\0Mno such zone\0\0")
                   + frame("Z", b"E"))
    server.on_event(1)
    got = _read(c_peer)
    assert [t for t, _ in got] == ["E", "Z"] and got[-1] == ("Z", b"E")  # (TimeZone: the client heard Tokyo)
    assert parse_fields(got[0][1])["C"] == "22023" and client.last_status == 69
