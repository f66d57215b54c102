"""What a transaction's LISTEN/UNLISTEN leave once ROLLBACK, ROLLBACK TO and RELEASE are taken into account
(session/listening.py `_undone`), and the statements that set, roll back to and release savepoints (core/listen.py
`savepoint`). Compared with PostgreSQL end to end in tests/integration/test_listen_notify.py."""

from __future__ import annotations

from pgdoorman.core import listen as ls
from pgdoorman.session.listening import ROLLBACK, _undone

L = ls.LISTEN
U = ls.UNLISTEN


def sp(name: bytes) -> tuple[int, bytes]:
    return ls.SAVEPOINT, name


def test_savepoint_statements_as_postgresql_names_them() -> None:
    assert ls.savepoint(b"SAVEPOINT S1") == (ls.SAVEPOINT, b"s1")
    assert ls.savepoint(b'savepoint "_pg3_1";') == (ls.SAVEPOINT, b"_pg3_1")
    assert ls.savepoint(b"rollback to savepoint a") == (ls.ROLLBACK_TO, b"a")
    assert ls.savepoint(b"ROLLBACK WORK TO A") == (ls.ROLLBACK_TO, b"a")
    assert ls.savepoint(b"rollback to savepoint") == (ls.ROLLBACK_TO, b"savepoint")  # (a savepoint so named)
    assert ls.savepoint(b'release savepoint "B"') == (ls.RELEASE, b"B")
    assert ls.savepoint(b"release b") == (ls.RELEASE, b"b")
    for text in (b"rollback", b"rollback to", b"savepoint a; select 1", b"select 'savepoint a'"):
        assert ls.savepoint(text) is None


def test_rollback_to_a_savepoint_voids_what_came_after_it() -> None:
    assert _undone([(L, b"x"), sp(b"s"), (L, b"y"), (ls.ROLLBACK_TO, b"s")]) == ([(L, b"x")], [(L, b"y")], False)
    # the savepoint stays: a second ROLLBACK TO it voids what came since
    assert _undone([sp(b"s"), (L, b"y"), (ls.ROLLBACK_TO, b"s"), (L, b"z"), (ls.ROLLBACK_TO, b"s")]) == (
        [], [(L, b"y"), (L, b"z")], False)
    # the latest savepoint of that name
    assert _undone([sp(b"s"), (L, b"a"), sp(b"s"), (U, b"a"), (ls.ROLLBACK_TO, b"s")]) == ([(L, b"a")], [(U, b"a")],
                                                                                          False)
    # set before the first change (not recorded): everything before the ROLLBACK TO
    assert _undone([(L, b"x"), (ls.ROLLBACK_TO, b"t"), (L, b"y")]) == ([(L, b"y")], [(L, b"x")], False)


def test_release_keeps_the_changes_and_a_rollback_voids_them_all() -> None:
    assert _undone([sp(b"s"), (L, b"x"), (ls.RELEASE, b"s"), (ls.ROLLBACK_TO, b"s")]) == ([], [(L, b"x")], False)
    assert _undone([sp(b"s"), (L, b"x"), sp(b"t"), (L, b"y"), (ls.RELEASE, b"s")]) == ([(L, b"x"), (L, b"y")], [],
                                                                                       False)
    assert _undone([(L, b"x"), sp(b"s"), (ROLLBACK, b""), (L, b"y")]) == ([(L, b"y")], [(L, b"x")], True)
