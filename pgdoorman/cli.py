"""Command line: `pg_doorman [CONFIG]` runs the pooler, `-t` tests a config, `generate` writes one.

Options and environment variables follow PgDoorman (CONFIG_FILE, LOG_LEVEL, LOG_FORMAT).
"""

from __future__ import annotations

import argparse
import os
import sys

from pgdoorman import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pg_doorman",
        description="pgdoorman: a PostgreSQL connection pooler (PgDoorman-compatible)",
    )
    p.add_argument("config", nargs="?", default=os.environ.get("CONFIG_FILE", "pg_doorman.toml"),
                   help="configuration file (.yaml/.yml = YAML, anything else = TOML); env CONFIG_FILE")
    p.add_argument("-V", "--version", action="version", version=f"pg_doorman (pgdoorman) {__version__}")
    p.add_argument("-t", "--test-config", action="store_true", help="check the configuration and exit")
    p.add_argument("-l", "--log-level", default=os.environ.get("LOG_LEVEL", "info"),
                   choices=["error", "warn", "info", "debug", "trace"], help="log level; env LOG_LEVEL")
    p.add_argument("-F", "--log-format", default=os.environ.get("LOG_FORMAT", "text"),
                   choices=["text", "structured", "debug"],
                   help="text, or structured (one JSON object per line); env LOG_FORMAT")
    p.add_argument("-n", "--no-color", action="store_true", help="accepted for compatibility (no colours are used)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        from pgdoorman.generate import main as generate_main

        return generate_main(argv[1:])
    args = build_parser().parse_args(argv)

    from pgdoorman import logs
    from pgdoorman.config import ConfigError, load_config

    fmt = "text" if args.log_format == "debug" else args.log_format
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"pg_doorman: configuration is invalid:\n{e}", file=sys.stderr)
        return 1
    if args.test_config:
        for w in config.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"the configuration file {args.config} syntax is ok")
        print(f"configuration file {args.config} test is successful")
        return 0
    logs.setup(args.log_level, fmt, config.general.syslog_prog_name)
    import faulthandler
    import signal

    # `kill -QUIT <pid>` prints every thread's stack to stderr: the first thing to ask for when it hangs.
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    import logging

    for w in config.warnings:
        logging.getLogger("pgdoorman.config").warning("%s", w)
    from pgdoorman.app import serve

    return serve(config)


if __name__ == "__main__":
    raise SystemExit(main())
