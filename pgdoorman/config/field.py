"""What one configuration setting is (`Field`), the sections settings live in, and the helpers that
build the rows of the settings table (`fields.py` for include/general/web/talos, `fields_pool.py` for
pools, users and auth_query)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from pgdoorman.config.values import (
    Choice,
    ValueType,
)


class _Required:
    """Sentinel default of settings that must be present (the dataclass attribute has no default)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True)
class Field:
    section: str
    key: str
    type: ValueType
    default: Any
    doc: str
    implemented: bool
    reloadable: bool = True
    group: str = ""
    required: bool = False
    # May be absent with no default value: the attribute is then None (`default` must be None).
    optional: bool = False
    # Never echoed into error messages, diffs or logs.
    secret: bool = False
    # Old names accepted with a deprecation warning.
    aliases: tuple[str, ...] = ()
    # Docs text for the default when the stored default (None, "") means something else.
    default_doc: str = ""
    # Config-file value shown commented out in the reference config when there is no default.
    example: Any = None
    # False: no meaning in pgdoorman (tokio's knobs): checked, then ignored with one info line per load.
    applies: bool = True
    # (value, why): that value of an implemented setting is not followed; it loads with this warning.
    unhonoured: tuple[Any, str] | None = None

    @property
    def annotation(self) -> Any:
        """The Python type of this setting's dataclass attribute."""
        base = self.type.annotation
        return base | None if self.optional else base

    @property
    def path(self) -> str:
        return f"{SECTIONS[self.section].path}.{self.key}"

    def default_text(self) -> str:
        """The default as the docs and the reference comments show it."""
        if self.default_doc:
            return self.default_doc
        if self.default is REQUIRED or self.required:
            return "required"
        if self.default is None:
            return "unset"
        return self.type.describe(self.default)


@dataclass(frozen=True)
class SectionInfo:
    name: str
    path: str
    title: str
    intro: str
    doc_file: str


SECTIONS: Final[Mapping[str, SectionInfo]] = MappingProxyType(
    {
        "include": SectionInfo(
            "include",
            "include",
            "`include` section",
            "Other configuration files merged into this one.",
            "index.md",
        ),
        "general": SectionInfo(
            "general",
            "general",
            "`general` section",
            "Process-wide settings: listener, timeouts, TCP options, memory limits, workers, logging, "
            "prepared statements and the admin console.",
            "general.md",
        ),
        "web": SectionInfo(
            "web",
            "web",
            "`web` section",
            "The HTTP listener serving Prometheus metrics. The older section name `prometheus` is "
            "accepted as an alias (use one or the other, not both).",
            "web.md",
        ),
        "talos": SectionInfo(
            "talos",
            "talos",
            "`talos` section",
            "Talos JWT authentication (PgDoorman's `talos` user). Top-level section, not part of `general`.",
            "talos.md",
        ),
        "pool": SectionInfo(
            "pool",
            "pools.<name>",
            "`pools.<name>` sections",
            "One section per pool. The pool name is the database name clients connect to; "
            "`server_database` may point it at a differently named database.",
            "pool.md",
        ),
        "user": SectionInfo(
            "user",
            "pools.<name>.users[]",
            "`pools.<name>.users[]` entries",
            "The users of a pool. Write them as a list (`users: [...]` in YAML, `[[pools.<name>.users]]` "
            "in TOML) or as the legacy TOML map with numeric keys (`[pools.<name>.users.0]`). "
            "Usernames must be unique within a pool.",
            "users.md",
        ),
        "auth_query": SectionInfo(
            "auth_query",
            "pools.<name>.auth_query",
            "`pools.<name>.auth_query` section",
            "Users looked up in PostgreSQL at login time instead of being listed in the file.",
            "auth_query.md",
        ),
    }
)

# Docs wording reused by the pool-level timing overrides (PgDoorman parses these as integers only).
_INT_MS_NOTE = (
    " Integer milliseconds; pgdoorman also accepts duration strings such as \"5s\" here, "
    "PgDoorman itself does not (generated files therefore use integers)."
)
_NI_WARNING = "not implemented by pgdoorman yet; ignored"
_INAPPLICABLE_DOC = " Does not apply to pgdoorman (see `worker_threads`): checked, then ignored."

_ANY_TLS_MODE = Choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_POOL_MODE = Choice("transaction", "session")


def _general(
    group: str,
    key: str,
    type_: ValueType,
    default: Any,
    implemented: bool,
    doc: str,
    **kw: Any,
) -> Field:
    return Field("general", key, type_, default, doc, implemented, group=group, **kw)


def _tokio(key: str, type_: ValueType, doc: str, example: Any) -> Field:
    return _general("Workers", key, type_, None, True, doc + _INAPPLICABLE_DOC, optional=True, reloadable=False,
                    example=example, applies=False)


def _web(group: str, key: str, type_: ValueType, default: Any, implemented: bool, doc: str, **kw: Any) -> Field:
    return Field("web", key, type_, default, doc, implemented, group=group, **kw)


def _pool(group: str, key: str, type_: ValueType, default: Any, implemented: bool, doc: str, **kw: Any) -> Field:
    return Field("pool", key, type_, default, doc, implemented, group=group, **kw)


def _user(key: str, type_: ValueType, default: Any, implemented: bool, doc: str, **kw: Any) -> Field:
    return Field("user", key, type_, default, doc, implemented, **kw)


def _aq(key: str, type_: ValueType, default: Any, doc: str, **kw: Any) -> Field:
    return Field("auth_query", key, type_, default, doc, True, **kw)


MiB = 1 << 20
# The warning of sync_server_parameters: false (general and pools).
SYNC_OFF = ("false is not honoured: pgdoorman always gives each server connection the settings of the client using "
            "it (its startup settings and what it SETs), so that no client sees another's settings; it behaves "
            "as true")
