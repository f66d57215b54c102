"""The process owner: builds pools and workers from the config, binds listeners (or takes over those of
the process it upgrades), runs the worker threads, and turns signals and admin commands into reload,
binary upgrade and shutdown. Signal handlers only set flags and wake the main thread; the main thread does
the work. It implements `observe.Source` and `observe.Control` structurally and imports neither admin/ nor
metrics/: serve.py (the composition root) plugs the admin session factory and the metrics listener in.

Signals: SIGHUP reloads the config; SIGTERM shuts down gracefully; SIGUSR2 upgrades the binary (through
the `upgrader` hook serve.py sets: pgdoorman/upgrade/, which app.py does not import); SIGINT shuts down
when stdin is a terminal (Ctrl-C) and upgrades otherwise, as PgDoorman does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pgdoorman import __version__, hba, logs, placement, systemd, talos
from pgdoorman.auth_query import DynamicPools
from pgdoorman.config import Config, ConfigError
from pgdoorman.core.cancel import CancelRegistry
from pgdoorman.core.coordinator import Coordinators
from pgdoorman.core.pool import Pool
from pgdoorman.janitor import Janitor, kill_client
from pgdoorman.net.budget import Budget
from pgdoorman.net.ratelimit import HandshakeLimiter
from pgdoorman.net.sockopts import TcpOptions, tcp_listener, unix_listener
from pgdoorman.observe import UnknownDatabase
from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m
from pgdoorman.resources import Resources
from pgdoorman.resources import build as build_resources
from pgdoorman.resources import load as load_resources
from pgdoorman.session import listener
from pgdoorman.worker import Worker

if TYPE_CHECKING:
    from pgdoorman.session.client import ClientConn

log = logging.getLogger("pgdoorman")


def gil_enabled() -> bool:
    f = getattr(sys, "_is_gil_enabled", None)
    return True if f is None else bool(f())


def compiled() -> bool:
    """Whether the per-transaction modules run compiled (the optional mypyc build, scripts/build_mypyc.sh)."""
    return str(getattr(sys.modules[Worker.__module__], "__file__", "")).endswith((".so", ".pyd"))


def default_workers() -> int:
    if gil_enabled():
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Stoppable(Protocol):
    def stop(self) -> None: ...


class App:
    # Pools a RELOAD or auth_query removed (pool_removed), as long as clients or servers still hold them: the
    # janitors expire their idle servers as a configured pool's. Replaced whole: workers read it without a lock.
    removed_pools: tuple[weakref.ref[Pool], ...] = ()

    def __init__(self, config: Config, resources: Resources | None = None) -> None:
        """`resources`: the live objects built from `config` (pgdoorman.resources; serve() passes those built
        while the config was checked); built here when not given."""
        self.config = config
        self.resources = resources if resources is not None else build_resources(config)
        g = config.general
        self.nworkers = g.worker_threads or default_workers()
        self.workers = [Worker(self, i) for i in range(self.nworkers)]
        self.budget = Budget(g.max_memory_usage)  # max_memory_usage, one part per worker loop
        for w in self.workers:
            w.loop.mem = self.budget.part()
        self.janitors = [Janitor(w) for w in self.workers]  # one per worker, on its loop
        self.transit = placement.Transit(self.nworkers)  # clients moving between workers (Janitor.place)
        self.pools: dict[tuple[str, str], Pool] = {}
        self.coordinators = Coordinators()  # max_db_connections, per database (core/coordinator.py)
        self._pool_list: list[Pool] = []
        self.cancels = CancelRegistry()
        self.count_lock = threading.Lock()
        self.n_clients = 0
        self.total_accepted = 0
        self.tls_connections = 0  # clients that completed a TLS handshake
        self.connection_errors = 0  # clients refused before authentication (listener_rejections summed)
        self.listener_rejections: dict[str, int] = {}
        # Server connections the pooler failed to open or log in: (database, user, SQLSTATE class) -> count.
        self.server_login_failures: dict[tuple[str, str, str], int] = {}
        # Client TLS is the one built at start: certificates are not reloaded (as in PgDoorman).
        self.client_tls = self.resources.client_tls
        self.tls_limiter = HandshakeLimiter(g.tls_rate_limit_per_second)  # not reloaded either (as PgDoorman)
        self.hba_rules: tuple[hba.Rule, ...] | None = None  # general.pg_hba; None: no rules, everyone may try
        self.hba_networks: tuple[hba.Network, ...] = ()  # legacy general.hba
        self._use_access(self.resources)
        self.shutting_down = False
        self.started = time.time()
        self._admin_verifier: auth.ScramVerifier | None = None
        self._wake = threading.Event()
        self._reload_requested = False
        self._shutdown_requested = False
        self._upgrade_requested = False
        self._reload_lock = threading.Lock()
        # Set by serve.py: whether SIGINT means shutdown (else upgrade), and the binary upgrade to run on an
        # upgrade request (the exit code once clients are handed over, None to keep serving).
        self.sigint_shutdown = True
        self.upgrader: Callable[[], int | None] | None = None
        # What SIGHUP runs: reload() itself, or serve.py's wrapper that records it in the event journal.
        self.signal_reload: Callable[[], tuple[bool, str]] = self.reload
        self.handed_over = False  # a new process took over our listeners (set by the upgrade)
        # Set by the composition root (serve.py): the admin console's session factory and the /metrics
        # listener's starter. Without them an admin login is refused and web.enabled starts nothing.
        self.admin_factory: Callable[[ClientConn], Any] | None = None
        self.metrics_factory: Callable[[], Stoppable] | None = None
        self.metrics: Stoppable | None = None
        self.shutdown_deadline = 0.0
        self.unix_path: str | None = None
        self.tcp_options = self._tcp_options()
        for n in config.notes:  # settings that do not apply to pgdoorman (said once, at info level)
            log.info("%s", n)
        self._build_pools(config)
        # auth_query: the lookups and the pools of the users they find (pgdoorman/auth_query/).
        self.auth_query = DynamicPools(self)
        self._next_collect = 0.0

    @property
    def pool_list(self) -> list[Pool]:
        return self._pool_list

    @pool_list.setter
    def pool_list(self, pools: list[Pool]) -> None:
        """Every change of the pool list (start, RELOAD, auth_query's pools) passes here: the databases'
        coordinators follow it."""
        self.coordinators.refresh(self.config, pools)
        self._pool_list = pools

    # ------------------------------------------------------------------ config
    def _use_access(self, resources: Resources) -> None:
        """pg_hba rules and the legacy hba list, as built from the config."""
        self.hba_rules = resources.hba_rules
        self.hba_networks = resources.hba_networks

    def _tcp_options(self) -> TcpOptions:
        g = self.config.general
        return TcpOptions(
            no_delay=g.tcp_no_delay,
            keepalives_idle=g.tcp_keepalives_idle,
            keepalives_interval=g.tcp_keepalives_interval,
            keepalives_count=g.tcp_keepalives_count,
            user_timeout=g.tcp_user_timeout,
            so_linger=g.tcp_so_linger,
            buffer_size=g.tcp_socket_buffer_size,
            unix_buffer_size=g.unix_socket_buffer_size,
        )

    def _build_pools(self, config: Config) -> None:
        """Pools of `config`, with the objects in self.resources (built from it): new ones created, kept
        ones re-applied, removed ones emptied."""
        seen = set()
        for pname, pcfg in config.pools.items():
            for ucfg in pcfg.users:
                key = (pname, ucfg.username)
                seen.add(key)
                pool = self.pools.get(key)
                live = self.resources.for_pool(pname, ucfg.username)
                if pool is not None and pool.dynamic:  # an auth_query user is now a static one: a new pool
                    pool.epoch += 1
                    self._close_idle(pool)
                    self.pool_removed(pool)
                    pool = None
                if pool is None:
                    pool = Pool(config, pcfg, ucfg, self.nworkers, live)
                    self.pools[key] = pool
                else:
                    old_target = (pool.pool_cfg.server_host, pool.pool_cfg.server_port,
                                  pool.pool_cfg.server_database, pool.server_user, pool.server_secret,
                                  pool.startup_parameters)
                    pool.apply(config, pcfg, ucfg, live)
                    new_target = (pcfg.server_host, pcfg.server_port, pcfg.server_database,
                                  pool.server_user, pool.server_secret, pool.startup_parameters)
                    if old_target != new_target:
                        pool.epoch += 1  # servers of the old target are closed as they come back
                        pool.server_params = None
                        self._close_idle(pool)
                        listener.follow(pool)
                    pool.scram_verifier = None
        for key in list(self.pools):
            if key not in seen and not self.pools[key].dynamic:  # auth_query's pools: auth_query.reload
                pool = self.pools.pop(key)
                pool.epoch += 1
                pool.paused = False
                self._close_idle(pool)
                self.pool_removed(pool)
        self.pool_list = list(self.pools.values())

    def _close_idle(self, pool: Pool) -> None:
        for j in self.janitors:
            j.worker.loop.call_soon_threadsafe(j.close_idle, pool)

    def pool_removed(self, pool: Pool) -> None:
        """`pool` left the registry (RELOAD, auth_query): its clients stay until they leave; the servers they
        use are expired by the janitors as a configured pool's are (idle_timeout, server_lifetime), and its
        LISTEN connection is closed once none of them listens."""
        self.removed_pools = (*(r for r in self.removed_pools if r() is not None), weakref.ref(pool))
        listener.drop(pool)

    def reload(self) -> tuple[bool, str]:
        """Re-read the config file; keep the old one if the new one is invalid. Called from the main thread
        (SIGHUP) and from admin sessions (RELOAD): one at a time."""
        with self._reload_lock:
            systemd.reloading()
            try:
                return self._reload()
            finally:
                systemd.ready()

    def _reload(self) -> tuple[bool, str]:
        path = self.config.path
        try:
            loaded = load_resources(path)  # the files it names are read here, once
        except ConfigError as e:
            log.error("RELOAD failed, keeping the running configuration:\n%s", e)
            return False, str(e)
        new = loaded.config
        for w in new.warnings:
            log.warning("%s", w)
        for n in new.notes:
            log.info("%s", n)
        old = self.config
        for key in ("host", "port", "worker_threads", "unix_socket_dir", "tls_mode", "tls_certificate",
                    "tls_private_key", "tls_ca_cert", "tls_rate_limit_per_second"):
            if getattr(old.general, key) != getattr(new.general, key):
                log.warning("RELOAD: general.%s changed but needs a restart (or binary upgrade) to apply", key)
        self.config = new
        self.budget.limit = new.general.max_memory_usage
        self.resources = loaded.resources
        self._use_access(loaded.resources)
        self.tcp_options = self._tcp_options()
        with self.auth_query.lock:
            self._build_pools(new)
            self.auth_query.reload(old, new)
        log.info("configuration reloaded from %s", path)
        return True, "reloaded"

    def admin_verifier(self) -> auth.ScramVerifier:
        if self._admin_verifier is None:
            pw = self.config.general.admin_password
            self._admin_verifier = (auth.ScramVerifier.parse(pw) if auth.is_scram_verifier(pw)
                                    else auth.ScramVerifier.from_password(pw))
        return self._admin_verifier

    # ------------------------------------------------------------------ auth_query (session.host.Registry)
    def auth_query_lookup(self, database: str, user: str,
                          done: Callable[[Pool | None, str], None]) -> tuple[Pool | None, str] | None:
        """A user of `database` not in its static users: its pool and stored password now ((None, ""):
        unknown or the lookup failed), or None when `done` will get them from an executor thread."""
        return self.auth_query.lookup(database, user, done)

    def auth_query_verdict(self, database: str, user: str, ok: bool) -> None:
        self.auth_query.verdict(database, user, ok)

    def auth_query_rows(self) -> list[tuple[str, dict[str, int]]]:
        return self.auth_query.rows()

    # ------------------------------------------------------------------ Talos (session.host.Registry)
    def talos_login(self, database: str, token: str) -> tuple[Pool, str, str]:
        """The pool a Talos token opens in `database`, its user (the role) and the client's application_name;
        talos.TalosRefused says why not."""
        grant = talos.verify(token, self.resources.talos_keys, database, self.config.talos.databases)
        pool = self.pools.get((database, grant.role))
        if pool is None or pool.dynamic:
            raise talos.TalosRefused(f"pool {database!r} has no user {grant.role!r} for the token's role")
        return pool, grant.role, grant.client_id

    def make_admin(self, client: ClientConn) -> Any:
        if self.admin_factory is None:
            raise RuntimeError("no admin console wired into this App (see pgdoorman/serve.py)")
        return self.admin_factory(client)

    # ------------------------------------------------------------------ control (observe.Control)
    def _pools_for(self, database: str | None) -> list[Pool]:
        pools = list(self.pool_list)
        if database is None:
            return pools
        found = [p for p in pools if p.database == database]
        if not found:
            raise UnknownDatabase(database)
        return found

    def pause(self, database: str | None, here: Worker) -> None:
        for p in self._pools_for(database):
            here.pause_pool(p, True)

    def resume(self, database: str | None, here: Worker) -> None:
        """Waiters of a resumed pool are handed servers starting from `here`, the caller's worker."""
        for p in self._pools_for(database):
            here.pause_pool(p, False)

    def reconnect(self, database: str | None) -> None:
        """New epoch: servers of the old one are closed when they come back; idle ones are closed now."""
        for pool in self._pools_for(database):
            with pool.lock:
                pool.epoch += 1
            self._close_idle(pool)
            listener.follow(pool)  # its LISTEN connection too, without a gap

    def reset_interner(self) -> int:
        """RESET INTERNER: every pool's cache forgets the statements only ever prepared unnamed (their texts
        go with the last client or server still holding them; the next Parse of each makes a new entry)."""
        return sum(pool.ps_cache.drop_anonymous() for pool in list(self.pool_list))

    def kill(self, database: str | None) -> None:
        """Drop every client and server of the database's pools, each on its own worker."""
        targets = frozenset(id(p) for p in self._pools_for(database))

        def post(gen: int) -> None:
            for w in self.workers:
                w.loop.call_soon_threadsafe(self._kill_in, w, targets, gen)

        self.transit.kill(targets, post)  # numbered, for the clients moving between workers meanwhile

    def _kill_in(self, w: Worker, targets: frozenset[int], gen: int) -> None:
        # Clients first, with PostgreSQL's own message for an administrator's kill; their servers then
        # close with them (or below) instead of telling the client that the server vanished.
        for c in list(w.clients):
            if c.admin is None and not c.closed and c.pool is not None and id(c.pool) in targets:
                kill_client(c)
        for s in list(w.servers):
            if not s.closed and id(s.pool) in targets:
                s.close("killed from the admin console")
        self.transit.ran(w.id, gen)

    def set_log_level(self, spec: str) -> str:
        return logs.set_filter(spec)

    # ------------------------------------------------------------------ client accounting
    def client_admitted(self) -> bool:
        with self.count_lock:
            if self.n_clients >= self.config.general.max_connections:
                self.total_accepted += 1
                self.listener_rejections["too_many_clients"] = self.listener_rejections.get("too_many_clients", 0) + 1
                self.connection_errors += 1
                return False
            self.n_clients += 1
            self.total_accepted += 1
            return True

    def count_rejection(self, reason: str) -> None:
        """A client refused before it authenticated (pg_doorman_listener_rejections_total{reason})."""
        with self.count_lock:
            self.listener_rejections[reason] = self.listener_rejections.get(reason, 0) + 1
            self.connection_errors += 1

    def server_login_failed(self, pool: Pool, error: bytes | None) -> None:
        """A server connection of `pool` failed before it was ready: counted by the SQLSTATE class of the
        ErrorResponse its waiter gets (pg_doorman_server_login_failures_total); 08 when there is none."""
        code = m.parse_fields(error[5:]).get("C", "") if error and error[:1] == b"E" else ""
        key = (pool.database, pool.username, code[:2] or "08")
        with self.count_lock:
            self.server_login_failures[key] = self.server_login_failures.get(key, 0) + 1

    def count_tls(self) -> None:
        with self.count_lock:
            self.tls_connections += 1

    def client_left(self) -> None:
        with self.count_lock:
            self.n_clients -= 1

    def cpu_for_worker(self, wid: int) -> set[int] | None:
        if not self.config.general.worker_cpu_affinity_pinning or not hasattr(os, "sched_getaffinity"):
            return None
        cpus = sorted(os.sched_getaffinity(0))
        return {cpus[wid % len(cpus)]}

    # ------------------------------------------------------------------ running
    def bind(self, tcp: Sequence[socket.socket] = (), unix: socket.socket | None = None) -> None:
        """Listen: one SO_REUSEPORT socket per worker, plus the Unix socket if configured. A new process of
        a binary upgrade keeps using the sockets of the old one (`tcp`, `unix`: same accept queues: nothing is
        refused or lost while both run); it binds fresh ones only for what it did not inherit (more workers,
        another address)."""
        g = self.config.general
        backlog = g.backlog or min(g.max_connections, 4096)
        n = len(self.workers)
        for i, w in enumerate(self.workers):
            w.add_listener(tcp[i] if i < len(tcp) else tcp_listener(g.host, g.port, backlog, reuse_port=True))
        for i, extra in enumerate(tcp[n:]):
            self.workers[i % n].add_listener(extra)
        if g.unix_socket_dir:
            path = os.path.join(g.unix_socket_dir, f".s.PGSQL.{g.port}")
            if unix is not None:
                sock = unix
            else:
                mode = int(str(g.unix_socket_mode), 8) if isinstance(g.unix_socket_mode, str) else g.unix_socket_mode
                sock, path = unix_listener(g.unix_socket_dir, g.port, mode, backlog)
            self.unix_path = path
            self.workers[0].add_listener(sock, is_unix=True)
        elif unix is not None:
            unix.close()
        log.info("pgdoorman %s listening on %s:%d with %d worker(s)%s%s%s", __version__, g.host, g.port,
                 self.nworkers, f", unix socket {self.unix_path}" if self.unix_path else "",
                 "" if gil_enabled() else " (free-threaded)", " (compiled with mypyc)" if compiled() else "")

    def start_workers(self) -> None:
        for j in self.janitors:
            w = j.worker
            w.loop.call_soon_threadsafe(j.start)
            th = threading.Thread(target=w.run, name=f"worker-{w.id}", daemon=True)
            w.loop.thread = th
            th.start()
        first = self.janitors[0]
        for pool in self.pool_list:
            if pool.min_pool_size:
                first.worker.loop.call_soon_threadsafe(first.ensure_min, pool)

    def install_signals(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self._request("reload"))
        signal.signal(signal.SIGTERM, lambda *_: self._request("shutdown"))
        signal.signal(signal.SIGUSR2, lambda *_: self._request("upgrade"))
        signal.signal(signal.SIGINT, lambda *_: self._request("shutdown" if self.sigint_shutdown else "upgrade"))

    def _request(self, what: str) -> None:
        if what == "reload":
            self._reload_requested = True
        elif what == "upgrade":
            self._upgrade_requested = True
        else:
            self._shutdown_requested = True
        self._wake.set()

    def request_shutdown(self) -> None:
        self._request("shutdown")

    def request_upgrade(self) -> bool:
        """Start a binary upgrade (the console's UPGRADE). False if this process already handed over to a
        new one. The work happens on the main thread; the outcome is in the log."""
        if self.handed_over or self._shutdown_requested:
            return False
        self._request("upgrade")
        return True

    def shutdown_pending(self) -> bool:
        return self._shutdown_requested

    def wait_wakeup(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def run(self) -> int:
        """Main thread: wait for signals and drive reload, upgrade and shutdown."""
        while True:
            self.wait_wakeup(0.5)
            now = time.monotonic()
            if now >= self._next_collect:
                self._next_collect = now + min(5.0, max(0.5, self.config.general.retain_connections_time / 1000.0))
                try:
                    self.auth_query.collect()
                except Exception:
                    log.exception("auth_query: collecting unused dynamic pools failed")
            if self._reload_requested:
                self._reload_requested = False
                self.signal_reload()
            if self._shutdown_requested:
                return self._graceful_shutdown()
            if self._upgrade_requested:
                self._upgrade_requested = False
                code = self._upgrade()
                if code is not None:
                    return code

    def _upgrade(self) -> int | None:
        """Binary upgrade; the exit code once clients are handed over, None if we keep serving."""
        if self.upgrader is None:
            log.warning("binary upgrade requested, but none is wired into this process: request ignored")
            return None
        code = self.upgrader()
        if code is None:
            self._upgrade_requested = False
        return code

    def start_metrics(self, retry: bool = False) -> None:
        """The /metrics listener if `web.enabled`. With `retry` (a new process of a binary upgrade, whose
        predecessor still holds the port for a moment), keep trying in the background."""
        if not self.config.web.enabled or self.metrics_factory is None:
            return
        start = self.metrics_factory
        try:
            self.metrics = start()
            return
        except OSError as e:
            if not retry:
                raise
            log.info("metrics port busy (%s): retrying while the old process lets go of it", e)

        def again() -> None:
            deadline = time.monotonic() + max(30.0, self.config.general.shutdown_timeout / 1000.0 + 10)
            while time.monotonic() < deadline and not self.shutting_down:
                time.sleep(0.1)
                try:
                    self.metrics = start()
                    return
                except OSError:
                    continue
            log.error("could not bind the metrics listener %s:%s", self.config.web.host, self.config.web.port)

        threading.Thread(target=again, name="metrics-bind", daemon=True).start()

    def _graceful_shutdown(self) -> int:
        timeout = self.config.general.shutdown_timeout / 1000.0
        log.info("shutting down: no new connections; waiting up to %.1fs for transactions to finish", timeout)
        systemd.stopping()
        self.shutting_down = True
        for w in self.workers:
            w.loop.call_soon_threadsafe(w.stop_accepting)
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for w in self.workers:
                w.loop.call_soon_threadsafe(self.janitors[w.id].close_idle_clients)
            time.sleep(0.1)
            if all(not w.clients for w in self.workers):
                break
        remaining = sum(len(w.clients) for w in self.workers)
        if remaining:
            log.warning("shutdown_timeout reached: closing %d client(s) still in a transaction", remaining)
        return self.stop_workers("pooler is shut down now", unlink_unix=False)

    def stop_workers(self, reason: str, unlink_unix: bool = True) -> int:
        """Close every client (58006 to those logged in) and server, stop the loops; the exit code."""
        self.shutting_down = True
        self.auth_query.stop()
        if unlink_unix and self.unix_path and not self.handed_over:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        done = threading.Event()
        left = [len(self.workers)]
        lk = threading.Lock()

        def close_and_stop(w: Worker) -> None:
            self.janitors[w.id].close_all(reason)
            w.loop.stop()
            with lk:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        for w in self.workers:
            w.loop.call_soon_threadsafe(close_and_stop, w)
        done.wait(5)
        log.info("pgdoorman stopped")
        return 0


__all__ = ["App", "socket"]
