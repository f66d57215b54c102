"""The `patroni_proxy [CONFIG]` command: `-t` checks the configuration, otherwise run the proxy in the
foreground until SIGINT/SIGTERM; SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from pgdoorman import __version__
from pgdoorman.cli import add_common_options, load_checked

log = logging.getLogger("pgdoorman.patroni_proxy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patroni_proxy",
        description="TCP proxy routing to Patroni cluster members by role (PgDoorman's patroni_proxy)",
    )
    p.add_argument("config", nargs="?", default="patroni_proxy.yaml",
                   help="configuration file (YAML; default patroni_proxy.yaml)")
    add_common_options(p, "patroni_proxy", ["text", "structured"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)

    from pgdoorman import logs
    from pgdoorman.patroni_proxy.config import ConfigError, load

    path = os.path.abspath(args.config)  # SIGHUP re-reads it whatever the cwd becomes
    config = load_checked("patroni_proxy", load, ConfigError, path, args.config, args.test_config)
    if isinstance(config, int):
        return config

    logs.setup(args.log_level, args.log_format)
    for w in config.warnings:
        log.warning("%s", w)

    from pgdoorman.patroni_proxy.proxy import Proxy

    proxy = Proxy(config)
    log.info("starting patroni_proxy %s with config %s", __version__, path)
    try:
        proxy.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        print(f"patroni_proxy: cannot start: {e}", file=sys.stderr)
        proxy.loop.close()
        return 1

    loop = proxy.loop

    # Handlers only queue work: the loop owns every socket and all proxy state.
    def on_hup(signum: int, frame: FrameType | None) -> None:
        log.info("received SIGHUP, reloading the configuration")
        loop.call_soon_threadsafe(proxy.reload)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        loop.call_soon_threadsafe(proxy.shutdown)

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    log.info("patroni_proxy is running; SIGHUP reloads the configuration, SIGINT/SIGTERM stop it")
    try:
        loop.run()
    finally:
        proxy.stop_all("shutdown")
        loop.close()
    log.info("stopped")
    return 0
