"""The composition root: builds the App, wires the admin console, the /metrics listener and the JSON API
(pgdoorman.web) into it through the observation API (one Observer, one stats sampler), then binds,
starts the workers and runs the main loop. The only module that imports app, admin/, metrics/ and web/
together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgdoorman import systemd
from pgdoorman.admin.console import AdminSession
from pgdoorman.app import App
from pgdoorman.core import fallback
from pgdoorman.core.cancel import fake_pid
from pgdoorman.metrics.process import refresh_socket_counts
from pgdoorman.metrics.server import MetricsServer, start_metrics_server
from pgdoorman.observe import Observer
from pgdoorman.observe.events import EventJournal, RecordingControl
from pgdoorman.upgrade.handoff import run_upgrade
from pgdoorman.upgrade.inherit import Inherited, inherited_listeners, sigint_means_shutdown
from pgdoorman.upgrade.receive import child_ready
from pgdoorman.web import logtap
from pgdoorman.web.api import WebApi

if TYPE_CHECKING:
    from pgdoorman.config import Config
    from pgdoorman.daemon import Daemon
    from pgdoorman.resources import Resources
    from pgdoorman.session.client import ClientConn

log = logging.getLogger("pgdoorman")


def wire(app: App, events: EventJournal | None = None) -> Observer:
    """Plug the admin console and the metrics listener into `app`; the Observer they share. The console's
    and the web API's commands are recorded in `events` (the web console's /api/events)."""
    obs = Observer(app, sampler_extra=refresh_socket_counts)
    journal = events if events is not None else EventJournal()

    def make_admin(client: ClientConn) -> Any:
        return AdminSession(obs, RecordingControl(app, journal, f"admin console {client.addr} ({client.user})"),
                            client)

    def run_on_worker(fn: Callable[[Any], None]) -> None:
        """Run `fn(worker)` on the first worker's loop, as the console runs commands on its client's
        worker (Control.pause/resume hand work out from there); re-raise what it raised."""
        w = app.workers[0]
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                fn(w)
            except BaseException as e:  # noqa: BLE001 (handed to the waiting web thread)
                failure.append(e)
            finally:
                done.set()

        w.loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise TimeoutError("worker did not run the command")
        if failure:
            raise failure[0]

    # The log tap of /api/logs: records kept only while web.ui is on (both may change on RELOAD).
    tap = logtap.install(lambda: app.config.web.log_tap_max_entries if app.config.web.ui else 0)
    api = WebApi(obs, app, run_on_worker, started=lambda: app.started, logtap=tap, events=journal)

    def start_metrics() -> MetricsServer:
        return start_metrics_server(obs, routes=api)

    app.signal_reload = RecordingControl(app, journal, "SIGHUP").reload
    app.admin_factory = make_admin
    app.metrics_factory = start_metrics
    return obs


def serve(config: Config, daemon: Daemon | None = None, inherited: Inherited | None = None,
          resources: Resources | None = None) -> int:
    """Run the pooler for `config`; `resources` are the objects built from it (pgdoorman.resources)."""
    app = App(config, resources)
    events = EventJournal()
    wire(app, events)
    app.sigint_shutdown = sigint_means_shutdown()

    def upgrade() -> int | None:
        events.record("upgrade", source="binary upgrade", detail="started")
        code = run_upgrade(app)
        events.record("upgrade", source="binary upgrade", ok=code is not None,
                      detail="handed over to the new process" if code is not None else "failed: still serving")
        return code

    app.upgrader = upgrade
    # Patroni-assisted fallbacks (core/fallback.py): the local server lost, a fallback host taken, it is back.
    fallback.add_listener(lambda kind, target, ok, detail: events.record(kind, target, "Patroni-assisted fallback",
                                                                        ok, detail))
    if inherited is not None and inherited.cancel_pid_base is not None:
        app.cancels.next_pid = fake_pid(inherited.cancel_pid_base)
    g = config.general
    try:
        tcp, unix = inherited_listeners(inherited, g.host, g.port, g.unix_socket_dir)
        app.bind(tcp, unix)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", g.host, g.port, e)
        if daemon is not None:
            daemon.failed(f"cannot listen on {g.host}:{g.port}: {e}")
        return 1
    app.install_signals()
    app.start_workers()
    try:
        app.start_metrics(retry=inherited is not None and inherited.is_upgrade)
    except OSError as e:
        log.error("cannot listen for metrics on %s:%s: %s", config.web.host, config.web.port, e)
        if daemon is not None:
            daemon.failed(f"cannot listen for metrics on {config.web.host}:{config.web.port}: {e}")
        app.stop_workers("startup failed")
        return 1
    events.record("start", source="binary upgrade" if inherited is not None and inherited.is_upgrade else "",
                  detail=f"listening on {g.host}:{g.port}")
    if inherited is not None and inherited.is_upgrade:
        child_ready(app, inherited)  # the old process tells systemd our pid
    else:
        systemd.ready(f"serving on {config.general.host}:{config.general.port}")
    if daemon is not None:
        daemon.ready()
    return app.run()
