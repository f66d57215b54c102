"""A small SQL lexer: just enough to tell, before a statement reaches PostgreSQL, whether it creates session
state that cannot move between servers (transaction_pinning: refuse, docs/transaction-mode.md), and which
custom (placeholder) settings it names (`setting_names`: they are read back at the end of the transaction,
core/txstate.py, since pg_settings does not list them).

It reads what PostgreSQL's scanner would: `--` and nested `/* */` comments, '' strings (E'' with backslash
escapes, U&'' and B''/X'' alike), "" identifiers, $tag$ dollar quotes, and splits statements at `;` outside
parentheses. Nothing inside a string, a quoted identifier, a comment or a dollar-quoted body (a DO block, a
function body) is looked at. What it does not recognise is left alone: PostgreSQL answers it, and the check at
the end of the transaction (core/txstate.py) still finds what it left.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

WORD, QIDENT, STRING, OTHER = range(4)

_IDENT_START = re.compile(r"[A-Za-z_\x80-\uffff]")
_IDENT = re.compile(r"[A-Za-z_0-9$\x80-\uffff]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_PARAM = re.compile(r"\$[0-9]+")

_ADVISORY = frozenset({"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
                       "pg_try_advisory_lock_shared"})
_TEMP = frozenset({"temp", "temporary"})
# Cheap pre-check: a statement that pins names one of these (lower-cased).
KEYWORDS = (b"temp", b"advisory", b"declare", b"prepare")


def tokens(sql: str) -> Iterator[tuple[int, str]]:
    """(kind, text): WORD (an unquoted identifier or keyword, lower-cased), QIDENT, STRING (the body of a ''
    string or a dollar quote; "" for an escape string with a backslash), OTHER (one character of punctuation or
    an operator, or a number, or a parameter: `$1`)."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif c == "'":
            backslash = _word_before(sql, i) in ("e", "E")
            j = _skip_string(sql, i + 1, backslash)
            body = sql[i + 1 : j - 1]
            yield STRING, "" if backslash and "\\" in body else body.replace("''", "'")
            i = j
        elif c == '"':
            j = i + 1
            while True:
                k = sql.find('"', j)
                if k < 0:
                    j = n
                    break
                if sql.startswith('""', k):
                    j = k + 2
                    continue
                j = k + 1
                break
            yield QIDENT, sql[i + 1 : j - 1].replace('""', '"')
            i = j
        elif c == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m is not None:
                end = sql.find(m.group(0), m.end())
                yield STRING, sql[m.end() : n if end < 0 else end]
                i = n if end < 0 else end + len(m.group(0))
            else:
                m2 = _PARAM.match(sql, i)
                i = m2.end() if m2 is not None else i + 1
                yield OTHER, "$" if m2 is None else m2.group(0)
        elif _IDENT_START.match(c):
            m3 = _IDENT.match(sql, i + 1)
            assert m3 is not None
            word = sql[i : m3.end()]
            i = m3.end()
            if i < n and sql[i] == "'" and word.lower() in ("e", "b", "x", "n", "u&"):
                continue  # a prefixed string: the quote comes next
            yield WORD, word.lower()
        else:
            i += 1
            yield OTHER, c


def _word_before(sql: str, i: int) -> str:
    """The one-letter prefix right before a quote at `i` (E'...'), if it is a word of its own."""
    if i >= 2 and (sql[i - 2].isalnum() or sql[i - 2] == "_"):
        return ""
    return sql[i - 1]


def _skip_block_comment(sql: str, i: int) -> int:
    depth, i, n = 0, i, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_string(sql: str, i: int, backslash: bool) -> int:
    n = len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == "'":
            if sql.startswith("''", i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def statements(sql: str) -> Iterator[list[tuple[int, str]]]:
    """The statements of a query string: its tokens split at `;` outside parentheses (empty ones skipped)."""
    cur: list[tuple[int, str]] = []
    depth = 0
    for tok in tokens(sql):
        if tok[0] == OTHER:
            if tok[1] == "(":
                depth += 1
            elif tok[1] == ")":
                depth = max(0, depth - 1)
            elif tok[1] == ";" and depth == 0:
                if cur:
                    yield cur
                cur = []
                continue
        cur.append(tok)
    if cur:
        yield cur


def pinning(stmt: list[tuple[int, str]]) -> str | None:
    """What a statement creates that cannot move between servers: 'temp', 'advisory_lock', 'cursor',
    'prepare', or None."""
    words = [t for k, t in stmt if k == WORD]
    if not words:
        return None
    first = words[0]
    if first == "create" and _TEMP.intersection(words[1:5]):
        return "temp"  # CREATE [OR REPLACE] [GLOBAL | LOCAL] {TEMP | TEMPORARY} ...
    for i, (k, t) in enumerate(stmt):
        if k != WORD:
            continue
        nxt = stmt[i + 1] if i + 1 < len(stmt) else (OTHER, "")
        if t in _ADVISORY and nxt == (OTHER, "("):
            return "advisory_lock"
        if t == "pg_temp" and nxt == (OTHER, ".") and first == "create":
            return "temp"
        if t == "into" and first in ("select", "with") and nxt[0] == WORD and nxt[1] in _TEMP:
            return "temp"  # SELECT ... INTO TEMP t
    if first == "declare" and any(a == "with" and b == "hold" for a, b in zip(words, words[1:], strict=False)):
        return "cursor"
    if first == "prepare" and len(words) > 1 and words[1] != "transaction":
        return "prepare"
    return None


def pinning_text(text: bytes | bytearray | memoryview) -> str | None:
    """`pinning` of the first statement of a query text that pins, or None (a cheap keyword test first)."""
    raw = bytes(text)
    low = raw.lower()
    if not any(low.find(k) >= 0 for k in KEYWORDS):
        return None
    sql = raw.decode("utf-8", "replace")
    for stmt in statements(sql):
        why = pinning(stmt)
        if why is not None:
            return why
    return None


MAX_NAMES = 64  # names one query text may give (more are ignored, as names computed at run time are)


def setting_names(stmt: list[tuple[int, str]], params: bool = False) -> list[str]:
    """The custom settings (names with a dot: PostgreSQL's placeholders, `myapp.user_id`) a statement may
    create or change: the variable of `SET [SESSION | LOCAL] name ...` and `RESET name`, and the literal first
    argument of each `set_config('name', ...)` call, lower-cased (setting names are case-insensitive); with
    `params`, also `$n` for a `set_config($n, ...)`."""
    out: list[str] = []
    first = stmt[0] if stmt else (OTHER, "")
    if first[0] == WORD and first[1] in ("set", "reset"):
        i = 1
        if first[1] == "set" and i < len(stmt) and stmt[i][0] == WORD and stmt[i][1] in ("session", "local") \
                and stmt[i + 1 : i + 2] != [(OTHER, ".")]:
            i += 1
        name = _dotted(stmt, i)
        if name is not None:
            out.append(name)
    for arg in _set_config_args(stmt):
        if arg[0] == STRING and "." in arg[1]:
            out.append(arg[1].lower())
        elif params and arg[0] == OTHER and arg[1][1:].isdigit():
            out.append(arg[1])  # `$n`: the name is the statement's parameter n (statement_settings)
    return out


def _dotted(stmt: list[tuple[int, str]], i: int) -> str | None:
    """A var_name at `i` (identifiers joined by dots), lower-cased, when it has a dot."""
    parts, _ = _name_parts(stmt, i)
    return ".".join(parts).lower() if len(parts) > 1 else None


def _name_parts(stmt: list[tuple[int, str]], i: int) -> tuple[list[str], int]:
    """The identifiers of a var_name at `i` (joined by dots), and the index after it."""
    parts: list[str] = []
    while i < len(stmt) and stmt[i][0] in (WORD, QIDENT):
        parts.append(stmt[i][1])
        i += 1
        if stmt[i : i + 1] != [(OTHER, ".")]:
            break
        i += 1
    return parts, i


def _set_config_args(stmt: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The first argument of each `set_config(` call of a statement (a token)."""
    for i in range(len(stmt) - 3):
        if stmt[i] == (WORD, "set_config") and stmt[i + 1] == (OTHER, "(") and stmt[i + 3] == (OTHER, ","):
            yield stmt[i + 2]


def names_settings(low: bytes) -> bool:
    """Cheap pre-check for setting_names_text on lower-cased text: it has a dot (every custom setting's name
    does), and a set_config call or a statement that starts with SET or RESET (or with a comment: the lexer
    looks). False for nearly every query."""
    if low.find(b".") < 0:
        return False
    if low.find(b"set_config") >= 0:
        return True
    if low.find(b"set") < 0:
        return False
    return any(p.lstrip().startswith(_SETTING_STARTS) for p in low.split(b";"))


_SETTING_STARTS = (b"set", b"reset", b"/*", b"--")


def setting_names_text(text: bytes | bytearray | memoryview, low: bytes | None = None) -> list[str]:
    """`setting_names` of every statement of a query text ([] at once for the many that name none); `low`: the
    text lower-cased, when the caller has it."""
    if low is None:
        raw = bytes(text)
        if raw.find(b".") < 0:
            return []
        low = raw.lower()
    if not names_settings(low):
        return []
    raw = bytes(text)
    out: list[str] = []
    for stmt in statements(raw.decode("utf-8", "replace")):
        out.extend(setting_names(stmt))
    return out[:MAX_NAMES]


def statement_settings(query: bytes) -> tuple[str | int, ...]:
    """A prepared statement's custom settings: the names its text gives (setting_names_text) and, for each
    `set_config($n, ...)`, the index n - 1 of the parameter whose value (at each Bind) is the name."""
    low = query.lower()
    if low.find(b"set_config") < 0:
        return tuple(setting_names_text(query, low))
    out: list[str | int] = []
    for stmt in statements(query.decode("utf-8", "replace")):
        for name in setting_names(stmt, params=True):
            out.append(int(name[1:]) - 1 if name[:1] == "$" else name)
    return tuple(dict.fromkeys(out))[:MAX_NAMES]


def bound_names(settings: tuple[str | int, ...], values: tuple[memoryview | None, ...]) -> tuple[str, ...]:
    """Statement_settings with each parameter index replaced by that Bind parameter's value (when it is a
    name with a dot; a name's text and binary forms are the same bytes)."""
    out: list[str] = []
    for x in settings:
        if isinstance(x, str):
            out.append(x)
        elif 0 <= x < len(values) and (v := values[x]) is not None:
            name = v.tobytes().decode("utf-8", "replace").lower()
            if "." in name:
                out.append(name)
    return tuple(out)


_FIRST = re.compile(rb"\s*(?:([A-Za-z_]+)(\s+transaction\b)?|([^-/;\s]))", re.I)
_EXITS = frozenset({b"commit", b"end", b"rollback", b"abort"})


def refused_when_aborted(text: bytes) -> bool:
    """Does PostgreSQL refuse a Parse of `text` in a failed transaction (25P02, creating nothing)? It does for
    every statement but those that end the transaction (COMMIT, END, ROLLBACK [TO], ABORT, PREPARE
    TRANSACTION), and not for an empty text. False when it cannot tell at a glance (a comment first)."""
    mt = _FIRST.match(text)
    if mt is None:
        return False  # empty, or a comment or `;` first
    word = mt.group(1)
    if word is None:
        return True  # `(select 1)`, `values (1)` ...
    w = word.lower()
    return w not in _EXITS and not (w == b"prepare" and mt.group(2))


# reset_steps: what each statement does to a setting, in order. A step is (name, kind); the names are lower-cased
# (PostgreSQL compares setting names so), with four markers: ALL_SETTINGS (RESET ALL), UNKNOWN (a set_config()
# whose name is not a literal), UNDONE (ROLLBACK [TO SAVEPOINT], ABORT: what the text did may be undone) and
# ENDED (COMMIT, END, PREPARE TRANSACTION: what came before belongs to a finished transaction).
SET_STEP, RESET_STEP = 0, 1
LOCAL_STEP = 2  # a bit on either: SET LOCAL, which ends with the transaction
ALL_SETTINGS, UNKNOWN, UNDONE, ENDED = "*", "?", "!", "|"
_SET_SPECIAL = {("time", "zone"): "timezone", ("session", "authorization"): "session_authorization",
                ("xml", "option"): "xmloption"}
_SET_ONE_WORD = {"schema": "search_path", "names": "client_encoding", "role": "role"}
_CHARACTERISTICS = ("default_transaction_isolation", "default_transaction_read_only",
                    "default_transaction_deferrable")


def resetting_steps(text: bytes | bytearray | memoryview, low: bytes | None = None) -> list[tuple[str, int]] | None:
    """reset_steps of a text that returns a setting to its default (at least one RESET_STEP), else None; a text
    without one of the words such a statement needs (`low`: the text lower-cased, when the caller has it) is not
    lexed."""
    if low is None:
        low = bytes(text).lower()
    if low.find(b"reset") < 0 and low.find(b"default") < 0 and low.find(b"local") < 0:
        return None
    steps = reset_steps(text)
    return steps if any(k & RESET_STEP for _, k in steps) else None


def reset_steps(text: bytes | bytearray | memoryview) -> list[tuple[str, int]]:
    """The settings each statement of a query text sets or returns to its default, in order: `RESET name`,
    `RESET ALL`, `SET [SESSION | LOCAL] name {TO | =} {value | DEFAULT}`, the special forms (`SET TIME ZONE
    {LOCAL | DEFAULT | value}`, `SET SCHEMA`, `SET NAMES`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `SET XML
    OPTION`, `SET SESSION CHARACTERISTICS AS TRANSACTION`) and each `set_config()` call (a SET_STEP, as its
    value is not looked at). What it does not recognise it leaves out (a function that sets a setting)."""
    out: list[tuple[str, int]] = []
    for stmt in statements(bytes(text).rstrip(b"\x00").decode("utf-8", "replace")):  # (a Query's NUL)
        first = stmt[0]
        if first[0] == WORD:
            w = first[1]
            if w == "reset":
                out.extend(_reset(stmt))
            elif w == "set":
                out.extend(_set(stmt))
            elif w in ("rollback", "abort"):
                out.append((UNDONE, SET_STEP))
            elif w in ("commit", "end") or w == "prepare" and stmt[1:2] == [(WORD, "transaction")]:
                out.append((ENDED, SET_STEP))
        out.extend((arg[1].lower() if arg[0] == STRING else UNKNOWN, SET_STEP) for arg in _set_config_args(stmt))
        if len(out) > MAX_NAMES:
            return [(UNKNOWN, SET_STEP)]
    return out


def _words(stmt: list[tuple[int, str]], i: int, n: int) -> tuple[str, ...]:
    return tuple(t for k, t in stmt[i : i + n] if k == WORD)


def _var_name(stmt: list[tuple[int, str]], i: int) -> tuple[str | None, int]:
    """A var_name at `i` (identifiers joined by dots), lower-cased, and the index after it."""
    parts, j = _name_parts(stmt, i)
    return (".".join(parts).lower() if parts else None), j


def _reset(stmt: list[tuple[int, str]]) -> list[tuple[str, int]]:
    two = _words(stmt, 1, 2)
    if two[:1] == ("all",) and len(stmt) == 2:
        return [(ALL_SETTINGS, RESET_STEP)]
    if two in _SET_SPECIAL:
        return [(_SET_SPECIAL[two], RESET_STEP)]
    name, _ = _var_name(stmt, 1)
    return [] if name is None else [(name, RESET_STEP)]


def _set(stmt: list[tuple[int, str]]) -> list[tuple[str, int]]:
    i = 1
    local = 0
    if stmt[1:2] in ([(WORD, "local")], [(WORD, "session")]) and stmt[2:3] != [(OTHER, ".")]:
        local = LOCAL_STEP if stmt[1][1] == "local" else 0
        if _words(stmt, 1, 2) == ("session", "characteristics"):
            return [(k, SET_STEP) for k in _CHARACTERISTICS]
        if _words(stmt, 1, 2) != ("session", "authorization"):
            i = 2
    two = _words(stmt, i, 2)
    if two in _SET_SPECIAL:
        name: str | None = _SET_SPECIAL[two]
        value = stmt[i + 2 :]
        default = ("local", "default") if name == "timezone" else ("default",)
    elif two[:1] in (("transaction",), ("constraints",)):
        return []
    elif two[:1] and two[0] in _SET_ONE_WORD and stmt[i + 1 : i + 2] != [(OTHER, ".")]:
        name, value, default = _SET_ONE_WORD[two[0]], stmt[i + 1 :], ("default",)
    else:
        name, j = _var_name(stmt, i)
        if j < len(stmt) and stmt[j] in ((WORD, "to"), (OTHER, "=")):
            j += 1
        value, default = stmt[j:], ("default",)
    if name is None:
        return []
    reset = len(value) == 1 and value[0][0] == WORD and value[0][1] in default
    return [(name, (RESET_STEP if reset else SET_STEP) | local)]
