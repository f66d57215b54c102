"""Command line: `pg_doorman [CONFIG]` runs the pooler (`-d` as a daemon), `-t` tests a config, `generate`
writes one, `import-pgbouncer` translates a PgBouncer configuration.

Options and environment variables follow PgDoorman (CONFIG_FILE, LOG_LEVEL, LOG_FORMAT, DAEMON).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from pgdoorman import __version__


class _Checked(Protocol):
    @property
    def warnings(self) -> Sequence[str]: ...


C = TypeVar("C", bound=_Checked)


def load_checked(prog: str, load: Callable[[str], C], errors: type[Exception], path: str, shown: str,
                 test_only: bool) -> C | int:
    """Load a configuration file the way pg_doorman and patroni_proxy both do: an invalid one prints why and
    gives exit status 1; with -t a valid one prints its warnings and PgDoorman's two success lines and gives
    0; otherwise the loaded configuration."""
    try:
        config = load(path)
    except errors as e:
        print(f"{prog}: configuration is invalid:\n{e}", file=sys.stderr)
        return 1
    if test_only:
        for w in config.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for n in getattr(config, "notes", ()):
            print(f"info: {n}", file=sys.stderr)
        print(f"the configuration file {shown} syntax is ok")
        print(f"configuration file {shown} test is successful")
        return 0
    return config


def add_common_options(p: argparse.ArgumentParser, prog: str, log_formats: list[str]) -> None:
    """-V, -t, -l and -F, as pg_doorman and patroni_proxy both take them."""
    p.add_argument("-V", "--version", action="version", version=f"{prog} (pgdoorman) {__version__}")
    p.add_argument("-t", "--test-config", action="store_true", help="check the configuration and exit")
    p.add_argument("-l", "--log-level", default=os.environ.get("LOG_LEVEL", "info"),
                   choices=["error", "warn", "info", "debug", "trace"], help="log level; env LOG_LEVEL")
    p.add_argument("-F", "--log-format", default=os.environ.get("LOG_FORMAT", "text"), choices=log_formats,
                   help="text, or structured (one JSON object per line)"
                        + ("; debug is accepted as text (PgDoorman's name)" if "debug" in log_formats else "")
                        + "; env LOG_FORMAT")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pg_doorman",
        description="pgdoorman: a PostgreSQL connection pooler (PgDoorman-compatible)",
    )
    p.add_argument("config", nargs="?", default=os.environ.get("CONFIG_FILE", "pg_doorman.toml"),
                   help="configuration file (.yaml/.yml = YAML, anything else = TOML); env CONFIG_FILE")
    add_common_options(p, "pg_doorman", ["text", "structured", "debug"])
    p.add_argument("-n", "--no-color", action="store_true", help="accepted for compatibility (no colours are used)")
    p.add_argument("-d", "--daemon", action="store_true",
                   default=os.environ.get("DAEMON", "").lower() in ("1", "true", "yes", "on"),
                   help="run in the background (pid file: general.daemon_pid_file); env DAEMON")
    return p


def _is_file(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    from pgdoorman.upgrade import inherit

    inherit.remember_start_dir()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        from pgdoorman.generate import main as generate_main

        return generate_main(argv[1:])
    if argv and argv[0] == "import-pgbouncer":
        from pgdoorman.import_pgbouncer import main as import_main

        return import_main(argv[1:])
    args = build_parser().parse_args(argv)

    from pgdoorman import logs, resources
    from pgdoorman.config import ConfigError

    fmt = "text" if args.log_format == "debug" else args.log_format
    # The config and the objects it names (TLS, pg_hba, JWT keys, PAM), built once: -t reports what start-up
    # would. Absolute: a daemon runs from "/" and RELOAD must still find the file.
    loaded = load_checked("pg_doorman", resources.load, ConfigError, os.path.abspath(args.config), args.config,
                          args.test_config)
    if isinstance(loaded, int):
        return loaded
    config = loaded.config
    inherited = inherit.take_inherited()
    daemon = None
    if args.daemon:
        from pgdoorman.daemon import DaemonError, daemonize

        if os.environ.get("NOTIFY_SOCKET"):
            print("pg_doorman: warning: -d under systemd (NOTIFY_SOCKET is set): use Type=notify without -d",
                  file=sys.stderr)
        if not config.general.syslog_prog_name and not _is_file(2):
            print("pg_doorman: note: as a daemon, the log goes to /dev/null unless stderr is a file or "
                  "general.syslog_prog_name is set", file=sys.stderr)
        try:
            # An upgrade's new process takes over from the running one: its pid file is expected.
            daemon = daemonize(config.general.daemon_pid_file, check_running=not inherited.is_upgrade)
        except (DaemonError, OSError) as e:
            print(f"pg_doorman: {e}", file=sys.stderr)
            return 1
    logs.setup(args.log_level, fmt, config.general.syslog_prog_name)
    import faulthandler
    import signal

    # `kill -QUIT <pid>` prints every thread's stack to stderr: the first thing to ask for when it hangs.
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    import logging

    for w in config.warnings:
        logging.getLogger("pgdoorman.config").warning("%s", w)
    from pgdoorman.serve import serve

    try:
        return serve(config, daemon=daemon, inherited=inherited, resources=loaded.resources)
    finally:
        if daemon is not None:
            daemon.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
