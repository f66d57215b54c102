#!/usr/bin/env python3
"""The floor of a Python pooler's cost per transaction: what the interpreter spends on the least a
transaction pooler must do for `pgbench -S`, measured side by side with PgBouncer and pgdoorman
(docs/performance.md, "The floor of a Python relay").

`serve` is that least: one thread, `select.epoll` with a file descriptor -> handler dict (cheaper than
`selectors`), every client logged in with AuthenticationOk and the first server's ParameterStatus
messages replayed, `--pool` server connections opened at start (md5), and per transaction: read the
client's request, take an idle server or queue the request, send it, read the answer, walk its message
headers to the last one, send it on, and at a ReadyForQuery(I) give the server to the next waiting client
or back to the idle list. No statistics, no settings, no prepared statements, no timeouts, no admin
console, no error handling beyond closing: nothing a real pooler could leave out is left in.

    .venv/bin/python scripts/relay_floor.py compare --rounds 2           # floor, PgBouncer, pgdoorman
    .venv/bin/python scripts/relay_floor.py compare --python .venv-ft/bin/python --only floor,pgdoorman
    .venv/bin/python scripts/relay_floor.py count      # its bytecodes and calls a transaction

`compare` runs `serve` next to scripts/bench.py's cluster and poolers (pool_size 20, everything at nice
-10) and prints scripts/sched_share.py's columns for each: tps, and CPU per transaction (user+system) of
the pooler, PostgreSQL and pgbench. A diagnostic, not a benchmark. `count` runs `serve` under
scripts/count_bytecodes.py's tracer and prints its bytecodes, Python calls and C calls per transaction, the
figures count_bytecodes.py gives for pgdoorman.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

PORT_FLOOR = 26004
_HDR = struct.Struct("!cI")


def _read_messages(sock: socket.socket, until: bytes) -> list[tuple[bytes, bytes]]:
    """Blocking reads of whole messages until one of type `until` (login only)."""
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    while True:
        while len(buf) >= 5:
            kind, size = _HDR.unpack_from(buf)
            if len(buf) < size + 1:
                break
            out.append((kind, buf[5:size + 1]))
            buf = buf[size + 1:]
            if kind == until:
                return out
            if kind == b"E":
                raise SystemExit(f"server refused the login: {out[-1][1]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("server closed during login")
        buf += chunk


def _server_login(addr: tuple[str, int], user: str, password: str, db: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(addr)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
    msgs = _read_messages(sock, b"R")
    code = struct.unpack_from("!I", msgs[-1][1])[0]
    if code == 5:  # md5
        salt = msgs[-1][1][4:8]
        inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
        reply = b"md5" + hashlib.md5(inner + salt).hexdigest().encode() + b"\0"
        sock.sendall(b"p" + struct.pack("!I", len(reply) + 4) + reply)
    elif code != 0:
        raise SystemExit(f"authentication request {code} is not handled here")
    msgs = _read_messages(sock, b"Z")
    status = b"".join(b"S" + struct.pack("!I", len(body) + 4) + body for kind, body in msgs if kind == b"S")
    sock.setblocking(False)
    return sock, status


def serve(args: argparse.Namespace) -> None:
    host, port = args.server.rsplit(":", 1)
    ep = select.epoll()
    handlers: dict[int, object] = {}
    idle: list[Server] = []
    waiting: deque[tuple[Client, bytes]] = deque()
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    hello = b""

    class Server:
        __slots__ = ("sock", "client", "rest")

        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.client: Client | None = None
            self.rest = 0  # bytes of the current message not yet seen

        def on_read(self) -> None:
            n = self.sock.recv_into(buf)
            c = self.client
            if n == 0 or c is None:
                raise SystemExit("server closed")
            c.sock.send(view[:n])
            # Walk the message headers to the last one: is it a whole ReadyForQuery, status idle?
            pos = self.rest
            last = -1
            while pos + 5 <= n:
                last = pos
                pos += 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")
            self.rest = pos - n
            if self.rest == 0 and last >= 0 and buf[last] == 90 and buf[last + 5] == 73:
                c.server = None
                if waiting:
                    nc, data = waiting.popleft()
                    nc.server = self
                    self.client = nc
                    self.sock.send(data)
                else:
                    self.client = None
                    idle.append(self)

    class Client:
        __slots__ = ("sock", "server", "fd")

        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.fd = sock.fileno()
            self.server: Server | None = None

        def on_read(self) -> None:
            n = self.sock.recv_into(buf)
            if n == 0 or buf[0] == 88:  # closed, or Terminate
                ep.unregister(self.fd)
                handlers.pop(self.fd, None)
                self.sock.close()
                return
            s = self.server
            if s is None:
                if not idle:
                    waiting.append((self, bytes(view[:n])))
                    return
                s = idle.pop()
                s.client = self
                self.server = s
            s.sock.send(view[:n])

    class Login:
        __slots__ = ("sock",)

        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def on_read(self) -> None:
            data = self.sock.recv(65536)
            fd = self.sock.fileno()
            if len(data) < 8:
                ep.unregister(fd)
                self.sock.close()
                return
            if struct.unpack_from("!I", data, 4)[0] == 80877103:  # SSLRequest: no
                self.sock.send(b"N")
                return
            self.sock.send(b"R\0\0\0\x08\0\0\0\0" + hello + b"K\0\0\0\x0c" + struct.pack("!II", fd, 0)
                           + b"Z\0\0\0\x05I")
            handlers[fd] = Client(self.sock).on_read

    class Listener:
        __slots__ = ("sock",)

        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def on_read(self) -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    return
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                handlers[conn.fileno()] = Login(conn).on_read
                ep.register(conn.fileno(), select.EPOLLIN)

    for _ in range(args.pool):
        sock, hello = _server_login((host, int(port)), args.user, os.environ.get("PGPASSWORD", ""), args.db)
        s = Server(sock)
        idle.append(s)
        handlers[sock.fileno()] = s.on_read
        ep.register(sock.fileno(), select.EPOLLIN)
    lsock = socket.create_server((args.host, args.port), backlog=4096)
    lsock.setblocking(False)
    handlers[lsock.fileno()] = Listener(lsock).on_read
    ep.register(lsock.fileno(), select.EPOLLIN)
    print(f"relay_floor listening on {args.host}:{args.port}", flush=True)
    poll = ep.poll
    while True:
        for fd, _ev in poll():
            try:
                handlers[fd]()  # type: ignore[operator]
            except KeyError:
                pass


def compare(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench as B
    import sched_share as S

    b = B.Bench(B.parse_args(["--python", args.python, "--no-charts", "--idle-clients", "0",
                              "--login-storm", "0"]))
    only = args.only.split(",")
    b.nofile = B.raise_nofile(20000)
    ns = argparse.Namespace(clients=args.clients, duration=args.duration, pgbench_nice=B.NICE, profile=0,
                            perf=False, rounds=args.rounds)
    try:
        b.start_cluster()
        poolers = []
        if "floor" in only:
            env = dict(b.env, PGPASSWORD=b.password)
            cmd = B.nice_prefix() + [args.python, str(Path(__file__).resolve()), "serve", "--port",
                                     str(PORT_FLOOR), "--server", f"{B.HOST}:{B.PORT_PG}", "--pool",
                                     str(b.args.pool_size), "--user", B.ROLE, "--db", B.DB]
            floor = b.procs.spawn(cmd, env=env, stdout=subprocess.PIPE, text=True)
            assert floor.stdout is not None
            line = floor.stdout.readline()
            if "listening" not in line:
                raise SystemExit(f"relay_floor did not start: {line!r}")
            poolers.append(("floor", floor.pid, PORT_FLOOR))
        S.table(b, poolers + S.start_poolers(b, only), ["simple"], ns, pause=1.0)
    finally:
        b.cleanup()
    return 0


def count(args: argparse.Namespace) -> int:
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench as B
    import count_bytecodes as CB

    B.set_ports(26200)
    b = B.Bench(B.parse_args(["--only", "pgdoorman", "--idle-clients", "0", "--login-storm", "0", "--scale", "1",
                              "--port-base", "26200"]))
    port = "26299"
    per = max(1, args.transactions // args.clients)
    counts: dict[str, dict[str, object]] = {}
    try:
        b.start_cluster()
        for kind in ("ops", "calls"):
            out = b.tmp / f"counts-{kind}.json"
            p = b.procs.spawn([sys.executable, str(Path(__file__).resolve()), "traced", kind, str(out), "serve",
                               "--port", port, "--server", f"{B.HOST}:{B.PORT_PG}", "--pool", "20",
                               "--user", B.ROLE, "--db", B.DB],
                              env=dict(b.env, PGPASSWORD=b.password), stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None
            p.stdout.readline()

            def pgbench(clients: int, tx: int) -> None:
                r = subprocess.run([b.bin("pgbench"), "-h", B.HOST, "-p", port, "-U", B.ROLE, "-n", "-S", "-M",
                                    "simple", "-c", str(clients), "-j", "1", "-t", str(tx), B.DB],
                                   env=b.env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"pgbench failed: {r.stderr[-500:]}")

            pgbench(20, 50)
            os.kill(p.pid, CB.RESET)
            time.sleep(0.3)
            pgbench(args.clients, per)
            os.kill(p.pid, CB.DUMP)
            for _ in range(100):
                if out.exists():
                    break
                time.sleep(0.1)
            counts[kind] = {"n": per * args.clients, "rows": json.loads(out.read_text())}
            b.procs.stop(p)
    finally:
        b.cleanup()
    print(CB.report(["floor"], {"simple": {"floor": counts}}, 8))
    return 0


def traced(argv: list[str]) -> None:
    """`serve` under count_bytecodes.py's tracer (argv: kind, output file, serve's arguments)."""
    import runpy

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import count_bytecodes

    def run_floor(*_: object, **__: object) -> None:
        sys.argv = [__file__, *argv[2:]]
        runpy.run_path(__file__, run_name="__main__")

    runpy.run_module = run_floor  # type: ignore[assignment]  # (trace_main runs pgdoorman with it)
    count_bytecodes.trace_main(argv[0], argv[1], argv[2:])


def main() -> int:
    if sys.argv[1:2] == ["traced"]:
        traced(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", help="run the floor relay (PGPASSWORD is the servers' password)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=PORT_FLOOR)
    sv.add_argument("--server", required=True, help="PostgreSQL's HOST:PORT")
    sv.add_argument("--pool", type=int, default=20)
    sv.add_argument("--user", required=True)
    sv.add_argument("--db", required=True)
    cp = sub.add_parser("compare", help="the floor, PgBouncer and pgdoorman side by side")
    cp.add_argument("--python", default=sys.executable, help="the interpreter the floor and pgdoorman run on")
    cp.add_argument("--only", default="floor,pgbouncer,pgdoorman")
    cp.add_argument("--clients", type=int, default=100)
    cp.add_argument("--duration", type=int, default=12)
    cp.add_argument("--rounds", type=int, default=1)
    ct = sub.add_parser("count", help="serve's bytecodes and calls a transaction (3.11's tracer)")
    ct.add_argument("--clients", type=int, default=100)
    ct.add_argument("--transactions", type=int, default=3000)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
        return 0
    return compare(args) if args.cmd == "compare" else count(args)


if __name__ == "__main__":
    sys.exit(main())
