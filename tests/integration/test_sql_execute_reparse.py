"""SQL `EXECUTE name` of a statement the client prepared through the protocol, on a server that does not hold it:
the pooler parses it there first. When that Parse fails (a table the statement reads was dropped since, a
column's type changed, the transaction failed in a query pipelined before), a direct session would re-plan
the statement at EXECUTE and answer with the same error and ReadyForQuery. Each sequence runs directly and
through pgdoorman, message for message (tests/integration/test_prepared_diff.py's pattern), for two clients
whose startup settings differ: transaction mode with pool_size 2 (the client's server switched between steps,
so one of them lacks the statement) and pool_size 1 with a server cache of 2 (the statement evicted and
DEALLOCATEd, then executed again). Before the fix, the client got the Parse's error and no ReadyForQuery (a
hang: the read timed out). Afterwards the pool's servers are clean: another client gets one at once, idle."""

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
    _connect,
    connect_both,
    one,
    run_steps,
)
from tests.support.cluster import pooler_config
from tests.support.holder import ServerHolder
from tests.support.pooler import Pooler

pytestmark = pytest.mark.timeout(300)

# Two statements after the one under test: with a server cache of 2 it is evicted (pool_size 1).
FILL = one(P("f1", "select 1 as f1"), P("f2", "select 2 as f2"), S)
CREATE = "drop table if exists xr; create table xr (a int); insert into xr values (1)"

SEQUENCES: dict[str, list[Step]] = {
    "table_dropped": [
        one(Q(CREATE)), one(P("d1", "select a * 1 as v from xr"), S), one(P("e1", "select a * 2 as v from xr"), S, client=1), FILL,
        one(Q("execute e1"), client=1), one(Q("drop table xr")), one(Q("execute d1")), one(Q("execute d1")),
        one(Q("execute e1"), client=1), one(Q("select 'after'")), one(Q(CREATE)), one(Q("execute d1")),
        one(Q("execute d1")), one(B("d1"), E(), S), one(Q("execute e1"), client=1), one(Q("drop table xr"))],
    "table_dropped_in_a_transaction": [
        one(Q(CREATE)), one(P("d2", "select a * 1 as v from xr"), S), FILL, one(Q("drop table xr")),
        one(Q("begin")), one(Q("execute d2")), one(Q("select 1")), one(Q("rollback")),
        one(Q("begin")), one(Q("execute d2 ; select 2")), one(Q("rollback")), one(Q("execute d2")),
        one(Q(CREATE)), one(Q("begin")), one(Q("execute d2")), one(Q("commit")), one(Q("drop table xr"))],
    "column_type_changed": [
        one(Q(CREATE)), one(P("t1", "select a + 1 as b from xr"), S), FILL,
        one(Q("alter table xr alter a type text")), one(Q("execute t1")), one(Q("execute t1")),
        one(Q("alter table xr alter a type int using a::int")), one(Q("execute t1")), one(Q("execute t1")),
        one(Q("drop table xr"))],
    "pipelined": [
        one(Q(CREATE)), one(P("p1", "select a * 1 as v from xr"), S), FILL, one(Q("drop table xr")),
        one(Q("begin"), Q("select 1/0"), Q("execute p1"), Q("rollback"), wait=4),
        one(Q("execute p1"), Q("select 'next'"), Q("execute p1"), wait=3),
        one(P("", "select 1/0"), B(), E(), S, Q("execute p1"), Q("select 3"), wait=3),
        # A Query inside an unsynced batch that failed before it: skipped up to the Sync, directly too.
        one(P("", "select 1/0"), B(), E(), Q("execute p1"), S, wait=1),
        one(Q(CREATE), Q("execute p1"), B("p1"), E(), S, Q("execute p1"), wait=4), one(Q("drop table xr"))],
}

@pytest.fixture(scope="module", params=["pool_size_2", "pool_size_1_evicting"])
def pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Pooler]:
    two = request.param == "pool_size_2"
    cfg = pooler_config(pg, pool_size=2 if two else 1,
                        general={"server_prepared_statements_cache_size": 100 if two else 2,
                                 "query_wait_timeout": 20000})
    p = Pooler(cfg, str(tmp_path_factory.mktemp("pooler-sql-execute"))).start()
    p.two = two  # type: ignore[attr-defined]
    yield p
    p.stop()


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_same_responses_as_postgres(pg: Any, pooler: Pooler, name: str) -> None:
    steps = SEQUENCES[name]
    nclients = 1 + max(s[0] for s in steps)
    direct, pooled = connect_both(pg, pooler, TWO_SETTINGS[:nclients])
    holder = ServerHolder(pooler.host, pooler.port, pooled, enabled=pooler.two)  # type: ignore[attr-defined]
    try:
        want = run_steps(direct, steps)
        got = run_steps(pooled, steps, holder.move)
    finally:
        holder.close()
        for c in direct + pooled:
            c.close()
    if pooler.two:  # type: ignore[attr-defined]
        assert holder.switches > 0, holder.used  # (and never two steps in a row on one server: the holder checks)
    assert got == want
    # Every server is back in the pool, idle and usable by another client (a dirty one would have been closed,
    # a hung one would not come back: the read times out).
    other = _connect(pooler.host, pooler.port)
    try:
        for _ in range(3):
            assert other.query_rows("select 'ok', current_setting('transaction_isolation')") == \
                [["ok", "read committed"]]
    finally:
        other.close()
