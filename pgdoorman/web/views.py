"""The JSON API's tables that are not one SHOW command each: the top lists (`top/clients`, `top/prepared`,
`top/queries`) and clients grouped by application (`apps`), and the hash of `prepared/text/<hash>`.

The tables are made of SHOW CLIENTS' and SHOW PREPARED_STATEMENTS' rows, from the same snapshot as the
SHOW views (each at most once per snapshot window), as ResultSets, so they come out typed like every table
view; a request's own choices (`by`, `n`, `sort`, `order`) become the generic paging parameters (`sort`,
`limit`) applied to the built table. (`process` and `auth/config` are objects, built in api.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgdoorman.admin.resultset import NUMERIC, TEXT, Cell, ResultSet
from pgdoorman.admin.show import ShowContext, show_clients, show_prepared_statements

Params = dict[str, list[str]]

TOP_DEFAULT = 20  # rows of a top list without ?n= (or n=0), as PgDoorman
TOP_MAX = 200  # and at most
PREVIEW = 120  # characters of SQL text in top/queries, as PgDoorman's previews

TOP_CLIENTS_COLUMNS = [("client_id", TEXT), ("application_name", TEXT), ("user", TEXT), ("database", TEXT),
                       ("addr", TEXT), ("age_seconds", NUMERIC), ("queries_total", NUMERIC),
                       ("errors_total", NUMERIC), ("qps", NUMERIC)]
TOP_PREPARED_COLUMNS = [("pool", TEXT), ("hash", NUMERIC), ("name", TEXT), ("count_used", NUMERIC), ("kind", TEXT)]
TOP_QUERIES_COLUMNS = [("hash", NUMERIC), ("kind", TEXT), ("query", TEXT), ("count", NUMERIC)]
APPS_COLUMNS = [("application_name", TEXT), ("clients", NUMERIC), ("queries_total", NUMERIC),
                ("transactions_total", NUMERIC), ("errors_total", NUMERIC)]


class BadRequest(ValueError):
    """A parameter the view does not take: 400 with this message."""


def _one(params: Params, name: str, default: str) -> str:
    return params.get(name, [default])[-1] or default


def _top_n(params: Params) -> int:
    raw = _one(params, "n", "0")
    if not raw.isdigit():
        raise BadRequest("n must be a non-negative integer")
    n = int(raw)
    return TOP_DEFAULT if n == 0 else min(n, TOP_MAX)


# ------------------------------------------------------------------------------------------ tables
def _show_clients(ctx: ShowContext) -> list[dict[str, Cell]]:
    rs = show_clients(ctx)
    names = rs.column_names()
    return [dict(zip(names, row, strict=True)) for row in rs.rows]


def top_clients(ctx: ShowContext) -> ResultSet:
    """SHOW CLIENTS' clients with their query rate over their whole life (queries / age, age at least 1 s)."""
    rows: list[list[Cell]] = []
    for c in _show_clients(ctx):
        queries, age = int(c["query_count"] or 0), int(c["age_seconds"] or 0)
        rows.append([c["client_id"], c["application_name"], c["user"], c["database"], c["addr"], age, queries,
                     c["error_count"], queries / max(1, age)])
    return ResultSet(TOP_CLIENTS_COLUMNS, rows)


def top_prepared(ctx: ShowContext) -> ResultSet:
    """SHOW PREPARED_STATEMENTS without the SQL text (so it is not personal data)."""
    rs = show_prepared_statements(ctx)
    return ResultSet(TOP_PREPARED_COLUMNS, [[pool, h, name, used, kind] for pool, h, name, _, used, kind in rs.rows])


def top_queries(ctx: ShowContext) -> ResultSet:
    """The statements of every pool's cache by text hash (the same statement in two pools is one row, its uses
    summed), the text cut to 120 characters."""
    by_hash: dict[Any, list[Cell]] = {}
    for _, h, _, query, used, kind in show_prepared_statements(ctx).rows:
        row = by_hash.get(h)
        if row is None:
            by_hash[h] = [h, kind, str(query)[:PREVIEW], used]
        else:
            row[3] = int(row[3] or 0) + int(used or 0)
            if row[1] != kind:
                row[1] = "mixed"
    return ResultSet(TOP_QUERIES_COLUMNS, list(by_hash.values()))


def apps(ctx: ShowContext) -> ResultSet:
    """SHOW CLIENTS' clients grouped by application_name: how many, and their queries, transactions and errors."""
    acc: dict[str, list[int]] = {}
    for c in _show_clients(ctx):
        a = acc.setdefault(str(c["application_name"]), [0, 0, 0, 0])
        a[0] += 1
        a[1] += int(c["query_count"] or 0)
        a[2] += int(c["transaction_count"] or 0)
        a[3] += int(c["error_count"] or 0)
    return ResultSet(APPS_COLUMNS, [[name, *v] for name, v in sorted(acc.items())])


# ------------------------------------------------------------------------------------------ parameters
def _top_clients_params(params: Params) -> Params:
    by = _one(params, "by", "qps")
    column = {"qps": "qps", "errors": "errors_total", "age": "age_seconds"}.get(by)
    if column is None:
        raise BadRequest(f"by must be qps, errors or age, not {by!r}")
    out: Params = {"sort": [f"-{column}"], "limit": [str(_top_n(params))]}
    pool = _one(params, "pool", "")
    if pool:
        out["pool"] = [pool]
    return out


def _top_prepared_params(params: Params) -> Params:
    by = _one(params, "by", "count_used")
    if by != "count_used":
        raise BadRequest(f"by must be count_used, not {by!r}: hits and misses are not counted per statement")
    return {"sort": ["-count_used"], "limit": [str(_top_n(params))]}


def _top_queries_params(params: Params) -> Params:
    by = _one(params, "by", "count")
    if by != "count":
        raise BadRequest(f"by must be count, not {by!r}: query durations are not kept per statement")
    return {"sort": ["-count"], "limit": [str(_top_n(params))]}


def _apps_params(params: Params) -> Params:
    sort = _one(params, "sort", "clients")
    column = {"clients": "clients", "queries": "queries_total", "transactions": "transactions_total",
              "errors": "errors_total"}.get(sort)
    if column is None:
        raise BadRequest(f"sort must be clients, queries, transactions or errors, not {sort!r}")
    order = _one(params, "order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order must be asc or desc, not {order!r}")
    return {"sort": [column if order == "asc" else f"-{column}"]}


# name -> (the table's builder, the request's parameters turned into the generic sort/limit)
DERIVED: dict[str, tuple[Callable[[ShowContext], ResultSet], Callable[[Params], Params]]] = {
    "top/clients": (top_clients, _top_clients_params),
    "top/prepared": (top_prepared, _top_prepared_params),
    "top/queries": (top_queries, _top_queries_params),
    "apps": (apps, _apps_params),
}


def only_pool(table: dict[str, Any], pool: str) -> dict[str, Any]:
    """top/clients?pool=user@database: that pool's clients only."""
    user, _, database = pool.rpartition("@")
    rows = [r for r in table["rows"] if r["user"] == user and r["database"] == database]
    return {**table, "rows": rows}


def parse_hash(text: str) -> int:
    """A statement hash as SHOW PREPARED_STATEMENTS shows it (decimal) or 0x-prefixed hexadecimal."""
    try:
        h = int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10) if text.isdigit() else -1
    except ValueError:
        h = -1
    if not 0 <= h < 1 << 64:
        raise BadRequest("the hash must be a decimal or 0x-prefixed hexadecimal 64-bit number")
    return h
