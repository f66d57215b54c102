"""Client authentication: auth_type (and auth_hba_file, translated rule by rule) -> pg_hba, or the comment
saying why pgdoorman's default password exchange matches PgBouncer's.
"""

from __future__ import annotations

import ipaddress
import os

from pgdoorman.import_pgbouncer.output import Line, src_note
from pgdoorman.import_pgbouncer.reading import ImportFailed, Setting
from pgdoorman.import_pgbouncer.translator import Translator
from pgdoorman.import_pgbouncer.values import is_mask


def auth_rules(t: Translator) -> None:
    s = t.get("auth_type")
    kind = s.value.strip().lower() if s is not None else "md5"
    where = src_note(s) if s is not None else "auth_type not set (PgBouncer's default md5)"
    t.auth_kind = kind
    hba_file = t.get("auth_hba_file")
    if kind in ("md5", "plain"):
        extra = "" if kind == "md5" else "; plain (clear-text password exchange) is approximated by md5/SCRAM"
        t.general.append(Line(None, None, [
            f"{where}: translated: with no pg_hba rules pgdoorman asks each client for the kind of secret "
            "stored for it (md5 hash: md5, SCRAM verifier or plain text: SCRAM), as PgBouncer's md5 "
            "does for md5 hashes and SCRAM verifiers" + extra]))
    elif kind == "scram-sha-256":
        t.gen("pg_hba", "local all all scram-sha-256\nhost all all 0.0.0.0/0 scram-sha-256\n"
              "host all all ::/0 scram-sha-256\n", f"{where}: translated: SCRAM for every client", block=True)
    elif kind in ("trust", "any"):
        note = f"{where}: translated: every client is let in without a password"
        if kind == "any":
            note = (f"{where}: approximated: like trust; PgBouncer's `any` also ignored the user name, "
                    "pgdoorman lets in only users listed in the pool")
        t.gen("pg_hba", "local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n",
              note, block=True)
    elif kind == "hba":
        if hba_file is None or not hba_file.value.strip():
            raise ImportFailed(f"{s.file}:{s.line}: auth_type = hba needs auth_hba_file" if s else "hba")
        _hba_file(t, hba_file, where)
        return
    elif kind in ("cert", "pam", "ldap"):
        reason = {"cert": "pgdoorman has no certificate login (tls_mode verify-full checks client "
                          "certificates but still asks for a password)",
                  "pam": "pgdoorman's PAM is per user (users[].auth_pam_service) and needs "
                         "server_username/server_password: set those by hand",
                  "ldap": "pgdoorman has no LDAP login"}[kind]
        t.general.append(Line(None, None, [
            f"{where}: not translated: {reason}; clients log in with md5/SCRAM against the stored secrets"]))
    else:
        raise ImportFailed(f"{s.file}:{s.line}: auth_type: unknown method {kind!r}" if s else kind)
    if hba_file is not None:
        t.general.append(Line(None, None, [f"{src_note(hba_file)}: not translated: only used with auth_type = hba"]))


def _hba_file(t: Translator, s: Setting, where: str) -> None:
    path = s.value.strip()
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(os.path.dirname(os.path.abspath(s.file)), path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ImportFailed(f"{s.file}:{s.line}: auth_hba_file {s.value.strip()}: {e}") from None
    kept: list[str] = []
    notes = [f"{where} with {src_note(s)}: translated rule by rule into pg_hba (inline); each md5 rule becomes a "
             "scram-sha-256 + md5 pair, as PgBouncer's md5 runs SCRAM for SCRAM secrets and pgdoorman reads "
             "the rules per password method (docs/pg_hba.md)"]
    methods = {"trust": "trust", "reject": "reject", "md5": "md5", "scram-sha-256": "scram-sha-256",
               "password": "md5"}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        tag = f"{os.path.basename(path)}:{n}"
        if words[0] not in ("local", "host", "hostssl", "hostnossl"):
            notes.append(f"{tag} {line!r}: not translated: unknown connection type {words[0]!r}")
            continue
        mi = 3 if words[0] == "local" else 4
        if len(words) <= mi:
            raise ImportFailed(f"{path}:{n}: too few fields in {line!r}")
        if words[0] != "local" and "/" not in words[3] and len(words) > 5 and is_mask(words[4]):
            # PostgreSQL's address + netmask form: written as CIDR.
            prefix = ipaddress.ip_network(f"0.0.0.0/{words[4]}" if "." in words[4] else f"::/{words[4]}").prefixlen
            words = [*words[:3], f"{words[3]}/{prefix}", *words[5:]]
        if words[0] != "local" and words[3] in ("samehost", "samenet"):
            notes.append(f"{tag} {line!r}: not translated: {words[3]} is not supported; write the network out")
            continue
        method = words[mi]
        if any("@" in w for w in words[1:3]):
            notes.append(f"{tag} {line!r}: not translated: @file lists are not supported; write the names out")
            continue
        if method not in methods:
            notes.append(f"{tag} {line!r}: not translated: method {method} is not supported by pgdoorman "
                         "(trust, reject, md5, scram-sha-256); a client matching no rule is refused")
            continue
        rest = words[mi + 1:]
        if rest:
            notes.append(f"{tag}: options {' '.join(rest)} dropped")
        if method == "password":
            notes.append(f"{tag}: approximated: method password becomes md5")
        if methods[method] == "md5":
            # PgBouncer's md5 runs SCRAM for users whose secret is a SCRAM verifier; pgdoorman reads the
            # rules per password method (docs/pg_hba.md), so the pair keeps both kinds of user in here.
            kept.append(" ".join(words[:mi] + ["scram-sha-256"]))
        kept.append(" ".join(words[:mi] + [methods[method]]))
    if not kept:
        kept.append("host all all 0.0.0.0/0 reject")
        notes.append("no rule could be translated: everything is refused until you write pg_hba rules")
    t.gen("pg_hba", "\n".join(kept) + "\n", *notes, block=True)
