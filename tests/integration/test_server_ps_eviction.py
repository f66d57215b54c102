"""A server's prepared statements beyond server_prepared_statements_cache_size are evicted (least recently used
first; DEALLOCATEd when the server goes back to the pool). Here the cache holds 2 statements and the pool has
one server, and the client uses more distinct statements than that within one transaction, within one pipeline
(an evicted statement's Parse still unanswered), and across windows sent before their answers came: the
responses must be PostgreSQL's own, message for message (tests/integration/test_prepared_diff.py's pattern),
for two clients whose startup settings differ; the server must hold what the pooler thinks it holds afterwards
(each statement bound again in later transactions), and stay: its evicted statements are DEALLOCATEd at
check-in without an error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_prepared_diff import (
    TWO_SETTINGS,
    B,
    E,
    P,
    Q,
    S,
    Step,
    connect_both,
    one,
    run_steps,
)
from tests.support.cluster import pooler_config
from tests.support.pooler import Pooler
from tests.support.wire import close, describe, flush

pytestmark = pytest.mark.timeout(300)

CACHE = 2


def _texts(prefix: str, n: int) -> list[str]:
    return [f"select {i} as {prefix}, current_setting('DateStyle') as ds" for i in range(1, n + 1)]


def _bind_each_again(names: list[str], client: int = 0) -> list[Step]:
    """Each statement bound in a transaction of its own, then all of them in one: whatever the server holds
    now, the answers must be PostgreSQL's."""
    return [one(B(n), E(), S, client=client) for n in names] + \
        [one(*[m for n in names for m in (B(n), E())], S, client=client)]


T = _texts("v", 5)
SEQUENCES: dict[str, list[Step]] = {
    # Three statements on one server in one transaction: the first is evicted, then bound again.
    "evicted_then_bound_in_the_same_transaction": [
        one(Q("begin")), one(P("s1", T[0]), S), one(P("s2", T[1]), S), one(P("s3", T[2]), S),
        one(B("s1"), E(), S), one(B("s2"), E(), S), one(B("s3"), E(), S), one(B("s1"), E(), S), one(Q("commit")),
        *_bind_each_again(["s1", "s2", "s3"])],
    # One pipeline: the third Parse evicts the first while the first's Parse is still unanswered.
    "eviction_of_a_parse_in_flight": [
        one(P("s1", T[0]), P("s2", T[1]), P("s3", T[2]), B("s1"), E(), B("s2"), E(), B("s3"), E(), S),
        *_bind_each_again(["s1", "s2", "s3"])],
    "five_distinct_named_in_one_window": [
        one(*[P(f"f{i}", T[i]) for i in range(5)], *[m for i in range(5) for m in (B(f"f{i}"), E())],
            *[m for i in reversed(range(5)) for m in (B(f"f{i}"), E())], S),
        *_bind_each_again([f"f{i}" for i in range(5)])],
    "unnamed_alternating_in_one_window": [
        one(*[m for i in (0, 1, 2, 0, 3, 1, 0) for m in (P("", T[i]), B(), E())], S),
        one(*[m for i in (2, 0, 1) for m in (P("", T[i]), B(), E())], S)],
    # Windows pipelined: each Sync's window sent before the earlier ones are answered.
    "windows_sent_before_their_answers": [
        one(P("w1", T[0]), S, P("w2", T[1]), S, P("w3", T[2]), S, B("w1"), E(), S, B("w2"), E(), S,
            B("w3"), E(), S, B("w1"), E(), S, wait=7),
        *_bind_each_again(["w1", "w2", "w3"])],
    "windows_in_a_transaction": [
        one(Q("begin")),
        one(P("t1", T[0]), B("t1"), E(), S, P("t2", T[1]), B("t2"), E(), S, P("t3", T[2]), B("t3"), E(), S,
            B("t1"), E(), S, P("t4", T[3]), B("t4"), E(), B("t2"), E(), S, wait=5),
        one(Q("commit")), *_bind_each_again(["t1", "t2", "t3", "t4"])],
    # An error after the eviction: PostgreSQL skips the rest of the window (the evicting Parse included).
    "error_after_an_eviction_in_flight": [
        one(P("e1", T[0]), P("e2", T[1]), P("e3", T[2]), B("e1", ("extra",)), E(), P("e4", T[3]), S),
        one(B("e1"), E(), S), one(B("e3"), E(), S), one(B("e4"), E(), S),
        *_bind_each_again(["e1", "e2", "e3"])],
    "error_before_the_evicting_parse": [
        one(P("g1", T[0]), P("g2", T[1]), B("g1", ("extra",)), E(), P("g3", T[2]), B("g1"), E(), S),
        one(B("g3"), E(), S), *_bind_each_again(["g1", "g2"])],
    "describe_and_execute_of_evicted": [
        one(Q("begin")), one(P("d1", T[0]), P("d2", T[1]), P("d3", T[2]), S),
        one(describe("S", "d1"), S), one(Q("execute d2")), one(B("d3"), describe("P"), E(), S), one(Q("commit")),
        one(describe("S", "d1"), flush(), wait=("n", 2)), one(S), *_bind_each_again(["d1", "d2", "d3"])],
    "close_of_evicted_then_parse_again": [
        one(Q("begin")), one(P("c1", T[0]), P("c2", T[1]), P("c3", T[2]), S), one(close("S", "c1"), S),
        one(P("c1", T[0]), B("c1"), E(), S), one(Q("commit")), *_bind_each_again(["c1", "c2", "c3"])],
    # EXECUTE (SQL) of an evicted, DEALLOCATEd statement in a failed transaction: 25P02, as on PostgreSQL (the
    # Parse that would prepare it again fails first, and PostgreSQL then ignores the query until a Sync).
    "sql_execute_in_a_failed_transaction": [
        one(P("x1", T[0]), S), one(P("x2", T[1]), S), one(P("x3", T[2]), S),
        one(Q("begin")), one(Q("select 1/0")), one(Q("execute x1")), one(Q("rollback")), one(Q("execute x1")),
        *_bind_each_again(["x1", "x2", "x3"])],
    # Two clients sharing statements (the same texts), each evicting the other's on the one server.
    "two_clients_share_and_evict": [
        one(P("a1", T[0]), P("a2", T[1]), P("a3", T[2]), B("a1"), E(), S),
        one(P("b3", T[2]), P("b4", T[3]), P("b1", T[0]), B("b3"), E(), B("b1"), E(), S, client=1),
        one(B("a3"), E(), B("a2"), E(), B("a1"), E(), S),
        *_bind_each_again(["b1", "b3", "b4"], client=1), *_bind_each_again(["a1", "a2", "a3"])],
}

@pytest.fixture(scope="module")
def pooler(pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    cfg = pooler_config(pg, pool_size=1, general={"server_prepared_statements_cache_size": CACHE,
                                                  "query_wait_timeout": 20000})
    p = Pooler(cfg, str(tmp_path_factory.mktemp("pooler-ps-eviction"))).start()
    yield p
    p.stop()


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_same_responses_as_postgres(pg: Any, pooler: Pooler, name: str) -> None:
    steps = SEQUENCES[name]
    nclients = 1 + max(s[0] for s in steps)
    direct, pooled = connect_both(pg, pooler, TWO_SETTINGS[:nclients])
    try:
        backend = pooled[0].query_rows("select pg_backend_pid()")
        want = run_steps(direct, steps)
        got = run_steps(pooled, steps)
        assert got == want
        # The one server lived through it all (its evictions' DEALLOCATEs at check-in succeeded), and holds at
        # most CACHE statements between transactions, as the setting says.
        assert pooled[0].query_rows("select pg_backend_pid()") == backend
        n = pooled[0].query_rows("select count(*) from pg_prepared_statements")
        assert 0 < int(n[0][0] or 0) <= CACHE
    finally:
        for c in direct + pooled:
            c.close()
