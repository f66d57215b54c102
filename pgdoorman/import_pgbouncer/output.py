"""The output model: the settings of the translated config, each with the comments written above it, in
the order they are written (general settings, then pools with their users); render.py writes it as YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgdoorman.import_pgbouncer.reading import Setting


@dataclass


class Line:
    """One setting of the output (key=None: a comment only), with the comment written above it."""

    key: str | None
    value: Any = None
    notes: list[str] = field(default_factory=list)
    block: bool = False  # write a multi-line string as a YAML literal block


@dataclass


class UserOut:
    lines: list[Line] = field(default_factory=list)


@dataclass


class PoolOut:
    name: str
    lines: list[Line] = field(default_factory=list)
    auth_query: list[Line] = field(default_factory=list)
    users: list[UserOut] = field(default_factory=list)
    user_notes: list[str] = field(default_factory=list)


def src_note(s: Setting, secret: bool = False) -> str:
    """`file:line key = value`, the source a comment of the output names (secret: the value hidden)."""
    value = "***" if secret else s.value
    return f"{s.where} {s.key} = {value}"
