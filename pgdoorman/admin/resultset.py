"""Admin console result sets as plain data (columns with type OIDs, rows of text) and the one pure
function that turns them into wire bytes: RowDescription, DataRows, CommandComplete.

Everything the console shows goes through `render`, so the byte layout is tested once (golden bytes in
tests/unit/test_admin_render.py) and the SHOW builders only produce data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pgdoorman.protocol import messages as m

# Type OIDs the console declares (PgDoorman uses the same ones, so psql aligns numbers to the right and
# drivers decode them the same way: `numeric` columns arrive as Decimal in psycopg).
BOOL = 16
INT8 = 20
INT4 = 23
TEXT = 25
NUMERIC = 1700

Cell = str | int | float | bool | None


def fmt(value: Cell) -> str | None:
    """Text form of one cell: ints as digits, integral floats without '.0' (as Rust prints an f64),
    booleans as PostgreSQL's t/f, None as SQL NULL."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return repr(value)
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return value


@dataclass
class ResultSet:
    """One statement's result: `columns` as (name, type oid), `rows` of cells, and the command tag."""

    columns: Sequence[tuple[str, int]]
    rows: Sequence[Sequence[Cell]] = field(default_factory=list)
    tag: str = "SHOW"

    def column_names(self) -> list[str]:
        return [c[0] for c in self.columns]


def render(rs: ResultSet) -> bytes:
    """RowDescription + one DataRow per row + CommandComplete (no ReadyForQuery: the session adds it once
    per Query message)."""
    n = len(rs.columns)
    parts = [m.row_description(rs.columns)]
    for row in rs.rows:
        if len(row) != n:
            raise ValueError(f"row has {len(row)} cells, the result set has {n} columns: {row!r}")
        parts.append(m.data_row([fmt(v) for v in row]))
    parts.append(m.command_complete(rs.tag))
    return b"".join(parts)


def render_command(tag: str) -> bytes:
    """A command without rows (PAUSE, RELOAD, SET...): just CommandComplete."""
    return m.command_complete(tag)
