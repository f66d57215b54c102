"""What changed between two loaded configs, key path by key path (for RELOAD logging and for
deciding what a reload can apply). Secrets are reported as changed, never shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgdoorman.config.fields import Field, fields_of
from pgdoorman.config.loader import format_path
from pgdoorman.config.model import Config, PoolConfig, UserConfig
from pgdoorman.config.values import Subsection, show


@dataclass(frozen=True)
class Change:
    path: str
    old: str
    new: str
    # False when a running process cannot apply the change (listener address, worker threads, ...).
    reloadable: bool

    def __str__(self) -> str:
        text = f"{self.path}: {self.old} -> {self.new}"
        return text if self.reloadable else f"{text} (requires restart)"


def _shown(f: Field, value: Any) -> str:
    if value is None:
        return "unset"
    return show(f.type.to_config(value))


def _compare(section: str, path: list[str | int], old: Any, new: Any, out: list[Change]) -> None:
    for f in fields_of(section):
        if isinstance(f.type, Subsection):
            continue
        a, b = getattr(old, f.key), getattr(new, f.key)
        if a == b:
            continue
        where = format_path([*path, f.key])
        if f.secret:
            out.append(Change(where, "(secret)", "(changed secret)", f.reloadable))
        else:
            out.append(Change(where, _shown(f, a), _shown(f, b), f.reloadable))


def _compare_users(path: list[str | int], old: PoolConfig, new: PoolConfig, out: list[Change]) -> None:
    old_users: dict[str, UserConfig] = {u.username: u for u in old.users}
    new_users: dict[str, UserConfig] = {u.username: u for u in new.users}
    for name, user in old_users.items():
        where = [*path, "users", name]
        if name not in new_users:
            out.append(Change(format_path(where), "present", "removed", True))
        else:
            _compare("user", where, user, new_users[name], out)
    for name in new_users:
        if name not in old_users:
            out.append(Change(format_path([*path, "users", name]), "absent", "added", True))


def config_changes(old: Config, new: Config) -> list[Change]:
    """Structured differences between two configs."""
    out: list[Change] = []
    _compare("general", ["general"], old.general, new.general, out)
    _compare("web", ["web"], old.web, new.web, out)
    _compare("talos", ["talos"], old.talos, new.talos, out)
    for name, pool in old.pools.items():
        if name not in new.pools:
            out.append(Change(format_path(["pools", name]), "present", "removed", True))
            continue
        other = new.pools[name]
        _compare("pool", ["pools", name], pool, other, out)
        if pool.auth_query != other.auth_query:
            if pool.auth_query is None or other.auth_query is None:
                before = "unset" if pool.auth_query is None else "set"
                after = "unset" if other.auth_query is None else "set"
                out.append(Change(format_path(["pools", name, "auth_query"]), before, after, True))
            else:
                _compare("auth_query", ["pools", name, "auth_query"], pool.auth_query, other.auth_query, out)
        _compare_users(["pools", name], pool, other, out)
    for name in new.pools:
        if name not in old.pools:
            out.append(Change(format_path(["pools", name]), "absent", "added", True))
    return out


def diff_configs(old: Config, new: Config) -> list[str]:
    """Human-readable changed key paths, e.g. `general.idle_timeout: "10m" -> "5m"`,
    `pools.app.users.bob: absent -> added`; changes a reload cannot apply end in
    "(requires restart)". Users are identified by name rather than list position."""
    return [str(c) for c in config_changes(old, new)]


def restart_required(old: Config, new: Config) -> list[str]:
    """The changed key paths that only take effect after a restart."""
    return [c.path for c in config_changes(old, new) if not c.reloadable]
