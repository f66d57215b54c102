"""`max_memory_usage`: the bytes the relay holds in memory, process-wide, against one limit.

Two kinds of bytes count: output queued for a socket that does not take it fast enough (`Conn.out`), and a
client's message that must be read whole before it can be forwarded (a Parse or Bind in prepared-statement
mode, assembled by the Scanner when it spans reads). Streamed bytes (DataRow, CopyData, large simple queries)
pass through the loop's receive buffer and never count.

Each loop has its own `BudgetPart` that only its thread writes; the process total is their sum, read only on
the slow paths (a queue that grows, a large message split across reads), so the relay's common path pays
nothing and no lock is taken.
"""

from __future__ import annotations


class Budget:
    """The process's limit and its loops' parts."""

    __slots__ = ("limit", "parts")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[BudgetPart] = []

    def part(self) -> BudgetPart:
        p = BudgetPart(self)
        self.parts.append(p)
        return p

    @property
    def used(self) -> int:
        return sum(p.used for p in self.parts)


class BudgetPart:
    """One loop's bytes in memory (written by that loop's thread only)."""

    __slots__ = ("budget", "used", "refused")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.used = 0
        self.refused = 0  # messages refused because they would have passed the limit

    def over(self) -> bool:
        """The process holds more than its limit."""
        b = self.budget
        return b.used > b.limit

    def take(self, n: int) -> bool:
        """Count `n` more bytes, unless they would take the process past its limit (then False)."""
        b = self.budget
        if b.used + n > b.limit:
            self.refused += 1
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
