"""The error of an authentication exchange (protocol/auth.py, protocol/scram_reader.py): its own module so that
the SCRAM message reader can raise it without importing the state machines."""

from __future__ import annotations


class AuthError(Exception):
    """A malformed or failed authentication exchange.

    Messages describe what was wrong without echoing secrets (passwords, proofs, keys), so they
    are safe to log and, where appropriate, to forward to the client. `sqlstate` (with `message` and
    `detail`) is set where PostgreSQL answers with its own error rather than "password authentication
    failed": a broken SCRAM exchange (channel binding included), in its words.
    """

    def __init__(self, message: str, sqlstate: str = "", detail: str | None = None) -> None:
        super().__init__(f"{message}: {detail}" if detail else message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail


def malformed(detail: str) -> AuthError:
    return AuthError("malformed SCRAM message", "08P01", detail)
