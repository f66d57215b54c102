"""The prepared-statement Rewriter on its own, both directions, with no socket and no connection: the client's
bytes go through a Scanner into it (as ClientConn does), what it returns is what the server would get; the
server's answers go through the server's Scanner into `reply` (as ServerConn does), what it returns is what
the client would get. The "server" here is the plain record of which statements a backend holds (`Held`); the
answers are the ones PostgreSQL gives to those messages (the live comparison is test_prepared_diff.py)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pgdoorman.core.prepared import PoolCache
from pgdoorman.protocol import messages as m
from pgdoorman.protocol.framing import Scanner
from pgdoorman.session.rewrite import Rewriter
from pgdoorman.session.server_prepared import SERVER_PS_TABLE, SERVER_TABLE
from pgdoorman.session.states import CLIENT_PS_TABLE
from tests.support.wire import bind, close, describe, execute, frame, parse, query, split_messages, sync


class FakeHeld:
    """What a backend holds, and the relay switches the rewriter flips: a record, no socket."""

    def __init__(self) -> None:
        self.prepared: OrderedDict[bytes, None] = OrderedDict()
        self.evicted: list[bytes] = []
        self.unsure: set[bytes] = set()
        self.ps_hits = 0
        self.ps_misses = 0
        self.txn_status = 73
        self.skipping = False
        self.release_pending = False
        self.ps_on = False
        self.plain: list[int] = []  # message types handed to the plain relay handler
        self.relay: FakeRelay | None = None
        self._plain_handler = self._on_message  # as ServerConn's: the plain relay's handler

    def remember(self, name: bytes) -> None:
        self.prepared[name] = None

    def set_ps_mode(self, on: bool) -> None:
        self.ps_on = on

    def _on_message(self, t: int, body: memoryview) -> bytes | None:
        """As ServerConn's: a ReadyForQuery answers one request of the client (ClientConn.ready)."""
        self.plain.append(t)
        if t == 90 and self.relay is not None:
            self.relay.expect -= 1
            self.relay.last_status = body[0]
        return None


class FakeRelay:
    """The client's request counters."""

    def __init__(self, server: FakeHeld) -> None:
        self.server = server
        self.expect = 0
        self.unsynced = False
        self.copy_window = 0
        self.copy_syncs = 0
        self.copy_pre = 0
        self.copy_risk = False
        self.in_copy_in = False
        self.leaves = False
        self.terminating = False
        self.last_status = 73
        self.marked = 0
        self.resumed = 0  # resume_held calls
        self.lsn = None  # no LISTEN (session/listening.py)
        self.resets: list[bytes] = []  # texts of bound statements that reset a setting (note_resets)

    def _mark_query(self) -> None:
        self.marked += 1

    def note_resets(self, st: Any) -> None:
        self.resets.append(st.query)

    def refuse_pinning(self, text: bytes | memoryview, parse: bool = False) -> str | None:
        return None  # transaction_pinning: allow

    def listen_statement(self, body: memoryview) -> bytes | None:
        return None  # no LISTEN/UNLISTEN in these tests

    def resume_held(self) -> None:
        self.resumed += 1

    def listen_bound(self, st: Any) -> None:
        raise AssertionError("no LISTEN statement in these tests")


class Pair:
    """One client's rewriter between its bytes and one backend's answers."""

    def __init__(self, cache: PoolCache | None = None, held: FakeHeld | None = None) -> None:
        self.cache = cache or PoolCache(100)
        self.held = held or FakeHeld()
        self.relay = FakeRelay(self.held)
        self.held.relay = self.relay
        self.rw = Rewriter(self.relay)
        self.rw.start(self.cache, ())
        self.client_scanner = Scanner(CLIENT_PS_TABLE, on_header=self.rw.on_header, on_message=self.rw.on_message)

    def send(self, data: bytes) -> list[tuple[str, bytes]]:
        """The client sends `data`: the messages the server gets."""
        out = self.client_scanner.feed(memoryview(data))
        return split_messages(b"" if out is None else bytes(out))

    def answer(self, data: bytes) -> list[tuple[str, bytes]]:
        """The server answers `data`: the messages the client gets (synthetic ones included)."""
        sc = Scanner(SERVER_PS_TABLE if self.held.ps_on or self.rw.rq else SERVER_TABLE,
                     on_message=lambda t, b: self.rw.reply(t, b, self.held))
        out = sc.feed(memoryview(data))
        got = b"" if out is None else bytes(out)
        synth = self.rw.take_synth()  # what the client side flushes when nothing else is due
        return split_messages(got + (bytes(synth) if synth else b""))


def types(msgs: list[tuple[str, bytes]]) -> str:
    return "".join(t for t, _ in msgs)


def error(code: str, message: str) -> bytes:
    return frame("E", b"SERROR\0C" + code.encode() + b"\0M" + message.encode() + b"\0\0")


OK_ROW = frame("D", b"\0\x01\0\0\0\x011") + frame("C", b"SELECT 1\0")
RFQ = frame("Z", b"I")


def test_first_parse_goes_to_the_server_renamed_and_answers_pass_through() -> None:
    p = Pair()
    sent = p.send(parse("s1", "select 1") + bind("", "s1") + execute() + sync())
    assert types(sent) == "PBES"
    st = p.rw.named[b"s1"]
    assert sent[0][1].startswith(st.name + b"\0select 1\0")
    assert sent[1][1].split(b"\0")[1] == st.name  # the Bind names the pool's statement
    assert st.name in p.held.prepared and p.held.ps_misses == 1
    assert p.relay.expect == 1 and not p.relay.unsynced
    got = p.answer(m.PARSE_COMPLETE + m.BIND_COMPLETE + OK_ROW + RFQ)
    assert types(got) == "12DCZ"
    assert not p.rw.rq and not p.held.ps_on and p.held.plain == [ord("C"), ord("Z")]


def test_a_parse_the_server_holds_is_answered_here() -> None:
    cache = PoolCache(100)
    held = FakeHeld()
    first = Pair(cache, held)
    first.send(parse("", "select 1") + sync())
    first.answer(m.PARSE_COMPLETE + RFQ)
    second = Pair(cache, held)  # another client of the pool, given the same backend
    sent = second.send(parse("mine", "select 1") + bind("", "mine") + execute() + sync())
    assert types(sent) == "BES"  # no Parse: the backend has it
    assert held.ps_hits == 1
    got = second.answer(m.BIND_COMPLETE + OK_ROW + RFQ)
    assert types(got) == "12DCZ"  # the ParseComplete the client expects, in its place
    assert second.rw.named[b"mine"] is first.rw.unnamed


def test_a_parse_answered_here_in_a_transaction_block_is_parsed_unnamed_at_its_sync() -> None:
    """PostgreSQL takes the transaction's snapshot at a Parse of a query: the server parses its text as the
    unnamed statement before the Sync, then closes it (both answers swallowed), unless a Bind follows."""
    p = Pair()
    p.send(parse("s1", "select 1") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    p.relay.last_status = 84  # in a transaction block
    sent = p.send(parse("s2", "select 1") + sync())
    assert types(sent) == "PCS" and sent[0][1] == b"\0select 1\0\0\0" and sent[1][1] == b"S\0"
    assert types(p.answer(m.PARSE_COMPLETE + m.CLOSE_COMPLETE + frame("Z", b"T"))) == "1Z"
    assert types(p.send(parse("s3", "select 1") + bind("", "s3") + execute() + sync())) == "BES"


def test_a_describe_waits_for_a_parse_sent_again_in_a_failed_transaction() -> None:
    """In a failed transaction a Parse of a statement the server holds is sent (Close, Parse) for PostgreSQL to
    refuse; a Describe of its name pipelined behind it waits for that answer (the name then means nothing:
    26000), and did not: switching the queue on forgot the name just noted, and the Describe named the pool's
    statement (25P02)."""
    p = Pair()
    p.send(parse("x", "select 2") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    p.relay.last_status = 69
    sent = p.send(parse("n1", "select 2") + sync() + describe("S", "n1") + sync())
    assert types(sent) == "CPS" and p.rw.holding


def test_failed_parse_forgets_the_name_and_skips_to_sync() -> None:
    p = Pair()
    sent = p.send(parse("bad", "selec 1") + bind("", "bad") + execute() + sync())
    assert types(sent) == "PBES"
    st = p.rw.named[b"bad"]
    got = p.answer(error("42601", 'syntax error at or near "selec"') + RFQ)
    assert types(got) == "EZ"
    assert b"bad" not in p.rw.named and st.name not in p.held.prepared
    assert st.dead or p.cache.peek(b"selec 1", b"\0\0", ()) is None  # a failed Parse is not cached
    assert not p.rw.rq and p.relay.expect == 0


def test_error_names_the_clients_statement() -> None:
    p = Pair()
    p.send(parse("s1", "select $1::int") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    st = p.rw.named[b"s1"]
    p.send(describe("S", "s1") + sync())
    msg = b'prepared statement "' + st.name + b'" does not exist'
    got = p.answer(error("26000", msg.decode()) + RFQ)
    assert types(got) == "EZ"
    assert b'"s1"' in got[0][1] and st.name not in got[0][1]


def test_close_is_answered_here_and_the_server_copy_stays() -> None:
    p = Pair()
    p.send(parse("s1", "select 1") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    st = p.rw.named[b"s1"]
    sent = p.send(close("S", "s1") + sync())
    assert types(sent) == "S"
    got = p.answer(RFQ)
    assert types(got) == "3Z"
    assert b"s1" not in p.rw.named and st.name in p.held.prepared


def test_deallocate_is_answered_here() -> None:
    p = Pair()
    p.send(parse("s1", "select 1") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    sent = p.send(query("DEALLOCATE s1"))
    assert sent == []
    synth = p.rw.take_synth()
    assert synth is not None and types(split_messages(bytes(synth))) == "CZ"
    assert b"s1" not in p.rw.named


def test_stale_plan_makes_a_fresh_statement_under_the_clients_name() -> None:
    p = Pair()
    p.send(parse("s1", "select * from t") + sync())
    p.answer(m.PARSE_COMPLETE + RFQ)
    old = p.rw.named[b"s1"]
    p.send(bind("", "s1") + execute() + sync())
    got = p.answer(error("0A000", "cached plan must not change result type") + RFQ)
    assert types(got) == "EZ"
    fresh = p.rw.named[b"s1"]
    assert fresh is not old and fresh.query == old.query
    assert old.name not in p.held.prepared and old.name in p.held.evicted


def test_skipped_messages_after_an_error_are_undone() -> None:
    p = Pair()
    # Bind of an unknown name fails; the Parse and Close after it are skipped by PostgreSQL until Sync.
    p.send(bind("", "nope") + parse("later", "select 2") + close("S", "gone") + sync())
    st = p.rw.named.get(b"later")
    assert st is not None
    got = p.answer(error("26000", 'prepared statement "nope" does not exist') + RFQ)
    assert types(got) == "EZ"  # no ParseComplete or CloseComplete for the skipped messages
    assert b"later" not in p.rw.named and st.name not in p.held.prepared


def test_fast_batch_renames_the_bind_and_puts_parse_complete_first() -> None:
    cache = PoolCache(100)
    held = FakeHeld()
    warm = Pair(cache, held)
    warm.send(parse("", "select 1") + sync())
    warm.answer(m.PARSE_COMPLETE + RFQ)
    p = Pair(cache, held)
    batch = parse("", "select 1") + bind("", "") + describe("P", "") + execute() + sync()
    out = p.rw.fast_batch(memoryview(batch), len(batch), held)
    assert out is not None
    sent = split_messages(bytes(out))
    assert types(sent) == "BDES" and sent[0][1].split(b"\0")[1] == warm.rw.unnamed.name  # type: ignore[union-attr]
    assert p.rw.synth_head == m.PARSE_COMPLETE and p.rw.fast_bind is not None and not p.rw.rq
    first = m.BIND_COMPLETE
    assert types(split_messages(bytes(p.rw.after_synth(first)))) == "12"
    assert p.rw.synth_head is None


def test_a_statement_that_resets_a_setting_is_noted_where_it_is_bound() -> None:
    """session/txresets.py: the steps of a prepared `RESET` count for the request that executes it (each time,
    the fast batch's Bind too), not for one that only parses it."""
    p = Pair()
    p.send(parse("r", "reset work_mem") + parse("", "set timezone to default") + sync())
    assert p.relay.resets == []
    p.answer(m.PARSE_COMPLETE * 2 + RFQ)
    p.send(bind("", "r") + execute() + sync())
    assert p.relay.resets == [b"reset work_mem"]
    p.answer(m.BIND_COMPLETE + frame("C", b"RESET\0") + RFQ)
    batch = parse("", "set timezone to default") + bind("", "") + execute() + sync()
    assert p.rw.fast_batch(memoryview(batch), len(batch), p.held) is not None
    assert p.relay.resets == [b"reset work_mem", b"set timezone to default"]
    p.send(bind("", "r") + execute() + sync())
    assert p.relay.resets[2:] == [b"reset work_mem"]


def test_fast_batch_declines_what_the_general_path_must_take() -> None:
    p = Pair()
    batch = parse("", "select 1") + bind("", "") + execute() + sync()
    assert p.rw.fast_batch(memoryview(batch), len(batch), p.held) is None
    assert not p.rw.named and p.rw.unnamed is None and p.rw.synth_head is None  # nothing changed


def test_parse_sync_answered_locally_from_the_pool_cache() -> None:
    cache = PoolCache(100)
    warm = Pair(cache)
    warm.send(parse("", "select 1") + sync())
    warm.answer(m.PARSE_COMPLETE + RFQ)
    p = Pair(cache, FakeHeld())
    data = parse("q1", "select 1") + sync()
    answer = p.rw.parse_sync_locally(memoryview(data))
    assert answer is not None and types(split_messages(answer)) == "1Z"
    assert p.rw.named[b"q1"] is warm.rw.unnamed
    unknown = parse("q2", "select 42") + sync()
    assert p.rw.parse_sync_locally(memoryview(unknown)) is None


def test_copy_start_drops_the_syncs_postgres_ignores() -> None:
    p = Pair()
    p.send(parse("", "copy t from stdin") + bind("", "") + execute() + sync())
    rq: Any = p.rw.rq  # (made by the first message that needs it)
    p.answer(m.PARSE_COMPLETE + m.BIND_COMPLETE)
    assert [e[0] for e in rq][-1] != 0 and len(rq) == 2  # the Execute and the Sync
    p.rw.copy_started()
    assert len(rq) == 1  # the Execute only: PostgreSQL ignores that Sync during COPY IN
    assert p.relay.in_copy_in and not p.relay.copy_risk  # no CopyDone yet; that Sync came before any data


def _alternate(p: Pair, texts: list[str], rounds: int) -> list[str]:
    """The client runs each text as an unnamed statement in turn (psycopg, asyncpg), `rounds` times; the
    server answers as PostgreSQL does. The message types the server got, batch by batch."""
    seen = []
    for _ in range(rounds):
        for text in texts:
            sent = p.send(parse("", text) + bind("", "") + execute() + sync())
            seen.append(types(sent))
            reply = (m.PARSE_COMPLETE if sent[0][0] == "P" else b"") + m.BIND_COMPLETE + OK_ROW + RFQ
            assert types(p.answer(reply)) == "12DCZ"  # the client always sees its ParseComplete
    return seen


def test_alternating_unnamed_queries_are_found_again_after_the_pool_evicted_them() -> None:
    cache = PoolCache(1)  # the pool keeps one statement: each Parse evicts the one before
    cache.anon_size = 8
    p = Pair(cache)
    seen = _alternate(p, ["select 1", "select 2", "select 3"], 3)
    assert seen == ["PBES"] * 3 + ["BES"] * 6  # parsed once each on this server, then found in the client's LRU
    assert p.held.ps_misses == 3 and p.held.ps_hits == 6 and len(p.held.prepared) == 3
    assert p.rw.anon is not None and len(p.rw.anon) == 3 and p.rw.anon_evicted == 0
    assert p.rw.unnamed is not None and p.rw.unnamed.query == b"select 3"


def test_a_client_lru_of_one_keeps_only_the_latest() -> None:
    cache = PoolCache(1)
    cache.anon_size = 1
    p = Pair(cache)
    seen = _alternate(p, ["select 1", "select 2"], 2)
    assert seen == ["PBES"] * 4  # evicted from the pool and from the client: a new statement each time
    assert p.rw.anon is not None and len(p.rw.anon) == 1 and p.rw.anon_evicted == 3 and cache.anon_evictions == 3


def test_unbounded_client_lru() -> None:
    cache = PoolCache(2)
    cache.anon_size = 0
    p = Pair(cache)
    _alternate(p, [f"select {i}" for i in range(20)], 2)
    assert p.rw.anon is not None and len(p.rw.anon) == 20 and p.rw.anon_evicted == 0
    assert p.held.ps_misses == 20


def test_one_unnamed_statement_makes_no_lru() -> None:
    p = Pair()
    _alternate(p, ["select 1"], 3)
    assert p.rw.anon is None  # the common case costs nothing more than before


def test_bind_of_unnamed_runs_the_latest_parse_also_when_found_in_the_lru() -> None:
    cache = PoolCache(1)
    cache.anon_size = 8
    p = Pair(cache)
    _alternate(p, ["select 1", "select 2"], 1)
    p.send(parse("", "select 1") + sync())  # found in the LRU: answered here
    p.answer(RFQ)
    sent = p.send(bind("", "") + execute() + sync())
    one = p.rw.anon[(b"select 1", b"\0\0", ())] if p.rw.anon is not None else None
    assert one is not None and sent[0][1].split(b"\0")[1] == one.name
    p.answer(m.BIND_COMPLETE + OK_ROW + RFQ)


def test_failed_unnamed_parse_leaves_no_unnamed_statement_and_leaves_the_lru() -> None:
    cache = PoolCache(1)
    cache.anon_size = 8
    p = Pair(cache)
    _alternate(p, ["select 1", "select 2"], 1)
    sent = p.send(parse("", "selec 3") + sync())
    assert types(sent) == "PS"
    got = p.answer(error("42601", 'syntax error at or near "selec"') + RFQ)
    assert types(got) == "EZ"
    assert p.rw.unnamed is None  # PostgreSQL dropped the old unnamed statement before parsing the new one
    assert p.rw.anon is not None and (b"selec 3", b"\0\0", ()) not in p.rw.anon
    sent = p.send(bind("", "") + execute() + sync())
    assert sent[0][1].split(b"\0")[1] == b""  # passed on: PostgreSQL answers 26000 itself


def test_a_statement_forgotten_by_the_pool_is_not_taken_from_the_lru() -> None:
    cache = PoolCache(10)
    cache.anon_size = 8
    p = Pair(cache)
    _alternate(p, ["select 1", "select 2"], 1)
    old = p.rw.anon[(b"select 1", b"\0\0", ())] if p.rw.anon is not None else None
    cache.invalidate()  # DDL ran
    sent = p.send(parse("", "select 1") + bind("", "") + execute() + sync())
    assert types(sent) == "PBES" and old is not None and sent[0][1].split(b"\0")[0] != old.name
    p.answer(m.PARSE_COMPLETE + m.BIND_COMPLETE + OK_ROW + RFQ)


def test_fast_batch_finds_an_alternating_unnamed_statement_in_the_lru() -> None:
    cache = PoolCache(1)
    cache.anon_size = 8
    p = Pair(cache)
    _alternate(p, ["select 1", "select 2"], 1)
    batch = parse("", "select 1") + bind("", "") + execute() + sync()
    out = p.rw.fast_batch(memoryview(batch), len(batch), p.held)
    assert out is not None and types(split_messages(bytes(out))) == "BES"
    assert p.rw.unnamed is not None and p.rw.unnamed.query == b"select 1"
    assert list(p.rw.anon or ())[-1] == (b"select 1", b"\0\0", ())  # the most recent last


def test_interner_sweep_drops_only_idle_unnamed_statements() -> None:
    cache = PoolCache(100)
    p = Pair(cache)
    _alternate(p, ["select 1", "select 2"], 1)  # unnamed only
    p.send(parse("n", "select 3") + sync())  # named
    p.answer(m.PARSE_COMPLETE + RFQ)
    assert cache.sweep(100.0, 10) == 0  # first sight: use counts noted
    _alternate(p, ["select 2"], 1)  # "select 2" used again
    assert cache.sweep(105.0, 10) == 0
    assert cache.sweep(110.0, 10) == 1  # "select 1": unused for 10 s
    assert {st.query for st in cache.snapshot()} == {b"select 3", b"select 2"}
    assert cache.sweep(115.0, 10) == 1 and cache.ttl_evictions == 2  # "select 2": unused since 105
    assert [st.query for st in cache.snapshot()] == [b"select 3"]  # named: never for idling
    # The client's statement stays usable: its Bind still names it (the server holds it).
    sent = p.send(bind("", "") + execute() + sync())
    assert p.rw.unnamed is not None and sent[0][1].split(b"\0")[1] == p.rw.unnamed.name
    p.answer(m.BIND_COMPLETE + OK_ROW + RFQ)


def test_reset_interner_drops_unnamed_only_statements() -> None:
    cache = PoolCache(100)
    p = Pair(cache)
    _alternate(p, ["select 1"], 1)
    p.send(parse("n", "select 1") + sync())  # the same statement, now also named: kept
    p.answer(m.PARSE_COMPLETE + RFQ)
    _alternate(p, ["select 2"], 1)
    assert cache.drop_anonymous() == 1
    assert [st.query for st in cache.snapshot()] == [b"select 1"]


# A Parse in flight in an earlier window (before a Sync) may be skipped by PostgreSQL after an error before it in
# its window, while the messages after that Sync run: they must not rely on it (found by a pipelined Bind error).
BAD_BIND = parse("", "select $1::int") + bind("", "", ("1",), (7,))


def test_a_parse_behind_an_unanswered_parse_in_an_earlier_window_is_closed_and_parsed_again() -> None:
    p = Pair()
    first = p.send(BAD_BIND + parse("", "select 8") + bind() + execute() + sync())
    assert types(first) == "PBPBES"
    st = p.rw.unnamed
    assert st is not None and st.query == b"select 8"
    # Same statement, next window: PostgreSQL may have skipped the first Parse of it.
    again = p.send(parse("", "select 8") + bind() + execute() + sync())
    assert types(again) == "CPBES" and again[0][1] == b"S" + st.name + b"\0"
    got = p.answer(frame("1") + error("22023", "unsupported format code: 7") + RFQ
                   + frame("3") + frame("1") + frame("2") + OK_ROW + RFQ)
    assert types(got) == "1EZ12DCZ"  # the CloseComplete is swallowed, the ParseComplete is PostgreSQL's
    assert st.name in p.held.prepared and not p.rw.rq
    # Everything answered: the same Parse is answered here again.
    assert types(p.send(parse("", "select 8") + bind() + execute() + sync())) == "BES"


def test_a_parse_in_the_same_window_relies_on_the_earlier_one() -> None:
    p = Pair()
    assert types(p.send(parse("", "select 8") + bind() + execute() + parse("", "select 8") + bind() + execute()
                        + sync())) == "PBEBES"


def test_a_message_naming_a_statement_whose_parse_is_unanswered_in_an_earlier_window_waits() -> None:
    """PostgreSQL may skip that Parse: whether the name exists is known when its window is answered."""
    p = Pair()
    assert types(p.send(BAD_BIND + parse("s1", "select 8") + sync() + bind("", "s1") + execute() + sync())) \
        == "PBPS"
    assert p.rw.holding and p.relay.expect == 2  # (one more while held: the server stays)
    rest = p.client_scanner.rest
    assert rest == bind("", "s1") + execute() + sync()
    p.client_scanner.rest = None
    got = p.answer(frame("1") + error("22023", "unsupported format code: 7") + RFQ)
    assert types(got) == "1EZ" and p.relay.resumed == 1 and not p.rw.holding
    assert b"s1" not in p.rw.named
    p.relay.expect -= 1  # (what the client's resume_held does)
    # Fed again: s1 does not exist, PostgreSQL says so under the client's name.
    assert p.send(rest) == [("B", bind("", "s1")[5:]), ("E", execute()[5:]), ("S", b"")]
    assert not p.rw.holding


def test_a_message_naming_a_statement_defined_in_its_own_window_does_not_wait() -> None:
    p = Pair()
    p.send(BAD_BIND + parse("s1", "select 8") + sync())
    assert types(p.send(parse("s2", "select 9") + bind("", "s2") + execute() + sync())) == "PBES"
    assert not p.rw.holding


def test_a_skipped_close_and_parse_leave_the_statement_unsure() -> None:
    """After a skipped Parse (maybe behind our skipped Close of it) the server may or may not hold the statement:
    it is parsed there again only after a Close (PostgreSQL answers Close of a missing statement without error)."""
    p = Pair()
    p.send(parse("", "select 8") + bind() + execute() + sync())
    st = p.rw.unnamed
    assert st is not None
    p.send(BAD_BIND + parse("", "select 8") + bind() + execute() + sync())  # closed and parsed again
    p.answer(frame("1") + frame("2") + OK_ROW + RFQ + frame("1") + error("22023", "unsupported format code: 7")
             + RFQ)
    assert st.name not in p.held.prepared and st.name in p.held.unsure
    assert types(p.send(parse("", "select 8") + bind() + execute() + sync())) == "CPBES"
    assert st.name in p.held.prepared and st.name not in p.held.unsure
