"""The admin console session: what a client authenticated on the virtual database `pgdoorman` (or
`pgbouncer`) talks to. It runs on the client's worker thread: the core calls `on_readable` when the
socket is readable and `on_close` once it closed. It reads the pooler through an `observe.Observer` and
acts through an `observe.Control`; the composition root (serve.py) hands it both.

Simple query protocol only. Each Query is parsed (admin/parser.py) into statements that are run in
order; a failing statement gets an ErrorResponse and ends the Query, as in PostgreSQL, and every Query
ends with exactly one ReadyForQuery. Extended-protocol messages get one 08P01 error and are skipped up
to the next Sync; only unframeable bytes end the session.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

from pgdoorman import logs
from pgdoorman.admin.parser import SHOW_SUBCOMMANDS, Command, ParseError, parse
from pgdoorman.admin.resultset import BOOL, TEXT, ResultSet, render, render_command
from pgdoorman.admin.show import SHOW_BUILDERS, ShowContext, show_interner_top
from pgdoorman.observe import Control, Observer, UnknownDatabase
from pgdoorman.protocol import messages as m


class ConsoleLoop(Protocol):
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class ConsoleClient(Protocol):
    """The client connection an admin session talks through (a logged-in `ClientConn`)."""

    pending: bytes | bytearray
    inbuf: bytes | bytearray

    @property
    def closed(self) -> bool: ...
    @property
    def addr(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def application_name(self) -> str: ...
    @property
    def loop(self) -> ConsoleLoop: ...
    @property
    def worker(self) -> Any: ...  # passed through to Control.pause/resume unread
    def write(self, data: bytes) -> Any: ...
    def recv_or_close(self, n: int, reason: str) -> bytes | None: ...
    def fatal(self, sqlstate: str, message: str) -> None: ...
    def close(self, reason: str) -> None: ...


log = logging.getLogger("pgdoorman.admin")

SERVER_VERSION = "15.0 (pgdoorman)"
# Larger admin messages are not queries anyone types: treat them as a broken stream.
MAX_MESSAGE = 1 << 20
RFQ = m.ready_for_query(b"I")
EMPTY_QUERY = m.msg(b"I")
LOG_LEVEL_VALUES = ("error", "warn", "info", "debug", "trace", "off", "default")
EXTENDED = frozenset(b"PBDEC")  # answered once with 08P01, then skipped until Sync


class AdminError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def startup_messages(client: ConsoleClient) -> bytes:
    """ParameterStatus set psql and drivers expect, BackendKeyData, ReadyForQuery."""
    params = [
        ("application_name", client.application_name),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "on"),
        ("server_encoding", "UTF8"),
        ("server_version", SERVER_VERSION),
        ("session_authorization", client.user),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ]
    out = [m.parameter_status(k, v) for k, v in params]
    # Not registered for cancellation: there is nothing to cancel in the console.
    pid = int.from_bytes(os.urandom(3), "big") + 1
    secret = int.from_bytes(os.urandom(4), "big", signed=True)
    out.append(m.backend_key_data(pid, secret))
    out.append(RFQ)
    return b"".join(out)


class AdminSession:
    def __init__(self, obs: Observer, control: Control, client: ConsoleClient) -> None:
        self.obs = obs
        self.control = control
        self.client = client
        self.buf = bytearray()
        self.skipping = False  # after an extended-protocol message: ignore everything up to Sync
        self.closed = False
        logs.remember_initial()
        obs.start_sampler()  # start collecting so SHOW STATS has a window by the time it is asked
        client.write(startup_messages(client))
        # Bytes the client pipelined behind its password end up in client.pending once login returns.
        client.loop.call_soon(self._take_pending)

    # ------------------------------------------------------------------ I/O from the core
    def _take_pending(self) -> None:
        c = self.client
        if c.closed:
            return
        extra = bytes(c.pending) + bytes(c.inbuf)
        c.pending = b""
        c.inbuf = b""
        if extra:
            self.feed(extra)

    def on_readable(self) -> None:
        data = self.client.recv_or_close(65536, "admin client disconnected")
        if data is None:
            return
        self.feed(data)

    def on_close(self) -> None:
        self.closed = True
        self.buf = bytearray()

    # ------------------------------------------------------------------ messages
    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        while len(buf) >= 5 and not self.client.closed:
            t = buf[0]
            (ln,) = m.U32.unpack_from(buf, 1)
            if ln < 4 or ln > MAX_MESSAGE:
                self._send(out)
                self.client.fatal("08P01", f"invalid message length {ln} on the admin console")
                return
            if len(buf) < ln + 1:
                break
            body = bytes(buf[5 : ln + 1])
            del buf[: ln + 1]
            if t == 88:  # 'X' Terminate
                self._send(out)
                self.client.close("admin client terminated")
                return
            out.append(self.message(t, body))
        self._send(out)

    def _send(self, out: list[bytes]) -> None:
        if out and not self.client.closed:
            self.client.write(b"".join(out))
            out.clear()

    def message(self, t: int, body: bytes) -> bytes:
        if t == 81:  # 'Q'
            self.skipping = False
            sql = body[:-1] if body.endswith(b"\x00") else body
            return self.run_query(sql.decode("utf-8", "replace"))
        if t == 83:  # 'S' Sync
            self.skipping = False
            return RFQ
        if t == 72:  # 'H' Flush: nothing is buffered
            return b""
        if t in EXTENDED:
            if self.skipping:
                return b""
            self.skipping = True
            return m.error_response("08P01", "the admin console supports only the simple query protocol")
        name = chr(t) if 32 < t < 127 else f"0x{t:02x}"
        return m.error_response("08P01", f"unexpected message type '{name}' on the admin console") + RFQ

    # ------------------------------------------------------------------ commands
    def run_query(self, sql: str) -> bytes:
        log.debug("admin query from %s: %s", self.client.addr, sql)
        return execute(self.obs, self.control, self.client.worker, sql)


def execute(obs: Observer, control: Control, here: Any, sql: str) -> bytes:
    """All statements of one Query, then ReadyForQuery. Runs on the thread of the worker `here`."""
    ctx = ShowContext(obs)
    out: list[bytes] = []
    for cmd in parse(sql):
        if isinstance(cmd, ParseError):
            log.info("admin: %s (%s)", cmd.message, sql.strip()[:200])
            out.append(m.error_response(cmd.sqlstate, cmd.message))
            break
        try:
            out.append(run_command(control, here, ctx, cmd))
        except AdminError as e:
            out.append(m.error_response(e.sqlstate, e.message))
            break
        except UnknownDatabase as e:
            out.append(m.error_response("3D000", f'No pool for database "{e.database}"'))
            break
        except Exception as e:
            log.exception("admin command %r failed", cmd)
            out.append(m.error_response("XX000", f"internal error in admin command: {e}"))
            break
    out.append(RFQ)
    return b"".join(out)


def run_command(control: Control, here: Any, ctx: ShowContext, cmd: Command) -> bytes:
    verb = cmd.verb
    if verb == "SHOW":
        assert cmd.arg is not None
        if cmd.count is not None:  # SHOW INTERNER <n>
            return render(show_interner_top(ctx, cmd.count))
        return render(SHOW_BUILDERS[cmd.arg](ctx))
    if verb == "RESET":  # RESET INTERNER
        n = control.reset_interner()
        log.info("RESET INTERNER: %d unnamed-only statements dropped from the pools' caches", n)
        return render_command("RESET")
    if verb == "EMPTY":
        return EMPTY_QUERY
    if verb == "TAB_COMPLETION":
        return render(tab_completion(cmd.arg or ""))
    if verb == "SET":
        try:
            level = control.set_log_level(cmd.arg or "")
        except ValueError as e:
            raise AdminError("42601", str(e)) from None
        log.info("SET log_level = '%s'", level)
        return render_command("SET")
    if verb in ("PAUSE", "RESUME"):
        if verb == "PAUSE":
            control.pause(cmd.arg, here)
        else:
            control.resume(cmd.arg, here)
        log.info("%s %s", verb, cmd.arg or "(all pools)")
        return render_command(verb)
    if verb == "RECONNECT":
        control.reconnect(cmd.arg)
        log.info("RECONNECT %s", cmd.arg or "(all pools)")
        return render_command(verb)
    if verb == "KILL":
        control.kill(cmd.arg)
        log.info("KILL %s", cmd.arg)
        return render_command(verb)
    if verb == "RELOAD":
        ok, message = control.reload()
        if not ok:
            raise AdminError("F0000", f"RELOAD failed, the running configuration is kept: {message}")
        return render_command("RELOAD")
    if verb == "UPGRADE":
        # Binary upgrade, as SIGUSR2: validate the config with the new executable, start it, hand clients over.
        log.info("UPGRADE requested from the admin console")
        ok = control.request_upgrade()
        return render(ResultSet([("success", BOOL)], [[bool(ok)]], tag="UPGRADE"))
    if verb == "SHUTDOWN":
        log.info("SHUTDOWN requested from the admin console")
        control.request_shutdown()
        return render(ResultSet([("success", BOOL)], [[True]], tag="SHUTDOWN"))
    raise AdminError("58000", f"unsupported admin command {verb}")


_LIKE = re.compile(r"like\s+(?:pg_catalog\.lower\s*\(\s*)?'((?:[^']|'')*)'", re.IGNORECASE)


def _like_prefix(query: str) -> str:
    mt = _LIKE.search(query)
    if not mt:
        return ""
    pat = mt.group(1).replace("''", "'")
    return pat.split("%", 1)[0].replace("\\", "").lower()


def tab_completion(query: str) -> ResultSet:
    """psql's TAB completion asks pg_catalog.pg_settings: offer what the console understands."""
    q = query.lower()
    prefix = _like_prefix(query)
    if "unnest(enumvals)" in q:  # SET log_level = <TAB>
        vals = [v for v in LOG_LEVEL_VALUES if v.startswith(prefix)]
        return ResultSet([("val", TEXT)], [[v] for v in vals], tag=f"SELECT {len(vals)}")
    if "vartype" in q:  # psql asks the type of the parameter being set
        return ResultSet([("vartype", TEXT)], [["enum"]], tag="SELECT 1")
    if "context" in q:  # SET <TAB>: settable parameters
        names = [n for n in ("log_level",) if n.startswith(prefix)]
        return ResultSet([("name", TEXT)], [[n] for n in names], tag=f"SELECT {len(names)}")
    names = [n for n in SHOW_SUBCOMMANDS if n.startswith(prefix)]  # SHOW <TAB>
    return ResultSet([("name", TEXT)], [[n] for n in names], tag=f"SELECT {len(names)}")
