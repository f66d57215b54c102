"""Reading PgBouncer's files: pgbouncer.ini (with its %include files) and the userlist (auth_file), into
settings that remember their file and line; malformed input raises ImportFailed with `file:line: why`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field


class ImportFailed(Exception):
    """Malformed input: the message starts with `file:line:` when a line is to blame."""


@dataclass


class Setting:
    key: str
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


@dataclass


class Ini:
    # Section name (lower case) -> settings in file order; [databases] and [users] keys keep their case.
    sections: dict[str, list[Setting]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


_SECTION_RE = re.compile(r"^\[\s*([^\]]+?)\s*\]$")
_KEY_RE = re.compile(r"^([^=]+?)\s*=\s*(.*)$")


def read_ini(path: str, ini: Ini | None = None, section: str | None = None, depth: int = 0) -> Ini:
    """PgBouncer's ini syntax: `[section]`, `key = value`, comment lines starting with ; or #, and
    `%include file` (a relative name is taken relative to the current directory first, as PgBouncer does,
    then relative to the including file)."""
    ini = ini if ini is not None else Ini()
    if depth > 10:
        raise ImportFailed(f"{path}: %include nested more than 10 deep (a loop?)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFailed(f"{path}: cannot read: {e}") from None
    ini.files.append(path)
    current = section
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        where = f"{path}:{n}"
        if line.startswith("%"):
            word, _, arg = line.partition(" ")
            if word.lower() != "%include" or not arg.strip():
                raise ImportFailed(f"{where}: unknown directive {line!r} (only %include <file> exists)")
            name = arg.strip()
            target = name
            if not os.path.isabs(name) and not os.path.exists(name):
                target = os.path.join(os.path.dirname(os.path.abspath(path)), name)
            if not os.path.exists(target):
                raise ImportFailed(f"{where}: %include {name}: no such file")
            read_ini(target, ini, current, depth + 1)
            continue
        m = _SECTION_RE.match(line)
        if m:
            current = m.group(1).lower()
            ini.sections.setdefault(current, [])
            continue
        if line.startswith("["):
            raise ImportFailed(f"{where}: malformed section header {line!r}")
        m = _KEY_RE.match(line)
        if not m:
            raise ImportFailed(f"{where}: expected `key = value`, a [section] or %include, got {line!r}")
        if current is None:
            raise ImportFailed(f"{where}: setting {m.group(1)!r} outside any [section]")
        key = m.group(1).strip()
        if current not in ("databases", "users"):
            key = key.lower()
        ini.sections[current].append(Setting(key, _unquote_ini(m.group(2).strip()), path, n))
    return ini


def _unquote_ini(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_connstring(s: Setting) -> list[tuple[str, str]]:
    """A [databases] / [users] value: `key=value` pairs separated by spaces; a value may be
    single-quoted ('' or \\' for a quote inside)."""
    text = s.value
    out: list[tuple[str, str]] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            raise ImportFailed(f"{s.file}:{s.line}: {s.key}: expected key=value in {text!r} near {text[start:]!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "'":
            i += 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise ImportFailed(f"{s.file}:{s.line}: {s.key}: unterminated quoted value for {key}")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                elif c == "'" and i + 1 < n and text[i + 1] == "'":
                    buf.append("'")
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            value = "".join(buf)
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            value = text[start:i]
        out.append((key.lower(), value))


@dataclass


class UserEntry:
    name: str
    secret: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


def read_userlist(path: str) -> list[UserEntry]:
    """PgBouncer's auth_file: `"user" "secret" ...` per line (a doubled "" is a quote inside a field; the
    rest of the line is ignored). Empty lines and lines starting with ; or # are comments."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFailed(f"{path}: cannot read the userlist: {e}") from None
    users: list[UserEntry] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        fields: list[str] = []
        i = 0
        while len(fields) < 2:
            while i < len(line) and line[i].isspace():
                i += 1
            if i >= len(line) or line[i] != '"':
                raise ImportFailed(f'{path}:{n}: expected "user" "password" (two double-quoted fields), got {raw!r}')
            i += 1
            buf: list[str] = []
            while True:
                if i >= len(line):
                    raise ImportFailed(f"{path}:{n}: unterminated double quote")
                if line[i] == '"':
                    if i + 1 < len(line) and line[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(line[i])
                i += 1
            fields.append("".join(buf))
        name, secret = fields
        if not name:
            raise ImportFailed(f"{path}:{n}: empty user name")
        if name in seen:
            # PgBouncer keeps the last one; say so rather than guess silently.
            users = [u for u in users if u.name != name]
        seen[name] = n
        users.append(UserEntry(name, secret, path, n))
    return users
