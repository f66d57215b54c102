"""SQL `EXECUTE name` of a statement the client prepared through the protocol, on a server that lacks it: the
rewriter sends `Parse Sync` of the pool's statement before the query (Rewriter._sql_execute). If that Parse fails
(a table dropped since), PostgreSQL would skip the query to a Sync: ours ends the skip, and the client gets the
Parse's error and the ReadyForQuery of its query, as a direct session answers an EXECUTE it cannot plan any
more (the query's own error, 26000 or 25P02, and our Sync's ReadyForQuery are swallowed). The comparison with
PostgreSQL itself is tests/integration/test_sql_execute_reparse.py."""

from __future__ import annotations

from pgdoorman.protocol import messages as m
from tests.support.wire import bind, execute, parse, query, sync
from tests.unit.test_rewriter import OK_ROW, RFQ, Pair, error, types

NO_TABLE = error("42P01", 'relation "t" does not exist')
ROW_DESCRIPTION = m.msg(b"T", b"\0\x01a\0" + b"\0" * 6 + b"\0\x17\0\x04\xff\xff\xff\xff\0\0")


def _prepared_elsewhere() -> tuple[Pair, bytes]:
    """A client that prepared s1 through the protocol, linked now to a server that does not hold it."""
    p = Pair()
    p.send(parse("s1", "select a from t") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    d1 = p.rw.named[b"s1"].name
    p.held.prepared.clear()
    p.held.plain.clear()
    return p, d1


def test_parse_and_sync_go_before_the_query() -> None:
    p, d1 = _prepared_elsewhere()
    sent = p.send(query("execute s1"))
    assert types(sent) == "PSQ" and sent[2][1] == b'execute "' + d1 + b'"\0'
    got = p.answer(m.PARSE_COMPLETE + RFQ + ROW_DESCRIPTION + OK_ROW + RFQ)
    assert types(got) == "TDCZ"  # our ParseComplete and ReadyForQuery swallowed
    assert p.relay.expect == 0 and not p.rw.rq and d1 in p.held.prepared
    assert p.held.plain.count(90) == 1  # one ReadyForQuery for the client's one request


def test_a_failed_parse_answers_the_query() -> None:
    p, d1 = _prepared_elsewhere()
    p.send(query("execute s1"))
    got = p.answer(NO_TABLE + RFQ + error("26000", f'prepared statement "{d1.decode()}" does not exist') + RFQ)
    assert types(got) == "EZ" and got[0][1] == NO_TABLE[5:] and got[1][1] == b"I"
    assert p.relay.expect == 0 and not p.rw.rq
    assert d1 not in p.held.prepared and d1 in p.held.unsure  # parsed there again only after a Close
    assert p.rw.named[b"s1"].name == d1  # the client's statement stays, as it does on PostgreSQL
    sent = p.send(query("execute s1"))
    assert types(sent) == "CPSQ"
    assert types(p.answer(m.CLOSE_COMPLETE + m.PARSE_COMPLETE + RFQ + OK_ROW + RFQ)) == "DCZ"
    assert d1 in p.held.prepared and not p.held.unsure


def test_in_a_transaction_block_the_error_aborts_it() -> None:
    p, d1 = _prepared_elsewhere()
    p.held.txn_status = 84
    p.send(query("execute s1"))
    aborted = error("25P02", "current transaction is aborted, commands ignored until end of transaction block")
    got = p.answer(NO_TABLE + m.msg(b"Z", b"E") + aborted + m.msg(b"Z", b"E"))
    assert types(got) == "EZ" and got[0][1] == NO_TABLE[5:] and got[1][1] == b"E"
    assert p.relay.expect == 0 and p.relay.last_status == 69


def test_pipelined_behind_it_a_bind_parses_again() -> None:
    """A Bind of the same statement sent before the answers came: that Parse may fail, so the statement is
    closed and parsed again in the Bind's window."""
    p, d1 = _prepared_elsewhere()
    sent = p.send(query("execute s1") + bind("", "s1") + execute() + sync())
    assert types(sent) == "PSQCPBES"
    got = p.answer(NO_TABLE + RFQ + error("26000", "x") + RFQ + m.CLOSE_COMPLETE + NO_TABLE + RFQ)
    assert types(got) == "EZEZ" and got[2][1] == NO_TABLE[5:]
    assert p.relay.expect == 0 and not p.rw.rq


def test_inside_an_unsynced_batch_no_sync_is_added() -> None:
    """Our Sync would end the client's batch (commit its implicit transaction, end a skip PostgreSQL is in):
    only the Parse goes first, as before."""
    p, d1 = _prepared_elsewhere()
    sent = p.send(parse("", "select 2") + bind() + execute() + query("execute s1") + sync())
    assert types(sent) == "PBEPQS"
