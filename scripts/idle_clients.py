#!/usr/bin/env python3
"""Hold many logged-in, idle PostgreSQL client connections open against a pooler (benchmark helper).

It speaks the wire protocol itself (asyncio.Protocol, no driver) so that each held client costs this
process only a socket and a small object, and so that every client is fully logged in (StartupMessage,
md5 or cleartext password, up to ReadyForQuery), which is what a pooler keeps state for.

Protocol with the caller (scripts/bench.py), one JSON object per stdout line:
  {"event": "ready", ...}   once all logins finished (successful or not); the clients are then idle
  {"event": "alive", ...}   after stdin reaches EOF (or --hold seconds): SELECT 1 on a random sample
Then every client sends Terminate and is closed. Exit status 0 only if every login and check succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import resource
import struct
import sys
import time

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")
_PROTOCOL_3_0 = 196608


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE so `needed` sockets fit; root may also raise the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):
            pass  # not root: the most we can have is the hard limit
    target = want if hard == resource.RLIM_INFINITY else min(max(soft, want), hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The PasswordMessage body for AuthenticationMD5Password: md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\0"


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def _error_text(body: bytes) -> str:
    """Severity, SQLSTATE and message of an ErrorResponse body."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}"


class IdleClient(asyncio.Protocol):
    """One client connection: logs in, then idles; can run one simple query on request."""

    __slots__ = ("user", "password", "startup", "buf", "transport", "waiter", "error", "closed")

    def __init__(self, user: str, password: str, dbname: str) -> None:
        self.user = user
        self.password = password
        params = b"user\0" + user.encode() + b"\0database\0" + dbname.encode() + b"\0\0"
        body = _INT32.pack(_PROTOCOL_3_0) + params
        self.startup = _INT32.pack(len(body) + 4) + body
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.startup)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(f"connection closed by peer ({exc})" if exc else "connection closed by peer")

    def _fail(self, text: str) -> None:
        if self.error is None:
            self.error = text
        if not self.waiter.done():
            self.waiter.set_exception(ConnectionError(text))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        while len(self.buf) - pos >= 5:
            kind, length = _HEADER.unpack_from(self.buf, pos)
            end = pos + 1 + length
            if end > len(self.buf):
                break
            self._handle(kind, bytes(self.buf[pos + 5 : end]))
            pos = end
        del self.buf[:pos]

    def _handle(self, kind: bytes, body: bytes) -> None:
        assert self.transport is not None
        if kind == b"R":
            code = _INT32.unpack_from(body)[0]
            if code == 5:
                self.transport.write(_message(b"p", md5_password(self.user, self.password, body[4:8])))
            elif code == 3:
                self.transport.write(_message(b"p", self.password.encode() + b"\0"))
            elif code != 0:
                self._fail(f"unsupported authentication request {code} (this helper does md5 only)")
                self.transport.close()
        elif kind == b"E":
            self._fail(_error_text(body))
        elif kind == b"Z" and not self.waiter.done():
            self.waiter.set_result(None)
        # ParameterStatus, BackendKeyData, NoticeResponse, RowDescription, DataRow, CommandComplete: ignored

    async def query(self, sql: str, timeout: float) -> None:
        """Run one simple query and wait for its ReadyForQuery (raises on ErrorResponse)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(_message(b"Q", sql.encode() + b"\0"))
        await asyncio.wait_for(self.waiter, timeout)

    def terminate(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_message(b"X", b""))
            self.transport.close()


async def _login(
    host: str, port: int, user: str, password: str, dbname: str, timeout: float, gate: asyncio.Semaphore
) -> IdleClient | str:
    async with gate:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: IdleClient(user, password, dbname), host, port), timeout
            )
            await asyncio.wait_for(proto.waiter, timeout)
        except (TimeoutError, OSError, ConnectionError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return proto


async def run(args: argparse.Namespace) -> int:
    gate = asyncio.Semaphore(args.concurrency)
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(
            _login(args.host, args.port, args.user, args.password, args.dbname, args.timeout, gate)
            for _ in range(args.clients)
        )
    )
    login_s = time.monotonic() - t0
    clients = [r for r in results if isinstance(r, IdleClient)]
    errors = [r for r in results if isinstance(r, str)]
    distinct: dict[str, int] = {}
    for e in errors:
        distinct[e] = distinct.get(e, 0) + 1
    print(
        json.dumps(
            {
                "event": "ready",
                "clients": len(clients),
                "failed": len(errors),
                "login_seconds": round(login_s, 3),
                "errors": dict(sorted(distinct.items(), key=lambda kv: -kv[1])[:5]),
            }
        ),
        flush=True,
    )

    loop = asyncio.get_running_loop()
    if args.hold is not None:
        await asyncio.sleep(args.hold)
    else:
        await loop.run_in_executor(None, sys.stdin.read)  # the caller closes our stdin when it has measured

    lost = sum(1 for c in clients if c.closed)
    alive = [c for c in clients if not c.closed]
    sample = random.sample(alive, min(args.check, len(alive)))
    ok = 0
    check_errors: list[str] = []
    for c in sample:
        try:
            await c.query("SELECT 1", args.timeout)
            ok += 1
        except (TimeoutError, ConnectionError) as exc:
            check_errors.append(f"{type(exc).__name__}: {exc}")
    print(
        json.dumps(
            {
                "event": "alive",
                "checked": len(sample),
                "ok": ok,
                "lost_while_idle": lost,
                "errors": check_errors[:5],
            }
        ),
        flush=True,
    )
    for c in clients:
        c.terminate()
    await asyncio.sleep(0.2)  # let the transports flush Terminate before the loop closes
    return 0 if not errors and lost == 0 and ok == len(sample) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", default="", help="plaintext password (md5 or cleartext auth)")
    ap.add_argument("--dbname", required=True)
    ap.add_argument("-n", "--clients", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200, help="logins in flight at once")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per login / per check query")
    ap.add_argument("--hold", type=float, help="hold for this many seconds instead of until stdin EOF")
    ap.add_argument("--check", type=int, default=20, help="idle clients to run SELECT 1 on at the end")
    args = ap.parse_args(argv)
    soft, _ = raise_nofile(args.clients)
    if soft != resource.RLIM_INFINITY and soft < args.clients + 16:
        print(f"RLIMIT_NOFILE is {soft}, too low for {args.clients} clients", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
