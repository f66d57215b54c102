"""Which worker serves a client (general.worker_placement).

`spread`: the worker whose SO_REUSEPORT listener accepted it (the kernel spreads new clients evenly).
`pack` (work-conserving): clients go to the lowest-numbered worker that is not busy, a worker that stays
busy moves some of its idle clients to one that is not, and a worker whose load a lower-numbered one can
take as well gives its idle clients back to that one. A loop handles a client most cheaply when it already
has work: every extra runnable worker thread pays its own wake-ups, preemptions and the cross-thread sharing
of the pool's objects (docs/performance.md, "Packing clients onto few workers"), so the clients are kept on as
few workers as the load needs.

"Busy": the worker thread's own CPU time over the last interval (`time.thread_time()`, read by the thread
itself on the janitor's tick, about once a second) is at least `worker_busy_percent` of one core, while the
machine left at least `worker_spare_cpu_percent` of one CPU idle (/proc/stat) over it: a second worker costs
CPU per transaction and is worth it only when it has a CPU to run on. Each worker writes only its own `Load`;
the others read its `busy` flag (one attribute read, no lock). A worker never counts as busy when it is the
only one.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from pgdoorman.session.shared import NO_TIMER

if TYPE_CHECKING:
    from pgdoorman.core.pool import Pool
    from pgdoorman.session.client import ClientConn
    from pgdoorman.session.server import ServerConn

# How often a worker measures itself (seconds of wall time between samples; the janitor ticks every 0.1 s).
INTERVAL = 1.0
# At most this many idle clients leave a busy worker per interval (and at most a quarter of its clients):
# the load moves over a few seconds instead of all at once on one sample.
SPILL_BATCH = 32
# A busy worker spills only to one whose share is below this fraction of the threshold: room to spare, so
# that the clients do not bounce back and forth between two workers near the threshold.
SPILL_ROOM = 0.8
# The admin console's KILLs a client moving between workers is checked against when it arrives: the last this
# many. A move takes one loop iteration of the worker it goes to; so many KILLs meanwhile cannot happen.
KILL_LOG = 64


class Load:
    """A worker's own measure of itself, written only by its thread."""

    __slots__ = ("busy", "share", "cpu", "wall", "spilled", "adopted", "box_idle", "box_ticks", "spare")

    def __init__(self) -> None:
        self.busy = False
        self.share = 0.0  # CPU seconds per wall second over the last interval
        self.cpu = 0.0  # the thread's CPU time at `wall`
        self.wall = 0.0  # 0: not sampled yet on the worker's thread
        self.spilled = 0  # clients moved away since start
        self.adopted = 0  # clients taken from other workers (after accept or spilled)
        self.box_idle = 0  # the machine's idle CPU time and all its CPU time at `wall` (/proc/stat, clock ticks)
        self.box_ticks = 0
        self.spare = -1.0  # CPUs the machine left idle over the last interval (-1: unknown)


def machine_ticks() -> tuple[int, int] | None:
    """The machine's idle (idle + iowait) and total CPU time so far, in clock ticks, from /proc/stat's first
    line; None where there is no /proc/stat."""
    try:
        with open("/proc/stat", "rb") as f:
            head = f.readline().split()
    except OSError:
        return None
    if head[:1] != [b"cpu"] or len(head) < 9:
        return None
    v = [int(x) for x in head[1:9]]  # user nice system idle iowait irq softirq steal
    return v[3] + v[4], sum(v)


def sample(load: Load, now: float, percent: int, spare_percent: int = 0,
           ticks: tuple[int, int] | None = None, ncpu: int | None = None) -> bool:
    """On the worker's own thread: update `load` when an interval has passed. True when it did. A worker is
    busy when its thread used `percent` of a CPU and, with `spare_percent`, the machine left at least that
    share of one CPU idle over the interval: moving clients to another worker costs CPU per transaction, and
    buys throughput only when there is a CPU for that worker to run on (`ticks`, `ncpu`: for tests)."""
    span = now - load.wall
    if load.wall != 0.0 and span < INTERVAL:
        return False  # (on most janitor ticks: nothing read)
    if ticks is None:
        ticks = machine_ticks()
    if load.wall == 0.0:
        load.cpu, load.wall = time.thread_time(), now
        if ticks is not None:
            load.box_idle, load.box_ticks = ticks
        return False
    cpu = time.thread_time()
    load.share = (cpu - load.cpu) / span
    load.cpu, load.wall = cpu, now
    load.spare = -1.0
    if ticks is not None:
        d_all = ticks[1] - load.box_ticks
        if d_all > 0 and load.box_ticks:
            load.spare = (ticks[0] - load.box_idle) / d_all * (ncpu or os.cpu_count() or 1)
        load.box_idle, load.box_ticks = ticks
    load.busy = load.share * 100 >= percent and (spare_percent <= 0 or load.spare < 0
                                                  or load.spare * 100 >= spare_percent)
    return True


class Placed(Protocol):
    """A worker as placement sees it."""

    @property
    def load(self) -> Load: ...


W = TypeVar("W", bound=Placed)


class Settings(Protocol):
    """The two general settings placement reads (config.model.GeneralConfig has them)."""

    @property
    def worker_placement(self) -> str: ...

    @property
    def worker_busy_percent(self) -> int: ...


def target(workers: Sequence[W], me: W, g: Settings) -> W:
    """Where a client `me` accepted goes: with `pack`, the lowest-numbered worker that is not busy (`me` when
    every one before it is; at worker_busy_percent 0 every worker is); with `spread`, `me`."""
    if g.worker_placement != "pack" or not g.worker_busy_percent:
        return me
    for w in workers:
        if w is me or not w.load.busy:
            return w
    return me


def spill_target(workers: Sequence[W], me: W, percent: int) -> W | None:
    """A busy worker's idle clients go to the lowest-numbered worker that is not busy and has room to spare."""
    room = percent * SPILL_ROOM / 100
    for w in workers:
        if w is not me and not w.load.busy and w.load.share < room:
            return w
    return None


def gather_target(workers: Sequence[W], me: W, percent: int) -> W | None:
    """A worker that is not busy gives its idle clients to the lowest-numbered worker before it that is not
    busy and would stay under SPILL_ROOM of the threshold with both loads (so it does not spill them back)."""
    room = percent * SPILL_ROOM / 100
    for w in workers:
        if w is me:
            return None
        if not w.load.busy and w.load.share + me.load.share < room:
            return w
    return None


def batch(n_clients: int) -> int:
    """How many idle clients a busy worker moves away at one sample."""
    return min(SPILL_BATCH, max(1, n_clients // 4))


def movable(c: ClientConn) -> bool:
    """A client that can change worker between two of its transactions. What a binary upgrade asks first
    (`ClientConn.between_transactions`: logged in, outside a transaction, no server held or awaited, nothing
    withheld, half-scanned, owed or unsent), and besides: transaction mode, not the admin console, not
    mid-COPY or mid-extended-protocol window, not pinned, no deferred BEGIN, never LISTENed (its channels live
    with its worker's registry), not being checked against a server. A TLS client whose handshake is done
    moves like any other (unlike to another process): its ssl.SSLSocket is one object, read only by the loop
    it is registered on, and holds no decrypted byte epoll could not report."""
    return (c.between_transactions and c.admin is None and c.transaction_mode and c.probing is None
            and not c.pinned and c.lsn is None and not c.handshaking and not c.in_copy_in
            and not c.copy_window and c.window is None and not c.leaves and c.scanner.rest is None
            and not c.begin_held and c.login_timer is NO_TIMER
            and not (c.tls and _tls_pending(c.sock)))


def _tls_pending(sock: socket.socket) -> int:
    """Decrypted bytes OpenSSL holds (always 0: net/tls.py reads whole records; checked all the same)."""
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


class Transit:
    """Clients on their way from one worker to another (`Janitor.place` took them off one worker's set, the
    other has not adopted them yet), servers likewise (`Worker._move_server`, a server handed to a waiter of
    another worker), and the KILLs they might miss meanwhile. One per pooler.

    Readers of every worker's clients (SHOW CLIENTS, auth_query's collection of unused pools, a binary
    upgrade waiting for the last client) add `clients()`: a moving client is in no worker's set for one loop
    iteration of the worker it goes to, and would be missed. A KILL runs on each worker's own thread
    (`App._kill_in`) and may run on the worker a client goes to before that worker adopts it, while the client
    has left the other already: so KILLs are numbered and logged here, each worker notes the last one it ran
    (`ran`), a moving client carries the last one its old worker ran, and `arrive` tells whether a KILL of its
    pool ran on its new worker after it left the old one and before it arrived. The same holds for servers:
    SHOW SERVERS adds `servers()`, and `server_arrives` tells whether a KILL missed one. Worker threads and
    the admin console's thread use it, under one lock; moves and KILLs are rare (a server moves only when no
    server of its client's own worker was free), so the relay's common path never touches it."""

    __slots__ = ("lock", "moving", "moving_servers", "gen", "kills", "seen")

    def __init__(self, nworkers: int) -> None:
        self.lock = threading.Lock()
        self.moving: dict[ClientConn, int] = {}  # client -> the last KILL its old worker had run when it left
        self.moving_servers: dict[ServerConn, int] = {}  # likewise
        self.gen = 0  # the last KILL's number
        self.kills: deque[tuple[int, Collection[int]]] = deque(maxlen=KILL_LOG)  # (number, ids of its pools)
        self.seen = [0] * nworkers  # per worker: the last KILL it ran (written by its own thread)

    def kill(self, targets: Collection[int], post: Callable[[int], None]) -> None:
        """A KILL of the pools whose ids are `targets`: numbered and logged, then `post(number)` posts it to
        every worker, all under the lock, so that no client leaves a worker between the two."""
        with self.lock:
            self.gen += 1
            self.kills.append((self.gen, targets))
            post(self.gen)

    def ran(self, wid: int, gen: int) -> None:
        """On worker `wid`'s thread, after it ran KILL number `gen` (in the order they were posted)."""
        self.seen[wid] = gen

    def leave(self, c: ClientConn, wid: int, post: Callable[[], None]) -> None:
        """On worker `wid`'s thread: `c` leaves it; `post()` posts its adoption to the worker it goes to."""
        with self.lock:
            self.moving[c] = self.seen[wid]
            post()

    def arrive(self, c: ClientConn, wid: int, pool: Pool | None) -> bool:
        """On worker `wid`'s thread, once `c` is in its set: True when a KILL of `pool` ran here after `c` left
        its old worker (which ran the KILLs before) and before it arrived, so that it missed `c`."""
        with self.lock:
            return self._missed(self.moving.pop(c, None), wid, pool)

    def _missed(self, left: int | None, wid: int, pool: Pool | None) -> bool:
        if left is None or pool is None:
            return False
        seen = self.seen[wid]
        return any(left < g <= seen and id(pool) in t for g, t in self.kills)

    def server_leaves(self, s: ServerConn, wid: int) -> None:
        """On worker `wid`'s thread: `s` left its set; its adoption is posted next (a KILL numbered meanwhile
        is posted to its new worker too, and `server_arrives` or that worker's own pass finds it)."""
        with self.lock:
            self.moving_servers[s] = self.seen[wid]

    def server_arrives(self, s: ServerConn, wid: int) -> bool:
        """On worker `wid`'s thread, once `s` is in its set: as `arrive`, for a server."""
        with self.lock:
            return self._missed(self.moving_servers.pop(s, None), wid, s.pool)

    def clients(self) -> list[ClientConn]:
        with self.lock:
            return list(self.moving)

    def servers(self) -> list[ServerConn]:
        with self.lock:
            return list(self.moving_servers)
