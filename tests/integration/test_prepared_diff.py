"""Differential tests: each sequence of wire messages is sent directly to PostgreSQL and through pgdoorman, and
the responses must be the same message for message (BackendKeyData and ParameterStatus values aside;
ErrorResponses compared on severity, SQLSTATE and message). Transaction mode (pool_size 2, the client's server
switched between steps by tests/support/holder.py, which checks that it was, so statements are prepared again
and settings replayed on another server) and session mode (pool_size 2, servers reused from one sequence to the
next)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER
from tests.support.holder import ServerHolder
from tests.support.pooler import started_in_mode
from tests.support.wire import (
    WireClient,
    bind,
    close,
    describe,
    execute,
    flush,
    frame,
    parse,
    parse_fields,
    query,
    sync,
)

pytestmark = pytest.mark.timeout(300)

# A step: (client index, bytes to send, what to wait for). An int waits for that many ReadyForQuery; ("n", k)
# waits for exactly k messages (for Flush-terminated batches, which end with no ReadyForQuery).
Step = tuple[int, bytes, Any]
S = sync()


def P(name: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    return parse(name, sql, types)


def B(stmt: str = "", params: tuple[Any, ...] = (), portal: str = "", fmts: tuple[int, ...] = ()) -> bytes:
    return bind(portal, stmt, params, fmts)


def E(portal: str = "", rows: int = 0) -> bytes:
    return execute(portal, rows)


def Q(sql: str) -> bytes:
    return query(sql)


def one(*msgs: bytes, client: int = 0, wait: Any = 1) -> Step:
    return (client, b"".join(msgs), wait)


SEQUENCES: dict[str, list[Step]] = {
    "unnamed_parse_bind_execute": [one(P("", "select 1"), B(), E(), S)],
    "unnamed_parse_then_bind_later": [one(P("", "select $1::int + 1"), describe("S"), S),
                                      one(B("", ("41",)), E(), S)],
    "named_reused_across_switches": [one(P("s1", "select $1::int * 2"), S)]
    + [one(B("s1", (str(i),)), E(), S) for i in range(4)],
    "named_describe_statement_and_portal": [one(P("s2", "select $1::text as t, 2 as n"), describe("S", "s2"), S),
                                            one(B("s2", ("x",)), describe("P"), E(), S)],
    "pipeline_two_statements_one_sync": [one(P("", "select 1"), B(), E(), P("", "select 2"), B(), E(), S)],
    "pipeline_five_named": [one(*[P(f"p{i}", f"select {i}") for i in range(5)],
                                *[m for i in range(5) for m in (B(f"p{i}"), E())], S)],
    "flush_then_sync_asyncpg_style": [one(P("a1", "select $1::int"), describe("S", "a1"), flush(), wait=("n", 3)),
                                      one(B("a1", ("7",)), E(), S)],
    "flush_parse_only": [one(P("a2", "select 5"), flush(), wait=("n", 1)), one(S)],
    "flush_skipped_parse_second_time": [one(P("a3", "select 6"), S), one(P("a4", "select 6"), flush(),
                                                                          wait=("n", 1)),
                                        one(B("a4"), E(), S)],
    "describe_before_bind": [one(P("d1", "select $1::int4 as v"), describe("S", "d1"), B("d1", ("3",)),
                                 describe("P"), E(), S)],
    "describe_after_bind": [one(P("d2", "select 'x'::text"), B("d2"), describe("P"), E(), S)],
    "close_then_reparse_other_text": [one(P("c1", "select 1"), S), one(close("S", "c1"), S),
                                      one(P("c1", "select 2"), B("c1"), E(), S)],
    "close_portal": [one(P("", "select 1"), B("", portal="po"), close("P", "po"), E("po"), S)],
    "close_unknown_statement": [one(close("S", "nope"), S)],
    "bind_unknown_name": [one(B("ghost"), E(), S), one(Q("select 'after'"))],
    "describe_unknown_name": [one(describe("S", "ghost"), S)],
    "bind_unnamed_without_parse": [one(B(""), E(), S)],
    "error_mid_pipeline_parse": [one(P("", "select 1"), B(), E(), P("", "selec oops"), B(), E(), S),
                                 one(P("", "select 3"), B(), E(), S)],
    "error_mid_pipeline_execute": [one(P("e1", "select 1/$1::int"), B("e1", ("0",)), E(), B("e1", ("1",)), E(), S),
                                   one(B("e1", ("1",)), E(), S)],
    "failed_parse_leaves_no_statement": [one(P("bad", "select from from"), S), one(B("bad"), E(), S)],
    "deallocate_then_bind": [one(P("dd", "select 1"), S), one(Q("deallocate dd")), one(B("dd"), E(), S)],
    "deallocate_prepare_keyword": [one(P("dd2", "select 1"), S), one(Q("DEALLOCATE PREPARE dd2")),
                                   one(B("dd2"), E(), S)],
    "deallocate_all_then_bind": [one(P("da", "select 1"), P("db", "select 2"), S), one(Q("deallocate all")),
                                 one(B("da"), E(), S)],
    "deallocate_unknown": [one(Q("deallocate nosuch"))],
    "discard_all_then_bind": [one(P("dc", "select 1"), S), one(Q("discard all")), one(B("dc"), E(), S)],
    "same_name_two_clients_different_text": [one(P("x", "select 'client0'"), S),
                                             one(P("x", "select 'client1'"), S, client=1),
                                             one(B("x"), E(), S), one(B("x"), E(), S, client=1),
                                             one(B("x"), E(), S)],
    "same_text_two_clients_different_names": [one(P("m0", "select 42"), S), one(P("m1", "select 42"), S, client=1),
                                              one(B("m0"), E(), S), one(B("m1"), E(), S, client=1)],
    "unnamed_reparsed_many_texts": [one(P("", f"select {i}"), B(), E(), S) for i in range(6)],
    "typed_parameters": [one(P("t1", "select $1", (20,)), describe("S", "t1"), B("t1", ("9",)), E(), S)],
    "untyped_vs_typed_same_text": [one(P("t2", "select $1::int"), describe("S", "t2"), S),
                                   one(P("t3", "select $1::int", (25,)), describe("S", "t3"), S)],
    "binary_parameter": [one(P("bp", "select $1::int4 + 1"), B("bp", ((5).to_bytes(4, "big"),), fmts=(1,)), E(), S)],
    "portal_suspended": [one(P("ps", "select g from generate_series(1, 5) g"), B("ps", portal="cur"),
                             E("cur", 2), E("cur", 2), E("cur", 0), S)],
    "inside_explicit_transaction": [one(Q("begin")), one(P("tx", "select 1"), B("tx"), E(), S),
                                    one(B("tx"), E(), S), one(Q("commit"))],
    "error_inside_transaction": [one(Q("begin")), one(P("te", "select 1/0"), B("te"), E(), S),
                                 one(B("te"), E(), S), one(Q("rollback")), one(B("te"), E(), S)],
    "ddl_between_executions": [one(Q("drop table if exists ddl_t; create table ddl_t (a int)")),
                               one(P("dq", "select * from ddl_t"), B("dq"), E(), S),
                               one(Q("alter table ddl_t add column b int")),
                               one(B("dq"), E(), S),
                               one(close("S", "dq"), P("dq", "select * from ddl_t"), B("dq"), E(), S),
                               one(Q("drop table ddl_t"))],
    "empty_query": [one(P("", ""), B(), E(), S)],
    "sync_alone_and_repeated": [one(S), one(S, S, S, wait=3)],
    "simple_query_between_batches": [one(P("sq", "select 1"), S), one(Q("select 2; select 3")), one(B("sq"), E(), S)],
    "no_data_statement": [one(P("nd", "do $$begin end$$"), describe("S", "nd"), B("nd"), E(), S)],
    "portal_outlives_closed_statement": [one(P("os", "select 7"), B("os", portal="keep"), close("S", "os"),
                                             E("keep"), S)],
    "wrong_parameter_count": [one(P("wc", "select $1::int"), B("wc", ()), E(), S), one(B("wc", ("1",)), E(), S)],
    "bind_in_transaction_after_parse_elsewhere": [one(P("el", "select 'elsewhere'"), S), one(Q("begin")),
                                                  one(B("el"), E(), S), one(Q("commit"))],
    "quoted_deallocate_name": [one(P("MixedCase", "select 1"), S), one(Q('deallocate "MixedCase"')),
                               one(B("MixedCase"), E(), S)],
    # tokio-postgres: Bind, Execute, Sync, then the data; PostgreSQL ignores a Sync during COPY IN.
    "copy_in_extended_sync_before_data": [one(Q("drop table if exists cpx; create table cpx (a int)")),
                                          one(P("cp", "copy cpx from stdin"), describe("S", "cp"), S),
                                          one(B("cp"), E(), S, wait=("n", 2)),
                                          one(frame("d", b"1\n2\n"), frame("c"), S),
                                          one(Q("select count(*) from cpx")),
                                          one(P("", "select count(*) from cpx"), B(), E(), S),
                                          one(P("", "select count(*) from cpx"), B(), E(), S),
                                          one(Q("drop table cpx"))],
    "copy_in_extended_plain": [one(Q("drop table if exists cpy; create table cpy (a int)")),
                               one(P("", "copy cpy from stdin"), B(), E(), flush(), wait=("n", 3)),
                               one(frame("d", b"7\n"), frame("c"), S),
                               one(Q("select sum(a) from cpy; drop table cpy"))],
    # The whole COPY in one write, a Close of its statement after the CopyDone: the Close waited for the COPY's
    # window to be answered (RewriterBase._waits), whose Sync PostgreSQL ignores, and PostgreSQL keeps the
    # COPY's CommandComplete until a Sync or Flush comes: it hung (found by test_state_random).
    "copy_in_then_close_in_one_write": [
        one(Q("drop table if exists cpw; create table cpw (a int)")),
        one(P("cw", "copy cpw from stdin"), B("cw"), E(), S, frame("d", b"5\n"), frame("c"), close("S", "cw"), S),
        one(P("", "copy cpw from stdin"), B(), E(), S, frame("d", b"6\n"), frame("c"), close("S", ""), S),
        one(Q("select sum(a) from cpw; drop table cpw"))],
    # Repeated batches take the batch fast path (ClientConn._fast_batch) once both servers hold the statement.
    "fast_unnamed_repeated": [one(P("", "select $1::int + 1"), B("", ("1",)), describe("P"), E(), S)] * 5,
    "fast_named_bind_error": [one(P("fw", "select $1::int"), S)] + [one(B("fw", ("2",)), E(), S)] * 3
                             + [one(B("fw", ()), E(), S), one(B("fw", ("3",)), E(), S)],
    "fast_result_type_changed": [one(Q("drop table if exists frt; create table frt (a int)")),
                                 *[one(P("", "select * from frt"), B(), E(), S)] * 3,
                                 one(Q("alter table frt add column b int")),
                                 *[one(P("", "select * from frt"), B(), E(), S)] * 3,
                                 one(Q("drop table frt"))],
    "fast_then_pipelined": [*[one(P("", "select 5"), B(), E(), S)] * 3,
                            one(P("", "select 5"), B(), E(), S, wait=0),
                            one(P("", "select 6"), B(), E(), S, wait=2)],
    "execute_unnamed_after_error_sync": [one(P("", "select 1"), S), one(B("", ("extra",)), E(), S),
                                         one(B(""), E(), S)],
    # A second Parse of a name fails (42P05) and PostgreSQL skips to Sync.
    "parse_existing_name": [one(P("dup", "select 1"), S), one(P("dup", "select 2"), B("", "dup"), E(), S),
                            one(B("", "dup"), E(), S), one(P("dup", "select 1"), S)],
    # Messages skipped after an error (up to Sync, Flush or not) define nothing, close nothing.
    "skipped_parse_after_error": [one(P("", "select error"), P("sk", "select 3"), flush(), S),
                                  one(B("", "sk"), E(), S)],
    "skipped_parse_of_cached_text": [one(P("h1", "select 4"), S), one(close("S", "h1"), S),
                                     one(P("", "select error"), P("h2", "select 4"), B("", "h2"), E(), S),
                                     one(B("", "h2"), E(), S)],
    "skipped_unnamed_parse_keeps_previous": [one(P("", "select 'kept'"), S),
                                             one(P("", "select error"), S),
                                             one(P("", "select 'keep2'"), S),
                                             one(B("", ("x",)), E(), P("", "select 'lost'"), S),
                                             one(B(""), E(), S)],
    # The error reaches the client (Flush) before it sends the rest of the batch: what it sends until its
    # Sync is skipped all the same (psycopg's pipeline does this).
    "skipped_after_error_already_answered": [one(P("", "select error"), B(), E(), flush(), wait=("n", 1)),
                                             one(P("", "select 1"), P("late", "select 1"), B("", "late"), E(),
                                                 Q("select 'skipped'"), S),
                                             one(B("", "late"), E(), S), one(B(""), E(), S)],
    "skipped_close": [one(P("kc", "select 5"), S), one(P("", "select error"), close("S", "kc"), S),
                      one(B("", "kc"), E(), S)],
    "skipped_query_after_error": [one(P("", "select 1"), B("", fmts=(7,)), Q("select 2"), E(), S),
                                  one(Q("select 'next'"))],
    # Pipelined windows: a Parse (or Close) in an earlier window, unanswered when the next window is sent, is
    # skipped by PostgreSQL after an error before it in its window; the next window must not rely on it (the
    # pool's statement is closed and parsed again, a message naming the client's statement waits).
    "skipped_parse_at_bind_error_next_window_parses_again": [
        one(P("", "select $1::int"), B("", ("1",), fmts=(7,)), P("", "select 8001"), B(), E(), S,
            P("", "select 8001"), B(), E(), S, wait=2)],
    "skipped_parse_at_execute_error_next_window_parses_again": [
        one(P("", "select 1/0"), B(), E(), P("", "select 8002"), B(), E(), S, P("", "select 8002"), B(), E(), S,
            wait=2)],
    "skipped_parse_next_window_describes_and_binds_another_name": [
        one(P("w3", "select 8003"), S),
        one(P("", "select 1/0"), B(), E(), P("w3b", "select 8003 "), P("", "select 8003 "), S,
            P("w3", "select 8003"), describe("S", "w3"), B("w3"), E(), S, B("", "w3"), E(), S, wait=3)],
    "skipped_named_parse_next_window_binds_it": [
        one(P("", "select 1/0"), B(), E(), P("w4", "select 8004"), S, B("w4"), E(), S, describe("S", "w4"), S,
            P("w4", "select 8004"), B("w4"), E(), S, wait=4)],
    "skipped_describe_reparse_next_window": [
        one(P("", "select 8005"), B(), E(), S),
        one(P("", "select 1/0"), B(), E(), P("", "select 8005"), describe("S"), S, P("", "select 8005"),
            describe("S"), B(), E(), S, wait=2),
        one(P("", "select 8005"), B(), E(), S)],
    "skipped_close_next_window": [
        one(P("w6", "select 8006"), S),
        one(P("", "select 1/0"), B(), E(), close("S", "w6"), S, B("w6"), E(), S, P("w6", "select 8006"), S,
            wait=3)],
    "skipped_unnamed_parse_next_window_binds_the_previous": [
        one(P("", "select 1/0"), B(), E(), P("", "select 8008"), S, B(), E(), S, wait=2)],
    "skipped_close_and_parse_of_a_name_leave_it_as_before": [
        one(P("w10", "select 8010"), S),
        one(P("", "select 1/0"), B(), E(), close("S", "w10"), P("w10", "select 8010.5"), S, B("w10"), E(), S,
            wait=2)],
    "two_skipped_unnamed_parses_leave_the_one_before": [
        one(P("", "select 8011"), S),
        one(P("", "select 1/0"), B(), E(), P("", "select 8011.1"), P("", "select 8011.2"), S, B(), E(), S,
            wait=2)],
    "failed_parse_next_window_after_create": [
        one(P("", "select * from w7_t"), S, Q("create table w7_t as select 8007 as v"),
            P("", "select * from w7_t"), B(), E(), S, Q("drop table w7_t"), wait=4)],
    # In a failed transaction PostgreSQL refuses every Parse but one of a statement that ends it (25P02, before
    # it looks at the name: a duplicate is refused the same way) and creates nothing, and refuses DEALLOCATE:
    # the pooler must not answer them itself, nor keep what it would have created, pipelined or not.
    "parse_and_deallocate_in_failed_transaction": [
        one(P("fa1", "select 8101"), S), one(Q("begin")), one(Q("select 1/0")), one(P("fa2", "select 8101"), S),
        one(P("fa1", "select 8101"), S), one(P("", "select 8101"), B(), E(), S), one(Q("deallocate all")),
        one(Q("deallocate fa1")), one(P("fa3", "rollback"), S), one(P("fa4", ""), S), one(Q("rollback")),
        one(B("fa1"), E(), S), one(describe("S", "fa2"), S), one(B(), E(), S), one(describe("S", "fa3"), S),
        one(describe("S", "fa4"), S)],
    "parse_in_failed_transaction_pipelined": [
        one(P("fp1", "select 8102"), S), one(P("", "select 8102"), S),  # (on both servers: not in flight below)
        one(Q("begin"), Q("select 1/0"), P("fp2", "select 8102"), S, wait=3), one(Q("rollback")),
        one(Q("begin"), P("", "select 1/0"), B(), E(), S, P("fp3", "select 8102"), B("", "fp3"), E(), S, wait=3),
        one(Q("rollback")), one(describe("S", "fp2"), S), one(P("fp3", "select 8102"), S), one(B("fp3"), E(), S)],
    # A DEALLOCATE pipelined behind a request that fails the transaction: refused (25P02), names kept; behind
    # one that does not: done (it waits for the answers in flight, then is answered here).
    "deallocate_pipelined_behind_a_failure": [
        one(P("fq1", "select 8103"), P("fq2", "select 8103"), S), one(Q("begin")),
        one(Q("select 1/0"), Q("deallocate all"), wait=2), one(Q("rollback")),
        one(Q("begin"), Q("select 1/0"), Q("deallocate fq1"), wait=3), one(Q("rollback")),
        one(B("fq1"), E(), S), one(Q("select 1"), Q("deallocate fq2"), wait=2), one(B("fq2"), E(), S),
        # the same through the extended protocol (a prepared DEALLOCATE)
        one(P("fq3", "select 8103"), S), one(Q("begin")),
        one(Q("select 1/0"), P("", "deallocate fq3"), B(), E(), S, wait=2), one(Q("rollback")),
        one(B("fq3"), E(), S)],
    # A notice of a request pipelined behind a DEALLOCATE answered here comes after the DEALLOCATE's answer (the
    # notice streamed past the queued answer; test_state_random transaction seed 40).
    "notice_behind_a_deallocate_answered_here": [
        one(P("fn1", "select 8104"), P("fn2", "select 8104"), S), one(Q("deallocate fn1"), Q("rollback"), wait=2),
        one(Q("deallocate fn2"), Q("commit"), Q("select 1"), wait=3)],
    # In a transaction block PostgreSQL takes the transaction's snapshot at a Parse of a query and at a DEALLOCATE
    # (SET TRANSACTION after them fails, 25001), not at a Parse of a SET: so must what the pooler answers itself.
    "snapshot_at_a_parse_or_deallocate_answered_here": [
        one(P("sn1", "select 8401"), P("sn3", "set work_mem = '1MB'"), S),
        one(Q("begin")), one(P("sn2", "select 8401"), S), one(Q("set transaction isolation level serializable")),
        one(Q("rollback")), one(Q("begin")), one(Q("deallocate sn2")),
        one(Q("set transaction isolation level serializable")), one(Q("rollback")),
        one(Q("begin")), one(P("sn4", "set work_mem = '1MB'"), describe("S", "sn4"), S),
        one(Q("set transaction isolation level serializable; show transaction_isolation")), one(Q("rollback")),
        one(Q("begin")), one(Q("select 1"), Q("deallocate sn1"), wait=2), one(Q("show transaction_isolation")),
        one(Q("commit")), one(P("sn5", "select 8401"), S), one(Q("begin")), one(P("", "deallocate sn5"), B(), E(), S),
        one(Q("set transaction isolation level serializable")), one(Q("rollback"))],
    "describe_after_a_parse_refused_in_a_failed_transaction": [
        one(P("fr0", "select 8105"), S), one(Q("begin")), one(Q("select 1/0")),
        one(P("fr1", "select 8105"), S, describe("S", "fr1"), S, wait=2), one(Q("rollback")),
        one(describe("S", "fr1"), S)],
    "duplicate_parse_with_bad_syntax": [
        one(P("fd", "select 8104"), S), one(P("fd", "selec 8104"), S), one(P("fd", "select 8105"), S)],
    # SQL DEALLOCATE of a protocol-level statement sent through the extended protocol (psycopg in pipeline mode
    # with a libpq before 17): the client's name goes, as with the simple query; one PostgreSQL skips after an
    # error in its batch deallocates nothing.
    "prepared_deallocate": [
        one(P("pd1", "select 8201"), S), one(P("", "deallocate pd1"), B(), E(), S), one(B("pd1"), E(), S),
        one(P("", "deallocate pd1"), B(), E(), S), one(P("pd2", "select 8202"), S),
        one(P("dx", "DEALLOCATE PREPARE pd2"), S, B("dx"), describe("P"), E(), S, wait=2),
        one(describe("S", "pd2"), S), one(P("pd3", "select 8203"), S),
        one(P("", "select 8203"), B(), E(), S, P("", "deallocate all"), B(), E(), S, wait=2),
        one(B("pd3"), E(), S), one(P("pd4", "select 8204"), S),
        one(P("", "select 1/0"), B(), E(), P("", "deallocate pd4"), B(), E(), S), one(B("pd4"), E(), S),
        one(Q("begin")), one(Q("select 1/0")), one(P("", "deallocate pd4"), B(), E(), S), one(Q("rollback")),
        one(B("pd4"), E(), S), one(P("", "deallocate nosuch"), B(), E(), S),
        one(Q("begin")), one(Q("select 1/0")), one(P("", "deallocate pd4"), B(), E(), S),
        one(P("pd5", "select 8205"), B(), E(), S), one(P("", "deallocate all"), B(), E(), S), one(Q("rollback")),
        one(describe("S", "pd4"), S)],
    # After a RESET the pooler reads the session's settings back and sets the startup ones again (session
    # mode, session/resets.py): as a simple query, that dropped the client's unnamed statement.
    "unnamed_statement_survives_a_reset": [
        one(P("", "select 8301"), S), one(Q("reset all")), one(B(), E(), S), one(Q("set timezone to default")),
        one(B(), E(), S), one(P("", "discard all"), B(), E(), S), one(B(), E(), S), one(Q("show timezone"))],
    # A lone BEGIN, the COMMIT of its empty transaction and an UNLISTEN are answered by the pooler without a
    # server (transaction mode): PostgreSQL drops the unnamed statement when any simple query starts, and so
    # must the pooler when it answers one (found by test_state_random).
    "unnamed_statement_gone_after_a_query_answered_here": [
        one(P("", "select 8302"), S), one(Q("begin")), one(B(), E(), S), one(Q("commit")),
        one(P("", "select 8303"), S), one(Q("begin")), one(Q("commit")), one(B(), E(), S),
        one(P("", "select 8304"), S), one(Q("unlisten *")), one(B(), E(), S)],
    # Startup settings (see CLIENT_PARAMS): each client sees its own, whatever server it lands on.
    "startup_settings_two_clients": [one(Q("show search_path; show work_mem; show application_name")),
                                     one(Q("show search_path; show work_mem; show TimeZone"), client=1),
                                     one(P("", "select current_setting('work_mem')"), B(), E(), S),
                                     one(Q("show work_mem; show search_path; show DateStyle")),
                                     one(P("", "select current_setting('work_mem')"), B(), E(), S, client=1),
                                     one(Q("show application_name; show statement_timeout"), client=1)],
}

# Several steps, yet one server: the steps but the last use none (a Parse or Close the pooler answers alone) or
# keep theirs (a Flush, a transaction block, an error the client has not yet synced).
ONE_SERVER = {"flush_then_sync_asyncpg_style", "flush_parse_only", "deallocate_then_bind", "deallocate_prepare_keyword",
              "deallocate_all_then_bind", "inside_explicit_transaction", "quoted_deallocate_name",
              "skipped_query_after_error"}

# Startup-packet settings of each client, per sequence (default: none).
CLIENT_PARAMS: dict[str, list[dict[str, str]]] = {
    "unnamed_statement_survives_a_reset": [{"TimeZone": "Asia/Tokyo", "work_mem": "7MB", "application_name": "c0"}],
    "startup_settings_two_clients": [
        {"search_path": "s1, public", "work_mem": "7MB", "application_name": "c0", "DateStyle": "SQL, DMY",
         "options": "-c statement_timeout=12345"},
        {"TimeZone": "Asia/Tokyo"},
    ],
}


def normalise(msgs: list[tuple[str, bytes]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for t, body in msgs:
        if t in ("S", "K"):
            continue
        if t in ("E", "N"):
            f = parse_fields(body)
            out.append((t, (f.get("S"), f.get("C"), f.get("M"))))
        else:
            out.append((t, body))
    return out


def run_steps(clients: list[WireClient], steps: list[Step], shuffle: Any = None) -> list[tuple[int, Any]]:
    transcript: list[tuple[int, Any]] = []
    for idx, data, wait in steps:
        c = clients[idx]
        c.send(data)
        got: list[tuple[str, bytes]] = []
        if isinstance(wait, tuple):
            for _ in range(wait[1]):
                got.append(c.read_message(timeout=10))
        else:
            zs = 0
            while zs < wait:
                t, body = c.read_message(timeout=10)
                got.append((t, body))
                if t == "Z":
                    zs += 1
        transcript.append((idx, normalise(got)))
        if shuffle is not None:
            shuffle()
    return transcript


@pytest.fixture(scope="module", params=["transaction", "session"])
def pooler(request: pytest.FixtureRequest, pg: Any, tmp_path_factory: Any) -> Iterator[Any]:
    with started_in_mode(pg, tmp_path_factory, request.param, "pooler-diff", pool_size=2,
                         general={"server_prepared_statements_cache_size": 100, "query_wait_timeout": 20000}) as p:
        yield p


def _connect(host: str, port: int, params: dict[str, str] | None = None) -> WireClient:
    return WireClient.connect(host, port, SCRAM_USER, DBNAME, SCRAM_PASSWORD, params=params)


# Two clients whose startup settings differ: what each sees must be its own, whatever server it lands on.
TWO_SETTINGS = [{"DateStyle": "SQL, DMY", "application_name": "c0"}, {"DateStyle": "German", "TimeZone": "Asia/Tokyo"}]


def connect_both(pg: Any, pooler: Any, params: list[dict[str, str]]) -> tuple[list[WireClient], list[WireClient]]:
    """One client per entry of `params` straight to PostgreSQL, and one each through the pooler."""
    return ([_connect(pg.host, pg.port, p) for p in params], [_connect(pooler.host, pooler.port, p) for p in params])


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_same_responses_as_postgres(pg: Any, pooler: Any, name: str) -> None:
    steps = SEQUENCES[name]
    nclients = 1 + max(s[0] for s in steps)
    direct, pooled = connect_both(pg, pooler, CLIENT_PARAMS.get(name, [{}] * nclients))
    # Transaction mode, pool_size 2: each step runs on the other server than the one before (the holder
    # checks it). Session mode: each client keeps its server; the sequences before this one used them.
    holder = ServerHolder(pooler.host, pooler.port, pooled, enabled=pooler.mode == "transaction")
    try:
        want = run_steps(direct, steps)
        got = run_steps(pooled, steps, holder.move)
        assert got == want
    finally:
        holder.close()
        for c in direct + pooled:
            c.close()
    # The holder asserted that no two steps in a row ran on one server; here, that it switched at all.
    if pooler.mode == "transaction" and len(steps) > 1 and name not in ONE_SERVER:
        assert holder.switches > 0, holder.used


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "in_a_block"])
def test_a_statement_evicted_then_invalidated_is_used_again(pg: Any, pooler_factory: Any, pinned: bool) -> None:
    """Server caches of 1: a client keeps its server (pinned by a temp table, or inside one transaction block),
    names a statement, an unnamed one evicts it from the server's cache (its DEALLOCATE waits for the check-in),
    and DDL invalidates the pool's cache. Its Bind was sent with a Parse again, which PostgreSQL refused
    (42P05: the server still held it); it is used as the server holds it, as PostgreSQL keeps a session's
    statement (test_state_random with tiny caches found it)."""
    p = pooler_factory(pool_mode="transaction", pool_size=2,
                       general={"server_prepared_statements_cache_size": 1, "prepared_statements_cache_size": 2})
    first = Q("create temp table ev_a (x int)") if pinned else Q("begin")
    steps = [one(first), one(P("ev1", "select 8201"), S), one(P("", "select 8202"), B(), E(), S),
             one(Q("create temp table ev_b (x int)" if pinned else "create table ev_c (x int)")),
             one(B("ev1"), E(), S), one(Q("select 1")), one(B("ev1"), E(), S)]
    if not pinned:
        steps.append(one(Q("rollback")))
    direct, pooled = _connect(pg.host, pg.port), _connect(p.host, p.port)
    try:
        want = run_steps([direct], steps)
        assert want[4][1][1] == ("D", b"\x00\x01\x00\x00\x00\x048201")
        assert run_steps([pooled], steps) == want
    finally:
        direct.close()
        pooled.close()


def test_thousand_statements_through_cache_of_100(pg: Any, pooler: Any) -> None:
    """1,000 distinct statements with server caches of 100 (transaction mode): evictions happen, answers stay
    right."""
    direct = _connect(pg.host, pg.port)
    pooled = _connect(pooler.host, pooler.port)
    try:
        for c in (direct, pooled):
            for i in range(1000):
                c.send(P(f"k{i}", f"select {i} as v"), S)
                c.read_until("Z")
        for i in list(range(0, 1000, 37)) + [999, 0]:
            outs = []
            for c in (direct, pooled):
                c.send(B(f"k{i}"), E(), S)
                outs.append(normalise(c.read_until("Z")))
            assert outs[0] == outs[1]
            assert outs[1][1][1][-len(str(i)):] == str(i).encode()
        # Transaction mode: the servers really evicted, every one holds at most 100 statements. Session mode:
        # the client's statements are its own, all 1,000 of them on its server, as on PostgreSQL.
        for _ in range(6):
            rows = pooled.query_rows("select count(*) from pg_prepared_statements")
            n = int(rows[0][0] or 0)
            if pooler.mode == "transaction":
                assert 0 < n <= 100
            else:
                assert n == 1000
    finally:
        direct.close()
        pooled.close()
