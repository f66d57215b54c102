"""Writing the output model as YAML: every setting under the comments saying where it came from and how
it was translated, wrapped at 100 columns.
"""

from __future__ import annotations

import textwrap

from pgdoorman.config.render import _yaml_key, _yaml_value
from pgdoorman.import_pgbouncer.output import Line
from pgdoorman.import_pgbouncer.translator import Translator

_WIDTH = 100


def _comments(pad: str, notes: list[str]) -> list[str]:
    out: list[str] = []
    for note in notes:
        for i, line in enumerate(textwrap.wrap(note, _WIDTH - len(pad) - 2, break_on_hyphens=False,
                                               break_long_words=False)):
            out.append(f"{pad}# {'  ' if i else ''}{line}")
    return out


def _emit(lines: list[Line], pad: str) -> list[str]:
    out: list[str] = []
    for ln in lines:
        out += _comments(pad, ln.notes)
        if ln.key is None:
            continue
        if ln.block and isinstance(ln.value, str) and "\n" in ln.value:
            out.append(f"{pad}{_yaml_key(ln.key)}: |")
            out += [f"{pad}  {x}" for x in ln.value.rstrip("\n").split("\n")]
        else:
            out.append(f"{pad}{_yaml_key(ln.key)}: {_yaml_value(ln.value)}")
    return out


def render(t: Translator, sources: list[str]) -> str:
    out = [
        "# pgdoorman configuration translated by `pg_doorman import-pgbouncer` from",
        *[f"#   {p}" for p in sources],
        "# Each setting says where it came from and whether it was translated, approximated or not",
        "# translated. Check it with `pg_doorman -t <file>`; docs/migrating-from-pgbouncer.md explains the",
        "# differences. Keep this file private: it holds passwords and password hashes.",
    ]
    out += _comments("", t.header)
    out += ["", "general:"]
    out += _emit(t.general, "  ")
    if t.trailing:
        out.append("")
        out.append("  # Source settings with no pgdoorman counterpart:")
        out += _comments("  ", t.trailing)
    out.append("")
    if t.web:
        out.append("web:")
        out += _emit(t.web, "  ")
        out.append("")
    if not t.pools:
        out.append("pools: {}")
    else:
        out.append("pools:")
        for pool in t.pools:
            out.append(f"  {_yaml_key(pool.name)}:")
            out += _emit(pool.lines, "    ")
            if pool.auth_query:
                out += _comments("    ", ["auth_user/auth_query -> auth_query (docs/auth-query.md)"])
                out.append("    auth_query:")
                out += _emit(pool.auth_query, "      ")
            out += _comments("    ", pool.user_notes)
            if not pool.users:
                out.append("    users: []")
                continue
            out.append("    users:")
            for user in pool.users:
                body = _emit(user.lines, "        ")
                # The first key line carries the "- ".
                for i, line in enumerate(body):
                    if not line.lstrip().startswith("#"):
                        body[i] = "      - " + line[8:]
                        break
                out += body
    return "\n".join(out) + "\n"
