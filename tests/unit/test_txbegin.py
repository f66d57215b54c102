"""Which simple queries the pooler may answer for a deferred BEGIN (session/txbegin.py). What PostgreSQL answers
to each is compared in tests/integration/test_deferred_begin.py; this pins down the grammar accepted."""

from __future__ import annotations

import pytest

from pgdoorman.protocol import messages as m
from pgdoorman.session.txbegin import BEGIN_DONE, BEGIN_MAX, START_DONE, end_answer, lone_begin, lone_end

DEFERRED = [
    ("BEGIN", BEGIN_DONE), ("begin;", BEGIN_DONE), ("Begin Work", BEGIN_DONE), ("BEGIN TRANSACTION ;\n", BEGIN_DONE),
    ("START TRANSACTION", START_DONE), ("start\ttransaction read only;", START_DONE),
    ("BEGIN ISOLATION LEVEL READ COMMITTED", BEGIN_DONE), ("begin isolation level read uncommitted", BEGIN_DONE),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE;", BEGIN_DONE),
    ("BEGIN READ ONLY, ISOLATION LEVEL REPEATABLE READ, NOT DEFERRABLE", BEGIN_DONE),
]
NOT_DEFERRED = [
    "BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN READ WRITE", "begin, read only", "BEGIN READ ONLY READ ONLY",
    "BEGIN DEFERRABLE NOT DEFERRABLE", "BEGIN ISOLATION LEVEL READ COMMITTED ISOLATION LEVEL REPEATABLE READ",
    " BEGIN", "/* x */ BEGIN", "BEGIN; SELECT 1", "BEGIN;;", "BEGINX", "BEGIN WORK TRANSACTION", "START",
    "START TRANSACTION ISOLATION LEVEL FOO", "BEGIN ISOLATION LEVEL", "COMMIT", "SELECT 1", "",
]


@pytest.mark.parametrize("text,answer", DEFERRED)
def test_deferred(text: str, answer: bytes) -> None:
    assert lone_begin(text.encode() + b"\0") == answer
    assert len(m.query(text)) < BEGIN_MAX


@pytest.mark.parametrize("text", NOT_DEFERRED)
def test_not_deferred(text: str) -> None:
    assert lone_begin(text.encode() + b"\0") is None


def test_lone_end() -> None:
    for text, commit in (("COMMIT", True), ("end;", True), ("commit work", True), ("ROLLBACK", False),
                         ("abort transaction;", False)):
        assert lone_end(text.encode() + b"\0") is commit
    for text in ("COMMIT AND CHAIN", "ROLLBACK TO a", "COMMIT PREPARED 'x'", "END; SELECT 1", " COMMIT"):
        assert lone_end(text.encode() + b"\0") is None
    assert end_answer(True, False) == m.command_complete("COMMIT") + m.RFQ_IDLE
    assert end_answer(True, True) == end_answer(False, False) == m.command_complete("ROLLBACK") + m.RFQ_IDLE
