"""The translation's state: the source's [pgbouncer] settings (and which of them were translated) and the
output being built; general.py, auth.py and pools.py fill it, render.py writes it.
"""

from __future__ import annotations

from typing import Any

from pgdoorman.import_pgbouncer.output import Line, PoolOut
from pgdoorman.import_pgbouncer.reading import Ini, Setting, UserEntry


class Translator:
    def __init__(self, ini: Ini, userlist: list[UserEntry] | None, userlist_path: str | None,
                 fallback_databases: list[str] | None = None) -> None:
        self.ini = ini
        self.general: list[Line] = []
        self.web: list[Line] = []  # the web section (stats_users -> /metrics)
        self.trailing: list[str] = []  # comments for [pgbouncer] settings with no counterpart
        self.pools: list[PoolOut] = []
        self.header: list[str] = []
        self.pg = {s.key: s for s in ini.sections.get("pgbouncer", [])}
        self.used: set[str] = set()
        self.userlist = userlist
        self.userlist_path = userlist_path
        self.unix_dir: str | None = None  # PgBouncer's unix_socket_dir (None: no socket), set by general.listen
        self.auth_kind = "md5"  # PgBouncer's auth_type, set by auth.auth_rules
        self.fallback_databases = fallback_databases or []  # pools to make from the `*` entry

    def get(self, key: str) -> Setting | None:
        """The [pgbouncer] setting, marked as used (translated or commented on where it is used)."""
        s = self.pg.get(key)
        if s is not None:
            self.used.add(key)
        return s

    def gen(self, key: str, value: Any, *notes: str, block: bool = False) -> None:
        """A setting of the general section."""
        self.general.append(Line(key, value, list(notes), block))

    def default_note(self, key: str, default: str) -> str:
        return f"not set in the source: PgBouncer's default {key} = {default}, written out"

    def user(self, name: str) -> UserEntry | None:
        """The userlist entry of that user."""
        for u in self.userlist or []:
            if u.name == name:
                return u
        return None
