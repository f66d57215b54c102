"""The leak keywords are looked for in two places (core/leaks.py, and inline on the simple-query fast path in
session/fastpath.py): the fast path must find every one of leaks.KEYWORDS (itself, or a part of it that sends
the statement to leaks.lowered_may_leave_state), or a temporary table or set_config() sent through the fast
path would go unseen."""

from __future__ import annotations

import inspect
import re

from pgdoorman.core import leaks
from pgdoorman.session.fastpath import FastPaths

_FIND = re.compile(r'low\.find\(b"([a-z_]+)"\)')


def test_fast_query_looks_for_every_keyword() -> None:
    found = set(_FIND.findall(inspect.getsource(FastPaths._fast_query)))
    for kw in leaks.KEYWORDS:
        assert any(f in kw.decode() for f in found), kw


def test_leaks_looks_for_every_keyword() -> None:
    assert set(_FIND.findall(inspect.getsource(leaks.lowered_may_leave_state))) == {k.decode() for k in leaks.KEYWORDS}


def test_each_keyword_sets_a_bit_in_any_case() -> None:
    for kw in leaks.KEYWORDS:
        assert leaks.may_leave_state(b"select x_" + kw.upper() + b"_y") != 0, kw
    assert leaks.may_leave_state(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1") == 0
