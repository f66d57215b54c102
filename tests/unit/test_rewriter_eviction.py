"""A server's statements beyond server_prepared_statements_cache_size are evicted (ServerPrepared.remember) and
DEALLOCATEd when it goes back to the pool; until then they are still on the server. The rewriter on its own
(tests/unit/test_rewriter.py's Pair) with a server record capped at 2, as ServerConn caps it: a statement
evicted during the client's hold and used again is taken back, not parsed a second time (PostgreSQL would
answer 42P05), and not DEALLOCATEd; one whose Parse was skipped is not DEALLOCATEd either (it may not exist).
The live comparison with PostgreSQL is tests/integration/test_server_ps_eviction.py."""

from __future__ import annotations

from pgdoorman.core import prepared as ps
from pgdoorman.protocol import messages as m
from pgdoorman.session.server_prepared import ServerPrepared
from tests.support.wire import bind, describe, execute, frame, parse, query, sync
from tests.unit.test_rewriter import OK_ROW, RFQ, FakeHeld, Pair, error, types


class CappedHeld(FakeHeld):
    """FakeHeld whose `remember` is ServerConn's own: at most `ps_cap` statements, the oldest evicted."""

    def __init__(self, cap: int = 2) -> None:
        super().__init__()
        self.ps_cap = cap

    def remember(self, name: bytes) -> None:
        ServerPrepared.remember(self, name)  # type: ignore[arg-type]


def _pair() -> Pair:
    return Pair(held=CappedHeld())


def _names(p: Pair, *clients: str) -> list[bytes]:
    return [p.rw.named[c.encode()].name for c in clients]


def test_remember_evicts_the_oldest_and_takes_an_evicted_name_back() -> None:
    h = CappedHeld()
    for n in (b"A", b"B", b"C"):
        h.remember(n)
    assert list(h.prepared) == [b"B", b"C"] and h.evicted == [b"A"]
    h.remember(b"A")  # used again before its DEALLOCATE: held, and B (now the oldest) goes
    assert list(h.prepared) == [b"C", b"A"] and h.evicted == [b"B"]
    h.remember(b"C")  # held already: the most recent now
    assert list(h.prepared) == [b"A", b"C"] and h.evicted == [b"B"]


def test_a_statement_evicted_in_this_transaction_is_bound_without_a_second_parse() -> None:
    p = _pair()
    p.send(parse("s1", "select 1") + parse("s2", "select 2") + parse("s3", "select 3") + sync())
    p.answer(m.PARSE_COMPLETE * 3 + frame("Z", b"T"))
    d1, d2, d3 = _names(p, "s1", "s2", "s3")
    assert p.held.evicted == [d1]
    sent = p.send(bind("", "s1") + execute() + sync())
    assert types(sent) == "BES" and sent[0][1].split(b"\0")[1] == d1  # no Parse: the server still has it
    assert list(p.held.prepared) == [d3, d1] and p.held.evicted == [d2]  # what check-in DEALLOCATEs
    assert types(p.answer(m.BIND_COMPLETE + OK_ROW + frame("Z", b"T"))) == "2DCZ"


def test_eviction_of_a_parse_in_flight_in_the_same_pipeline() -> None:
    p = _pair()
    sent = p.send(parse("s1", "select 1") + parse("s2", "select 2") + parse("s3", "select 3")
                  + bind("", "s1") + execute() + describe("S", "s2") + sync())
    assert types(sent) == "PPPBEDS"  # each parsed once, the evicted ones used as they are
    d1, d2, d3 = _names(p, "s1", "s2", "s3")
    assert set(p.held.prepared) == {d1, d2} and p.held.evicted == [d3]
    got = p.answer(m.PARSE_COMPLETE * 3 + m.BIND_COMPLETE + OK_ROW + frame("t", b"\0\0") + frame("n") + RFQ)
    assert types(got) == "1112DCtnZ" and not p.rw.rq


def test_a_bind_behind_the_window_that_evicted_its_statement_waits_then_uses_it() -> None:
    """Its Parse may still be skipped (an error before it in its window): as for any statement held then."""
    p = _pair()
    sent = p.send(parse("s1", "select 1") + parse("s2", "select 2") + parse("s3", "select 3") + sync()
                  + bind("", "s1") + execute() + sync())
    assert types(sent) == "PPPS"  # the Bind waits for the first window (RewriterBase._waits)
    rest = p.client_scanner.rest
    assert rest is not None
    p.client_scanner.rest = None
    p.answer(m.PARSE_COMPLETE * 3 + RFQ)
    p.relay.expect -= 1  # (the client's resume_held)
    assert types(p.send(rest)) == "BES"  # answered: held for sure, used as it is


def test_a_skipped_parse_of_an_evicted_statement_is_not_deallocated() -> None:
    p = _pair()
    bad = parse("", "select $1::int") + bind("", "", ("1",), (7,))  # a Bind PostgreSQL refuses
    sent = p.send(bad + parse("s1", "select 1") + parse("s2", "select 2") + sync())
    assert types(sent) == "PBPPS"
    d0 = p.rw.unnamed
    assert d0 is not None
    d1, d2 = _names(p, "s1", "s2")
    assert p.held.evicted == [d0.name]
    got = p.answer(m.PARSE_COMPLETE + error("22023", "unsupported format code: 7") + RFQ)
    assert types(got) == "1EZ"
    # d1 and d2 were skipped (they may not exist: parsed again after a Close); d0 was parsed, DEALLOCATEd later.
    assert p.held.evicted == [d0.name] and {d1, d2} <= p.held.unsure and not p.held.prepared


def test_a_failed_parse_evicted_in_flight_leaves_evicted() -> None:
    p = _pair()
    p.send(parse("x", "selec 1") + parse("s1", "select 1") + parse("s2", "select 2") + sync())
    bad = p.cache.peek(b"selec 1", b"\0\0", ())
    assert bad is not None and p.held.evicted == [bad.name]
    got = p.answer(error("42601", 'syntax error at or near "selec"') + RFQ)
    assert types(got) == "EZ" and p.held.evicted == []  # nothing to DEALLOCATE: it never existed


def test_deallocate_queries_quote_the_names() -> None:
    """Unquoted, DOORMAN_1 would be folded to doorman_1, which does not exist (the check-in would fail)."""
    assert ps.deallocate_queries([b"DOORMAN_1", b"DOORMAN_22"]) == ['DEALLOCATE "DOORMAN_1"; DEALLOCATE "DOORMAN_22"']
    assert ps.deallocate_queries([]) == []


def test_sql_execute_in_a_failed_transaction_sends_no_parse() -> None:
    """PostgreSQL answers 25P02 whether the server holds the statement or not; a Parse sent first would fail,
    and PostgreSQL would then ignore the query until a Sync that never comes."""
    p = _pair()
    p.send(parse("s1", "select 1") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    d1 = p.rw.named[b"s1"].name
    p.held.prepared.clear()  # (another server, or this one after the DEALLOCATE of an eviction)
    p.held.txn_status = 69
    sent = p.send(query("execute s1"))
    assert sent == [("Q", b'execute "' + d1 + b'"\0')]
    p.relay.expect -= 1  # (its answer came)
    p.held.txn_status = 84  # in a transaction that has not failed: parsed there first
    assert types(p.send(query("execute s1"))) == "PSQ"  # (the Sync: tests/unit/test_rewriter_sql_execute.py)
