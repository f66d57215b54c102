"""Client access rules: `general.pg_hba` (pg_hba.conf-style rules) and the legacy `general.hba` CIDR list.

pg_hba follows PgDoorman's reading of the rules, which differs from PostgreSQL's in one way: a rule is
read *for one authentication method*. For the method the stored password allows (SCRAM for a SCRAM verifier
or plain text, md5 for an md5 hash) the rules are walked in order and the first one that matches the
connection and is `trust`, `reject` or that method decides; a matching rule of the other password method is
skipped, not a decision. A user with a plain-text password may also be let in by an `md5` rule when no rule
decides for SCRAM (we can check an md5 answer against a plain password).

Rule: `TYPE DATABASE USER [ADDRESS] METHOD [options]`: TYPE `local` (Unix socket), `host` (TCP),
`hostssl` (TCP with TLS), `hostnossl` (TCP without); DATABASE and USER `all` or one exact name; ADDRESS
(not for `local`) `all`, an IP address or a CIDR block, IPv4 or IPv6; METHOD `trust`, `reject`, `md5`,
`scram-sha-256` (also spelled `scram_sha_256`, `scramsha256`). Options after the method are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

TYPES = ("local", "host", "hostssl", "hostnossl")
METHODS = {"trust": "trust", "reject": "reject", "md5": "md5", "scram-sha-256": "scram",
           "scram_sha_256": "scram", "scramsha256": "scram"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HbaError(ValueError):
    """A rule that cannot be read: `line` is its 1-based line number in the rules text."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Rule:
    line: int
    type: str
    database: str  # "all" or a name
    user: str
    network: Network | None  # None: any address (also for local)
    method: str  # trust, reject, md5, scram

    def matches(self, is_unix: bool, tls: bool, ip: str | None, database: str, user: str) -> bool:
        if self.type == "local":
            if not is_unix:
                return False
        elif is_unix or (self.type == "hostssl" and not tls) or (self.type == "hostnossl" and tls):
            return False
        if self.database != "all" and self.database != database:
            return False
        if self.user != "all" and self.user != user:
            return False
        if self.network is not None:
            try:
                addr = ipaddress.ip_address(ip or "")
            except ValueError:
                return False
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None \
                    and isinstance(self.network, ipaddress.IPv4Network):
                addr = addr.ipv4_mapped
            if addr.version != self.network.version or addr not in self.network:
                return False
        return True


def _unquote(field: str) -> str:
    return field[1:-1] if len(field) >= 2 and field[0] == field[-1] == '"' else field


def parse_rules(text: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        rtype = fields[0].lower()
        if rtype not in TYPES:
            raise HbaError(n, f"unknown connection type {fields[0]!r} (expected {', '.join(TYPES)})")
        need = 4 if rtype == "local" else 5
        if len(fields) < need:
            what = "TYPE DATABASE USER METHOD" if rtype == "local" else "TYPE DATABASE USER ADDRESS METHOD"
            raise HbaError(n, f"expected {what}, got {line!r}")
        database, user = _unquote(fields[1]), _unquote(fields[2])
        for label, value in (("database", database), ("user", user)):
            if "," in value or value.startswith(("+", "@", "/")) or value in ("sameuser", "samerole", "replication"):
                raise HbaError(n, f"{label} {value!r}: only 'all' or a single name is supported")
        network: Network | None = None
        if rtype != "local":
            address = fields[3]
            if address.lower() != "all":
                try:
                    network = ipaddress.ip_network(address, strict=False)
                except ValueError:
                    raise HbaError(n, f"address {address!r}: expected all, an IP address or a CIDR block") from None
        method_field = fields[need - 1]
        method = METHODS.get(method_field.lower())
        if method is None:
            raise HbaError(n, f"method {method_field!r}: supported are trust, reject, md5, scram-sha-256")
        rules.append(Rule(n, rtype, database, user, network, method))
    return tuple(rules)


def read_rules(content: str | None, path: str | None) -> tuple[Rule, ...]:
    """Rules from inline text or a file (OSError and HbaError propagate)."""
    if path is not None:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    return parse_rules(content or "")


def _decide(rules: Iterable[Rule], method: str, is_unix: bool, tls: bool, ip: str | None, database: str,
            user: str) -> tuple[str, Rule | None]:
    """("trust" | "reject" | "allow" | "none", deciding rule) for one password method."""
    for r in rules:
        if not r.matches(is_unix, tls, ip, database, user):
            continue
        if r.method == "trust":
            return "trust", r
        if r.method == "reject":
            return "reject", r
        if r.method == method:
            return "allow", r
    return "none", None


def choose(rules: tuple[Rule, ...], stored_kind: str, is_unix: bool, tls: bool, ip: str | None, database: str,
           user: str) -> str:
    """How this connection authenticates: "scram", "md5", "trust", or "reject" (an explicit reject rule) /
    "none" (no rule lets it in). `stored_kind` is "scram", "md5" or "plain" (the configured password)."""
    first = "md5" if stored_kind == "md5" else "scram"
    verdict, _ = _decide(rules, first, is_unix, tls, ip, database, user)
    if verdict == "allow":
        return first
    if verdict in ("trust", "reject"):
        return verdict
    if first == "scram":
        # No rule decided for SCRAM: an md5 rule may still let a plain-text password in, and trust is trust.
        verdict, _ = _decide(rules, "md5", is_unix, tls, ip, database, user)
        if verdict == "trust":
            return "trust"
        if verdict == "allow" and stored_kind == "plain":
            return "md5"
        if verdict == "reject":
            return "reject"
    return "none"


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """The legacy `hba` list; ValueError names the bad entry."""
    out: list[Network] = []
    for e in entries:
        try:
            out.append(ipaddress.ip_network(e.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{e!r} is not an IP address or CIDR block") from None
    return tuple(out)


def allowed_by_networks(networks: tuple[Network, ...], ip: str | None) -> bool:
    """Legacy `hba`: an empty list allows everyone; otherwise the TCP client's address must be in one."""
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(ip or "")
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in networks)
