"""patroni_proxy's YAML configuration: load, validate (every problem reported as FILE: KEY: why), and the
frozen dataclasses the proxy runs on. The schema is PgDoorman's `patroni_proxy.yaml`; keys PgDoorman does
not know are pgdoorman extensions, and unknown keys are warnings (PgDoorman ignores them silently).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

ROLES = ("leader", "sync", "async", "any")

DEFAULT_UPDATE_INTERVAL = 3.0  # seconds, PgDoorman's default
DEFAULT_API_LISTEN = "127.0.0.1:8009"
DEFAULT_PATRONI_API_TIMEOUT = 5.0  # PgDoorman's fixed HTTP timeout for GET /cluster
DEFAULT_CONNECT_TIMEOUT = 10.0  # extension: PgDoorman waits for the OS (minutes for a black-holed host)

TOP_KEYS = ("cluster_update_interval", "listen_address", "clusters", "patroni_api_timeout", "connect_timeout")
CLUSTER_KEYS = ("hosts", "tls", "ports")
TLS_KEYS = ("ca_cert", "client_cert", "client_key", "skip_verify")
PORT_KEYS = ("listen", "roles", "host_port", "max_lag_in_bytes")


class ConfigError(Exception):
    """The configuration is unusable. `errors` holds one line per problem, each `FILE: KEY: why`."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


Addr = tuple[str, int]


def format_addr(addr: Addr) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class TlsConfig:
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    skip_verify: bool = False

    def context(self) -> ssl.SSLContext:
        """An SSL context for https Patroni URLs; raises OSError/ssl.SSLError on unreadable files."""
        ctx = ssl.create_default_context(cafile=self.ca_cert)
        if self.skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@dataclass(frozen=True)
class PortConfig:
    name: str
    listen: Addr
    roles: frozenset[str]
    host_port: int
    max_lag_in_bytes: int | None = None


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    hosts: tuple[str, ...]
    ports: dict[str, PortConfig]
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class ProxyConfig:
    path: str
    clusters: dict[str, ClusterConfig]
    cluster_update_interval: float = DEFAULT_UPDATE_INTERVAL
    listen_address: Addr = ("127.0.0.1", 8009)
    patroni_api_timeout: float = DEFAULT_PATRONI_API_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    warnings: tuple[str, ...] = field(default=(), compare=False)


def parse_addr(value: str) -> Addr:
    """`IP:PORT` or `[IPv6]:PORT` (an address, not a host name, as PgDoorman's SocketAddr parsing wants).
    Raises ValueError saying why."""
    if value.startswith("["):
        host, sep, port_s = value[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [ADDR]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise ValueError("expected IP:PORT")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address (IPv6 goes in brackets; host names are not "
                             "accepted)") from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"port {port_s!r} is not a number in 1-65535")
    return host, int(port_s)


class _Checker:
    """Collects problems as `FILE: KEY: why` while the document is walked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, key: str, why: str) -> None:
        self.errors.append(f"{self.path}: {key}: {why}" if key else f"{self.path}: {why}")

    def warn(self, key: str, why: str) -> None:
        self.warnings.append(f"{self.path}: {key}: {why}")

    def unknown_keys(self, mapping: dict[Any, Any], known: tuple[str, ...], prefix: str) -> None:
        for k in mapping:
            if str(k) not in known:
                where = f"{prefix}.{k}" if prefix else str(k)
                self.warn(where, f"unknown key, ignored (known here: {', '.join(known)})")

    def seconds(self, doc: dict[str, Any], key: str, default: float) -> float:
        value = doc.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"must be a number of seconds, not {value!r}")
            return default
        if value <= 0:
            self.error(key, f"must be greater than 0 seconds, not {value!r}")
            return default
        return float(value)


def _tls(c: _Checker, value: Any, key: str) -> TlsConfig | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        c.error(key, "must be a mapping with ca_cert, client_cert, client_key, skip_verify")
        return None
    c.unknown_keys(value, TLS_KEYS, key)
    errors_before = len(c.errors)
    files: dict[str, str | None] = {}
    for name in ("ca_cert", "client_cert", "client_key"):
        v = value.get(name)
        if v is None:
            files[name] = None
        elif not isinstance(v, str) or not v:
            c.error(f"{key}.{name}", f"must be a file path, not {v!r}")
            files[name] = None
        elif not os.access(v, os.R_OK):
            c.error(f"{key}.{name}", f"cannot read {v!r}")
            files[name] = None
        else:
            files[name] = v
    skip = value.get("skip_verify", False)
    if skip is None:
        skip = False
    if not isinstance(skip, bool):
        c.error(f"{key}.skip_verify", f"must be true or false, not {skip!r}")
        skip = False
    if value.get("client_key") is not None and value.get("client_cert") is None:
        c.error(f"{key}.client_key", "needs client_cert as well")
    tls = TlsConfig(files["ca_cert"], files["client_cert"], files["client_key"], skip)
    if len(c.errors) == errors_before:
        try:
            tls.context()
        except (OSError, ssl.SSLError) as e:
            c.error(key, f"cannot build a TLS context: {e}")
    return tls


def _hosts(c: _Checker, value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        c.error(key, "required: the Patroni REST API URLs of the cluster's members")
        return ()
    if not isinstance(value, list):
        c.error(key, f"must be a list of http(s) URLs, not {value!r}")
        return ()
    if not value:
        c.error(key, "is empty: list at least one Patroni REST API URL")
        return ()
    seen: dict[str, int] = {}
    out: list[str] = []
    for i, url in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(url, str):
            c.error(where, f"must be a URL string, not {url!r}")
            continue
        if not url.lower().startswith(("http://", "https://")):
            c.error(where, f"{url!r}: only http:// and https:// URLs are allowed")
            continue
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises on a bad port
        except ValueError as e:
            c.error(where, f"{url!r} is not a valid URL: {e}")
            continue
        if not parts.hostname:
            c.error(where, f"{url!r} has no host")
            continue
        norm = url.lower().rstrip("/")
        if norm in seen:
            c.error(where, f"duplicate host {url!r} (also {key}[{seen[norm]}])")
            continue
        seen[norm] = i
        out.append(url)
    return tuple(out)


def _port(c: _Checker, name: str, value: Any, key: str) -> PortConfig | None:
    if not isinstance(value, dict):
        c.error(key, "must be a mapping with listen, roles, host_port (and optionally max_lag_in_bytes)")
        return None
    c.unknown_keys(value, PORT_KEYS, key)
    ok = True
    listen: Addr = ("", 0)
    lv = value.get("listen")
    if lv is None:
        c.error(f"{key}.listen", "required: the address to accept clients on, IP:PORT")
        ok = False
    elif not isinstance(lv, str):
        c.error(f"{key}.listen", f"must be an IP:PORT string, not {lv!r}")
        ok = False
    else:
        try:
            listen = parse_addr(lv)
        except ValueError as e:
            c.error(f"{key}.listen", f"invalid listen address {lv!r}: {e}")
            ok = False
    roles: set[str] = set()
    rv = value.get("roles")
    if rv is None:
        c.error(f"{key}.roles", f"required: a list of {', '.join(ROLES)}")
        ok = False
    elif not isinstance(rv, list):
        c.error(f"{key}.roles", f"must be a list of {', '.join(ROLES)}, not {rv!r}")
        ok = False
    elif not rv:
        c.error(f"{key}.roles", f"is empty: list one or more of {', '.join(ROLES)}")
        ok = False
    else:
        for i, role in enumerate(rv):
            if not isinstance(role, str) or role.lower() not in ROLES:
                c.error(f"{key}.roles[{i}]", f"invalid role {role!r}; allowed: {', '.join(ROLES)}")
                ok = False
            else:
                roles.add(role.lower())
    hp = value.get("host_port")
    if hp is None:
        c.error(f"{key}.host_port", "required: the port to connect to on the chosen member's host")
        ok = False
    elif isinstance(hp, bool) or not isinstance(hp, int) or not 1 <= hp <= 65535:
        c.error(f"{key}.host_port", f"must be a port number 1-65535, not {hp!r}")
        ok = False
    lag = value.get("max_lag_in_bytes")
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int) or lag < 0):
        c.error(f"{key}.max_lag_in_bytes", f"must be a number of bytes >= 0, not {lag!r}")
        ok = False
    if not ok or not isinstance(hp, int):
        return None
    return PortConfig(name, listen, frozenset(roles), hp, lag)


def _cluster(c: _Checker, name: str, value: Any, key: str) -> ClusterConfig | None:
    if not isinstance(value, dict):
        c.error(key, "must be a mapping with hosts and ports")
        return None
    c.unknown_keys(value, CLUSTER_KEYS, key)
    hosts = _hosts(c, value.get("hosts"), f"{key}.hosts")
    tls = _tls(c, value.get("tls"), f"{key}.tls")
    ports: dict[str, PortConfig] = {}
    pv = value.get("ports")
    if pv is None:
        c.error(f"{key}.ports", "required: at least one port (listen, roles, host_port)")
    elif not isinstance(pv, dict):
        c.error(f"{key}.ports", f"must be a mapping of port names to port settings, not {pv!r}")
    elif not pv:
        c.error(f"{key}.ports", "is empty: define at least one port")
    else:
        for pname, pval in pv.items():
            port = _port(c, str(pname), pval, f"{key}.ports.{pname}")
            if port is not None:
                ports[str(pname)] = port
    return ClusterConfig(name, hosts, ports, tls)


def validate(doc: Any, path: str) -> ProxyConfig:
    """A ProxyConfig from a parsed YAML document; raises ConfigError listing every problem found."""
    c = _Checker(path)
    if doc is None:
        raise ConfigError([f"{path}: the file is empty: expected a mapping with `clusters`"])
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}: the top level must be a mapping, not {type(doc).__name__}"])
    c.unknown_keys(doc, TOP_KEYS, "")
    interval = c.seconds(doc, "cluster_update_interval", DEFAULT_UPDATE_INTERVAL)
    api_timeout = c.seconds(doc, "patroni_api_timeout", DEFAULT_PATRONI_API_TIMEOUT)
    connect_timeout = c.seconds(doc, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    api: Addr = ("127.0.0.1", 8009)
    la = doc.get("listen_address", DEFAULT_API_LISTEN)
    if not isinstance(la, str):
        c.error("listen_address", f"must be an IP:PORT string, not {la!r}")
    else:
        try:
            api = parse_addr(la)
        except ValueError as e:
            c.error("listen_address", f"invalid address {la!r}: {e}")
    clusters: dict[str, ClusterConfig] = {}
    cv = doc.get("clusters")
    if cv is None:
        c.error("clusters", "required: a mapping of cluster names to hosts and ports")
    elif not isinstance(cv, dict):
        c.error("clusters", f"must be a mapping of cluster names, not {cv!r}")
    else:
        if not cv:
            c.warn("clusters", "no clusters: nothing will be proxied")
        for cname, cval in cv.items():
            cluster = _cluster(c, str(cname), cval, f"clusters.{cname}")
            if cluster is not None:
                clusters[str(cname)] = cluster
    # Every listening address is bound by this process: two owners of one address cannot both bind it.
    owners: dict[Addr, str] = {api: "listen_address"}
    for cluster in clusters.values():
        for port in cluster.ports.values():
            where = f"clusters.{cluster.name}.ports.{port.name}.listen"
            if port.listen in owners:
                c.error(where, f"duplicate listen address {format_addr(port.listen)} "
                               f"(also {owners[port.listen]})")
            else:
                owners[port.listen] = where
    if c.errors:
        raise ConfigError(c.errors)
    return ProxyConfig(
        path=path,
        clusters=clusters,
        cluster_update_interval=interval,
        listen_address=api,
        patroni_api_timeout=api_timeout,
        connect_timeout=connect_timeout,
        warnings=tuple(c.warnings),
    )


def loads(text: str, path: str = "<string>") -> ProxyConfig:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        if mark is not None:
            raise ConfigError([f"{path}: line {mark.line + 1} column {mark.column + 1}: invalid YAML: "
                               f"{problem}"]) from None
        raise ConfigError([f"{path}: invalid YAML: {problem}"]) from None
    return validate(doc, path)


def load(path: str) -> ProxyConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the configuration file: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text: {e}"]) from None
    return loads(text, path)
