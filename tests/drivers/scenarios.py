"""The canonical scenario list every driver program under tests/drivers/ runs, in this order, with the
one-line description that docs/compatibility.md prints; run_matrix.py marks a scenario a program did
not report as a failure, so the list here is the contract between the orchestrator and the programs."""

from __future__ import annotations

# (name, description). Sizes are the issue's: 30 concurrent clients on pool_size 3, 100,000 rows,
# a 10 MiB bytea, 1,000 connection cycles.
SCENARIO_TABLE: list[tuple[str, str]] = [
    ("login_scram", "SCRAM-SHA-256 login succeeds (current_user checked) and a wrong password is refused"),
    ("login_md5", "MD5 login succeeds (current_user checked) and a wrong password is refused"),
    ("simple_query", "simple-protocol query, several statements in one string where the driver allows"),
    ("param_query", "parameterised query round-tripping int, text, NULL, bool, numeric and bytea"),
    ("prepared_reuse", "30 concurrent clients each reuse one prepared statement across 20 transactions"),
    ("transaction", "explicit transactions: a committed row is visible, a rolled-back row is not"),
    (
        "error_recovery",
        "SQL error outside a transaction, then inside one (25P02 until ROLLBACK), then continue",
    ),
    ("copy_in", "COPY ... FROM STDIN of 10,000 rows through the driver's COPY API"),
    ("copy_out", "COPY ... TO STDOUT of 10,000 rows through the driver's COPY API"),
    ("large_result", "a 100,000-row result, every row checked"),
    ("large_bytea", "a 10 MiB bytea value sent as a parameter and read back byte-identical"),
    ("listen_notify", "LISTEN on one connection, NOTIFY from another, payload received"),
    (
        "cancel",
        "cancel a running pg_sleep(10) with the driver's cancel API; 57014 quickly, connection reusable",
    ),
    ("statement_timeout", "SET LOCAL statement_timeout aborts pg_sleep with 57014; connection reusable"),
    (
        "batch",
        "the driver's batch/pipeline API: 500 inserts in one batch, then a batch with a failing statement",
    ),
    ("pool_churn", "open, query, close 1,000 connections"),
    (
        "concurrent_clients",
        "30 concurrent clients (pool_size 3), 10 transactions each, each checking its own rows",
    ),
]

SCENARIOS: list[str] = [name for name, _ in SCENARIO_TABLE]

# Why a cell may be "na" in transaction mode by design (shown in the generated table's legend): nothing since
# LISTEN/NOTIFY works in transaction mode (docs/transaction-mode.md). The programs still report a pooler's
# refusal of LISTEN as "na" with its error, and a LISTEN accepted whose notification is lost as a failure.
BY_DESIGN_TRANSACTION_MODE: dict[str, str] = {}
