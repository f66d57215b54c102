"""A TCP relay in front of PostgreSQL for tests that need a server connection held, refused, frozen or lost at a
chosen moment (test_listen_removed.py, test_temp_search_path.py)."""

from __future__ import annotations

import socket
import threading
import time

from tests.support.wire import WireClient


class GateProxy:
    """A TCP relay to PostgreSQL for one pool. `hold()`: new connections are accepted and wait (a login
    that does not progress) until `open()`; `refuse()`: they are closed at once (a login that fails);
    `freeze()`: what PostgreSQL sends on the connections open now is dropped, until `cut()` closes them.
    `cut_after_login()`: the next connection is closed right after it passed on PostgreSQL's login
    ReadyForQuery (a server lost just after its login). `ports` are the relay's own ports towards PostgreSQL
    (pg_stat_activity.client_port)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.gate = threading.Event()
        self.gate.set()
        self.refusing = False
        self.cut_login = False
        self.waiting = 0  # connections held at the gate
        self.ports: list[int] = []
        self.socks: list[socket.socket] = []
        self.pairs: list[tuple[socket.socket, socket.socket]] = []  # (pooler side, PostgreSQL side)
        self.frozen: set[int] = set()  # ids of the pooler-side sockets
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen = {id(d) for d, _ in self.pairs}

    def cut(self) -> None:
        for d, u in self.pairs:
            if id(d) in self.frozen:
                for x in (d, u):
                    try:
                        x.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def cut_after_login(self) -> None:
        self.cut_login = True

    def hold(self) -> None:
        self.gate.clear()

    def refuse(self) -> None:
        self.refusing = True

    def open(self) -> None:
        self.refusing = False
        self.gate.set()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(down)
            threading.Thread(target=self._serve, args=(down,), daemon=True).start()

    def _serve(self, down: socket.socket) -> None:
        if self.refusing:
            down.close()
            return
        self.waiting += 1
        self.gate.wait()
        self.waiting -= 1
        up = socket.create_connection(self.target)
        self.socks.append(up)
        self.ports.append(up.getsockname()[1])
        self.pairs.append((down, up))
        cut, self.cut_login = self.cut_login, False
        threading.Thread(target=self._pump, args=(up, down, cut), daemon=True).start()
        self._pump(down, up)

    def _pump(self, src: socket.socket, dst: socket.socket, cut: bool = False) -> None:
        seen = b""
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if id(dst) not in self.frozen:
                    dst.sendall(data)
                if cut:
                    seen += data
                    if b"Z\x00\x00\x00\x05" in seen:  # the login's ReadyForQuery: what the pooler sends next is lost
                        time.sleep(0.05)
                        break
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def backends(self, checker: WireClient) -> list[list[str | None]]:
        """PostgreSQL's sessions that came through this relay, still there."""
        if not self.ports:
            return []
        ports = ",".join(map(str, self.ports))
        return checker.query_rows(f"select pid, state, query from pg_stat_activity where client_port in ({ports})")

    def close(self) -> None:
        self.lsock.close()
        for s in self.socks:
            # shutdown first: a bare close() of a socket another thread is blocked reading leaves the
            # connection open (the kernel keeps it for that read), and PostgreSQL's backend with it (one stayed
            # through the rest of its xdist worker's run and was counted by test_coordinator).
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
