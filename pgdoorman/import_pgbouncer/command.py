"""The `pg_doorman import-pgbouncer` command: reads the files, runs the translation section by section,
checks that the result loads and writes it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from pgdoorman.import_pgbouncer import auth, general, pools
from pgdoorman.import_pgbouncer.not_translated import NOT_TRANSLATED
from pgdoorman.import_pgbouncer.output import src_note
from pgdoorman.import_pgbouncer.reading import ImportFailed, UserEntry, read_ini, read_userlist
from pgdoorman.import_pgbouncer.render import render
from pgdoorman.import_pgbouncer.translator import Translator


def translate_settings(t: Translator) -> None:
    """Every section of the source into t's output; what has no counterpart becomes a trailing comment."""
    general.listen(t)
    general.admin(t)
    general.timeouts(t)
    general.tcp(t)
    general.log_settings(t)
    general.tls(t)
    general.prepared(t)
    auth.auth_rules(t)
    pools.databases(t)
    for s in t.ini.sections.get("pgbouncer", []):
        if s.key in t.used:
            continue
        reason = NOT_TRANSLATED.get(s.key)
        if not reason:
            reason = "not a setting pgdoorman has a counterpart for (or not a PgBouncer setting)"
        secret = "password" in s.key
        t.trailing.append(f"{src_note(s, secret)}: not translated: {reason}")
    for name, settings in t.ini.sections.items():
        if name in ("pgbouncer", "databases", "users"):
            continue
        for s in settings:
            why = ("no peering: pgdoorman is one process" if name == "peers"
                   else f"unknown section [{name}]")
            t.trailing.append(f"{src_note(s)}: not translated: {why}")


def translate(ini_path: str, userlist_path: str | None,
              fallback_databases: list[str] | None = None) -> tuple[str, list[str]]:
    """The YAML text and the files read (fallback_databases: the pools to make from a `*` entry)."""
    ini = read_ini(ini_path)
    sources = list(ini.files)
    userlist: list[UserEntry] | None = None
    used_path = userlist_path
    if userlist_path is None:
        auth_file = next((s for s in ini.sections.get("pgbouncer", []) if s.key == "auth_file"), None)
        if auth_file is not None and auth_file.value.strip():
            path = auth_file.value.strip()
            if not os.path.isabs(path) and not os.path.exists(path):
                path = os.path.join(os.path.dirname(os.path.abspath(auth_file.file)), path)
            if os.path.exists(path):
                used_path = path
    if used_path is not None:
        userlist = read_userlist(used_path)
        sources.append(used_path)
    t = Translator(ini, userlist, used_path, fallback_databases)
    auth_file = t.get("auth_file")
    if auth_file is not None:
        if userlist_path is not None:
            t.header.append(f"{src_note(auth_file)}: users read from --userlist {userlist_path} instead")
        elif used_path is not None:
            t.header.append(f"{src_note(auth_file)}: translated: its users are the users of every pool")
        else:
            t.header.append(f"{src_note(auth_file)}: not readable here: pass --userlist")
    translate_settings(t)
    return render(t, sources), sources


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pg_doorman import-pgbouncer",
        description="Translate a PgBouncer configuration (pgbouncer.ini and its userlist) into a pgdoorman "
                    "YAML config, with a comment on every setting: translated, approximated or not translated.",
    )
    p.add_argument("ini", help="pgbouncer.ini (%%include files are followed)")
    p.add_argument("--userlist", default=None,
                   help="PgBouncer's auth_file (default: the auth_file the ini names, if readable)")
    p.add_argument("--fallback-databases", default="", metavar="DB[,DB...]",
                   help="databases to make pools for from the `*` (fallback) database entry: PgBouncer serves "
                        "any database name through it, pgdoorman only listed pools")
    p.add_argument("-o", "--output", default=None, help="YAML file to write, mode 0600 (default stdout)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pgdoorman.generate import check_loads, write_output

    args = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    err = sys.stderr
    if args.output and args.output != "-" and not args.output.endswith((".yaml", ".yml")):
        print("pg_doorman import-pgbouncer: --output must end in .yaml or .yml (the loader picks the format "
              "from the name)", file=err)
        return 2
    try:
        fallback = [n.strip() for n in args.fallback_databases.split(",") if n.strip()]
        text, _ = translate(args.ini, args.userlist, fallback)
    except ImportFailed as e:
        print(f"pg_doorman import-pgbouncer: {e}", file=err)
        return 1
    from pgdoorman.config import ConfigError

    shown = args.output if args.output and args.output != "-" else "the output"
    problem = None
    warnings: list[str] = []
    try:
        warnings = check_loads(text, "yaml")
    except ConfigError as e:
        problem = re.sub(r"\S*/pg_doorman-generate-[^/\s]+/pg_doorman\.yaml", shown, str(e))
    for w in warnings:
        w = re.sub(r"\S*/pg_doorman-generate-[^/\s]+/pg_doorman\.yaml", shown, w)
        print(f"pg_doorman import-pgbouncer: warning: {w}", file=err)
    try:
        write_output(text, args.output)
    except OSError as e:
        print(f"pg_doorman import-pgbouncer: cannot write {args.output}: {e}", file=err)
        return 1
    if problem is not None:
        # Typically a TLS file the source names that does not exist on this machine: the translation is
        # written so it can be fixed, but the exit status says it does not pass -t here.
        print(f"pg_doorman import-pgbouncer: written, but it does not pass `pg_doorman -t` on this machine:\n"
              f"{problem}", file=err)
        return 1
    if args.output and args.output != "-":
        print(f"pg_doorman import-pgbouncer: wrote {args.output}", file=err)
    return 0
