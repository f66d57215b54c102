"""Writing configs and their documentation from the field table: the annotated reference config
(`generate --reference`), any config dict as commented YAML or TOML (`generate`), and the Markdown
reference pages under docs/reference/. YAML and TOML are emitted by hand so comments can be placed."""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgdoorman.config.fields import FIELDS, REQUIRED, SECTIONS, Field, fields_of, lookup
from pgdoorman.config.fields import field as setting
from pgdoorman.config.values import (
    DURATION_FORMS,
    SIZE_FORMS,
    Subsection,
)

# ---------------------------------------------------------------------------------------------------
# A small document model shared by the YAML and TOML writers
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    key: str
    value: Any  # a scalar, a list of scalars or a mapping of scalars (written inline)
    comment: list[str] = field(default_factory=list)
    disabled: bool = False


@dataclass
class _Table:
    key: str
    children: list[_Node] = field(default_factory=list)
    comment: list[str] = field(default_factory=list)
    disabled: bool = False


@dataclass
class _TableArray:
    key: str
    tables: list[_Table] = field(default_factory=list)
    comment: list[str] = field(default_factory=list)
    disabled: bool = False


_Node = _Item | _Table | _TableArray

# ---------------------------------------------------------------------------------------------------
# YAML writer
# ---------------------------------------------------------------------------------------------------

_YAML_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# Words some YAML readers (1.1 or 1.2) turn into booleans or null: always quote them as keys.
_YAML_SPECIAL = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _yaml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= code < 0x7F or (code >= 0xA0 and code not in (0x2028, 0x2029, 0xFEFF) and not 0xD800 <= code < 0xE000):
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _yaml_key(key: str) -> str:
    if _YAML_BARE_KEY.match(key) and key.lower() not in _YAML_SPECIAL:
        return key
    return _yaml_str(key)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        return _yaml_str(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_yaml_key(str(k))}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to YAML")


def _comment_lines(pad: str, comment: list[str]) -> list[str]:
    return [f"{pad}# {line}".rstrip() for line in comment]


def _disable(lines: list[str]) -> list[str]:
    """Comment out rendered lines, keeping indentation; lines that are comments already stay."""
    out = []
    for line in lines:
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            out.append(line)
        else:
            out.append(f"{line[: len(line) - len(stripped)]}# {stripped}")
    return out


def _yaml_node(node: _Node, indent: int) -> list[str]:
    pad = "  " * indent
    lines = _comment_lines(pad, node.comment)
    key = _yaml_key(node.key)
    body: list[str]
    if isinstance(node, _Item):
        body = [f"{pad}{key}: {_yaml_value(node.value)}"]
    elif isinstance(node, _Table):
        if not node.children:
            body = [f"{pad}{key}: {{}}"]
        else:
            body = [f"{pad}{key}:"]
            for i, child in enumerate(node.children):
                if i and child.comment:
                    body.append("")
                body += _yaml_node(child, indent + 1)
    else:
        if not node.tables:
            body = [f"{pad}{key}: []"]
        else:
            body = [f"{pad}{key}:"]
            for table in node.tables:
                body += _yaml_sequence_entry(table, indent + 1)
    return lines + (_disable(body) if node.disabled else body)


def _yaml_sequence_entry(table: _Table, indent: int) -> list[str]:
    pad = "  " * indent
    lines = _comment_lines(pad, table.comment)
    inner: list[str] = []
    for i, child in enumerate(table.children):
        if i and child.comment:
            inner.append("")
        inner += _yaml_node(child, indent + 1)
    if not inner:
        inner = [f"{pad}- {{}}"]
    else:
        # The entry's first line (a key, or the comment above it) carries the "- " that starts it.
        inner[0] = f"{pad}- {inner[0][len(pad) + 2 :]}"
    return lines + (_disable(inner) if table.disabled else inner)


def _yaml_document(header: list[str], sections: list[_Node]) -> str:
    lines = _comment_lines("", header)
    for section in sections:
        if lines:
            lines.append("")
        lines += _yaml_node(section, 0)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# TOML writer
# ---------------------------------------------------------------------------------------------------

_TOML_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def _toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _TOML_BARE_KEY.match(key) else _toml_str(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(table: _Table, path: list[str], array: bool, disabled: bool) -> list[str]:
    disabled = disabled or table.disabled
    name = ".".join(_toml_key(p) for p in path)
    lines = _comment_lines("", table.comment)
    body = [f"[[{name}]]" if array else f"[{name}]"]
    nested: list[_Table | _TableArray] = []
    # TOML puts a table's own keys before any sub-table header; an empty array of tables has no
    # header to hang on, so it is written as `key = []`.
    for child in table.children:
        if isinstance(child, _Item) or (isinstance(child, _TableArray) and not child.tables):
            value = child.value if isinstance(child, _Item) else []
            entry = _comment_lines("", child.comment) + [f"{_toml_key(child.key)} = {_toml_value(value)}"]
            if child.comment and len(body) > 1:
                body.append("")
            body += _disable(entry) if child.disabled else entry
        else:
            nested.append(child)
    out = lines + (_disable(body) if disabled else body)
    for child in nested:
        out.append("")
        if isinstance(child, _Table):
            out += _toml_table(child, [*path, child.key], False, disabled)
        else:
            out += _comment_lines("", child.comment)
            for i, element in enumerate(child.tables):
                if i:
                    out.append("")
                out += _toml_table(element, [*path, child.key], True, disabled or child.disabled)
    return out


def _toml_document(header: list[str], sections: list[_Node]) -> str:
    lines = _comment_lines("", header)
    # Top-level plain keys must precede the first table header or they would land inside it.
    sections = [s for s in sections if isinstance(s, _Item)] + [s for s in sections if not isinstance(s, _Item)]
    for section in sections:
        if lines:
            lines.append("")
        if isinstance(section, _Table):
            lines += _toml_table(section, [section.key], False, False)
        elif isinstance(section, _Item):
            lines += _comment_lines("", section.comment) + [f"{_toml_key(section.key)} = {_toml_value(section.value)}"]
        else:
            for element in section.tables:
                lines += _toml_table(element, [section.key], True, section.disabled)
    return "\n".join(lines) + "\n"


def _document(fmt: str, header: list[str], sections: list[_Node]) -> str:
    if fmt == "yaml":
        return _yaml_document(header, sections)
    if fmt == "toml":
        return _toml_document(header, sections)
    raise ValueError(f'unknown config format {fmt!r}; expected "yaml" or "toml"')


# ---------------------------------------------------------------------------------------------------
# Comments from the field table
# ---------------------------------------------------------------------------------------------------

_WIDTH = 96


def field_comment(f: Field) -> list[str]:
    """The comment written above a setting: what it means, its type and default, and whether it is
    implemented / reloadable."""
    lines = textwrap.wrap(f.doc.replace("`", ""), _WIDTH)
    facts = f"Type: {f.type.doc_name}. Default: {f.default_text().replace('`', '')}."
    lines += textwrap.wrap(facts, _WIDTH)
    if not f.implemented:
        lines.append("Not implemented by pgdoorman yet: accepted with a warning and ignored.")
    elif not f.applies:
        lines.append("Does not apply to pgdoorman: checked, then ignored (one info line when loaded).")
    if not f.reloadable:
        lines.append("Changing it takes a restart.")
    return lines


# ---------------------------------------------------------------------------------------------------
# render_config: any config dict as commented YAML or TOML
# ---------------------------------------------------------------------------------------------------

_SECTION_OF_TOP = {"include": "include", "general": "general", "web": "web", "prometheus": "web", "talos": "talos"}


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _nodes(section: str | None, data: Mapping[str, Any], comments: bool) -> list[_Node]:
    known = [f.key for f in fields_of(section)] if section else []
    order = {key: i for i, key in enumerate(known)}
    keys = sorted(data, key=lambda k: (0, order[k]) if k in order else (1, 0))
    nodes: list[_Node] = []
    for key in keys:
        value = data[key]
        if value is None:  # TOML has no null; an absent key means the same
            continue
        f = lookup(section, key) if section else None
        comment = field_comment(f) if comments and f is not None else []
        sub = f.type.section if f is not None and isinstance(f.type, Subsection) else None
        if sub == "user" and isinstance(value, Mapping):
            # The legacy numbered users map is written as a list, in key order.
            value = [value[k] for k in sorted(value, key=lambda k: int(k) if str(k).isascii() and str(k).isdigit() else 0)]
        if isinstance(value, Mapping):
            nodes.append(_Table(str(key), _nodes(sub, value, comments), comment))
        elif _is_table_list(value):
            nodes.append(_TableArray(str(key), [_Table("", _nodes(sub, v, comments)) for v in value], comment))
        else:
            nodes.append(_Item(str(key), _plain(value), comment))
    return nodes


def render_config(data: Mapping[str, Any], fmt: str, comments: bool = True) -> str:
    """Write a config dict ({"general": {...}, "pools": {name: {..., "users": [...]}}, ...}) as YAML or
    TOML, with each known setting annotated from the field table when `comments` is true. Values
    are written as given (null values are left out)."""
    sections: list[_Node] = []
    top_order = ["include", "general", "web", "prometheus", "talos", "pools"]
    keys = sorted(data, key=lambda k: top_order.index(k) if k in top_order else len(top_order))
    for key in keys:
        value = data[key]
        if value is None:
            continue
        if key == "pools" and isinstance(value, Mapping):
            pools: list[_Node] = [_Table(str(name), _nodes("pool", pool, comments)) for name, pool in value.items()]
            sections.append(_Table("pools", pools))
        elif isinstance(value, Mapping):
            sections.append(_Table(key, _nodes(_SECTION_OF_TOP.get(key), value, comments)))
        else:
            sections.append(_Item(key, _plain(value)))
    return _document(fmt, [], sections)


# ---------------------------------------------------------------------------------------------------
# render_reference: every setting with its default, plus one example pool and user
# ---------------------------------------------------------------------------------------------------

EXAMPLE_POOL = "exampledb"
EXAMPLE_USER = "app_user"
EXAMPLE_PASSWORD = "app_password"
# The stored form PostgreSQL uses for MD5 passwords: "md5" + md5(password + username).
EXAMPLE_PASSWORD_HASH = "md5" + hashlib.md5((EXAMPLE_PASSWORD + EXAMPLE_USER).encode()).hexdigest()
EXAMPLE_POOL_SIZE = 40


def _reference_item(f: Field, value: Any = REQUIRED) -> _Item:
    comment = field_comment(f)
    if value is not REQUIRED:
        return _Item(f.key, value, comment, disabled=False)
    placeholder = (f.optional and f.default is None) or f.default is REQUIRED or (f.default == "" and bool(f.default_doc))
    if placeholder:
        # No default to write: show an example, commented out so the file keeps the default.
        return _Item(f.key, f.example, comment, disabled=True)
    unfollowed = f.unhonoured is not None and f.default == f.unhonoured[0]  # (it would warn)
    return _Item(f.key, f.type.to_config(f.default), comment, disabled=not f.implemented or unfollowed)


def _reference_section(section: str, overrides: Mapping[str, Any] | None = None) -> list[_Node]:
    overrides = overrides or {}
    nodes: list[_Node] = []
    group = ""
    for f in fields_of(section):
        if isinstance(f.type, Subsection):
            continue
        item = _reference_item(f, overrides.get(f.key, REQUIRED))
        if f.group and f.group != group:
            group = f.group
            item.comment = [f"--- {group} ---", "", *item.comment]
        nodes.append(item)
    return nodes


def _reference_pool() -> _Table:
    user_nodes = _reference_section(
        "user",
        {"username": EXAMPLE_USER, "password": EXAMPLE_PASSWORD_HASH, "pool_size": EXAMPLE_POOL_SIZE},
    )
    for node in user_nodes:
        if node.key == "password":
            node.comment.append(f'Example: the MD5 hash of password "{EXAMPLE_PASSWORD}" for user "{EXAMPLE_USER}".')
    users_field = setting("pool", "users")
    auth_query_field = setting("pool", "auth_query")
    auth_query = _Table(
        "auth_query",
        _reference_section("auth_query"),
        # An example, commented out: the section's query and user have no default.
        [*field_comment(auth_query_field), "Uncomment the section and set query and user to use it."],
        disabled=True,
    )
    children: list[_Node] = [
        *_reference_section("pool"),
        auth_query,
        _TableArray("users", [_Table("", user_nodes)], field_comment(users_field)),
    ]
    return _Table(
        EXAMPLE_POOL,
        children,
        [f'Example pool: clients connect to database "{EXAMPLE_POOL}" and reach the server\'s database of the same name.'],
    )


_REFERENCE_HEADER = [
    "pgdoorman reference configuration: every setting with its default value.",
    "Generated by `pg_doorman generate --reference` from pgdoorman/config/fields.py.",
    "",
    "Formats: YAML for files ending in .yaml/.yml, TOML for anything else.",
    "Durations: " + DURATION_FORMS + ".",
    "Sizes: " + SIZE_FORMS + ".",
    "Settings pgdoorman does not implement yet, and optional settings without a default, are",
    "commented out; uncommenting an unimplemented one only produces a warning.",
]


def render_reference(fmt: str = "yaml") -> str:
    """The annotated reference config: every section and setting with a comment and its default
    value, plus one example pool and user, loadable as is (without warnings)."""
    include_files = setting("include", "files")
    sections: list[_Node] = [
        _Table("include", [_reference_item(include_files)], ["Other config files to merge over this one."]),
        _Table("general", _reference_section("general"), ["Process-wide settings."]),
        _Table("web", _reference_section("web"), ['HTTP listener for Prometheus metrics (old section name: "prometheus").']),
        _Table("talos", _reference_section("talos"), ["Talos JWT authentication."], disabled=True),
        _Table("pools", [_reference_pool()], ["Pools: one table per database name clients connect to."]),
    ]
    return _document(fmt, list(_REFERENCE_HEADER), sections)


# ---------------------------------------------------------------------------------------------------
# render_docs: Markdown reference pages
# ---------------------------------------------------------------------------------------------------

_GENERATED_NOTE = (
    "<!-- Generated from pgdoorman/config/fields.py by scripts/gen_reference_docs.py; do not edit by hand. -->"
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _implemented_cell(f: Field) -> str:
    return "not yet" if not f.implemented else "yes" if f.applies else "does not apply"


def _implemented_text(f: Field) -> str:
    if not f.implemented:
        return "not yet (accepted with a warning and ignored)"
    return "yes" if f.applies else "does not apply to pgdoorman (checked, then ignored with one info line)"


def _section_doc(section: str) -> str:
    info = SECTIONS[section]
    fields = fields_of(section)
    out = [_GENERATED_NOTE, "", f"# {info.title}", "", info.intro, ""]
    done = sum(f.implemented for f in fields)
    out += [(f"{done} of {len(fields)} settings are implemented by pgdoorman so far." if done < len(fields)
             else f"All {done} settings are implemented by pgdoorman."), ""]
    out += ["| Setting | Type | Default | Implemented | Reload |", "|---|---|---|---|---|"]
    for f in fields:
        out.append(
            f"| [`{f.key}`](#{f.key}) | {_cell(f.type.doc_name)} | {_cell(f.default_text())} | "
            f"{_implemented_cell(f)} | {'yes' if f.reloadable else 'restart'} |"
        )
    group = None
    for f in fields:
        if f.group and f.group != group:
            group = f.group
            out += ["", f"## {group}"]
        out += ["", f"### `{f.key}`", ""]
        out.append(f"- Path: `{f.path}`")
        out.append(f"- Type: {f.type.doc_name}")
        out.append(f"- Default: {f.default_text()}")
        out.append(f"- Implemented: {_implemented_text(f)}")
        out.append(f"- Reload: {'applied on reload' if f.reloadable else 'takes a restart'}")
        if f.aliases:
            out.append("- Deprecated names: " + ", ".join(f"`{a}`" for a in f.aliases))
        out += ["", f.doc]
    return "\n".join(out) + "\n"


def _index_doc() -> str:
    include_files = setting("include", "files")
    total = len(FIELDS)
    done = sum(f.implemented for f in FIELDS)
    lines = [
        _GENERATED_NOTE,
        "",
        "# Configuration reference",
        "",
        "pgdoorman reads PgDoorman's configuration format: any PgDoorman config file loads. "
        + (f"{done} of {total} settings are implemented so far; the others are accepted with one warning "
           "per occurrence (`<file>: <key path>: not implemented by pgdoorman yet; ignored`) and have no effect. "
           if done < total else
           f"All {total} settings are implemented (those with no meaning here, PgDoorman's tokio runtime "
           "settings, are checked and ignored with one info line each). ")
        + 'A key that is not a PgDoorman setting at all is an error, with a "did you mean" suggestion when '
        "the name is close to a real one.",
        "",
        "## Files and formats",
        "",
        "- A file ending in `.yaml` or `.yml` is YAML (1.2 core schema: only `true`/`false` are booleans, "
        '`0600` is the number 600; quote strings such as `"0600"`). Any other file is TOML.',
        "- Top-level sections: `include`, `general`, `web` (or its old name `prometheus`), `talos`, `pools`.",
        "- A null value (YAML `key:` or `key: null`) means the key is not set.",
        f"- Durations: {DURATION_FORMS}.",
        f"- Byte sizes: {SIZE_FORMS}.",
        "- Users of a pool are a list (`users: [...]`, `[[pools.<name>.users]]`) or the legacy TOML map "
        "`[pools.<name>.users.0]` with numeric keys.",
        "- Passwords: `md5` followed by 32 hex digits (an MD5 hash), a SCRAM verifier "
        "`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, or plain text.",
        "",
        "## Include files",
        "",
        "`include.files`: " + include_files.doc,
        "",
        "## Errors",
        "",
        "Every problem is reported, not just the first, each as `<file>: <key path>: <what is wrong>`, for "
        "example `/etc/pg_doorman.yaml: pools.app.users[0].pool_size: must be an integer >= 1, got \"ten\"`. "
        "Syntax errors carry the line number the parser reports.",
        "",
        "## Sections",
        "",
    ]
    for section in ("general", "web", "talos", "pool", "user", "auth_query"):
        info = SECTIONS[section]
        fields = fields_of(section)
        implemented = sum(f.implemented for f in fields)
        lines.append(
            f"- [{info.title}]({info.doc_file}): {len(fields)} settings, {implemented} implemented."
        )
    return "\n".join(lines) + "\n"


def render_docs() -> dict[str, str]:
    """Markdown reference pages, file name -> content (written to docs/reference/)."""
    docs = {"index.md": _index_doc()}
    for section in ("general", "web", "talos", "pool", "user", "auth_query"):
        docs[SECTIONS[section].doc_file] = _section_doc(section)
    return docs

