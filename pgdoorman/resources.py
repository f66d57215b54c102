"""The live objects a config names, built once from the checked config: client TLS, pg_hba rules, each
pool's server TLS and JWT keys, with PAM's availability checked. `pg_doorman -t`, the App and RELOAD use it.

`load(path)` reads a config file (pgdoorman.config, plain data) and builds these from it, reporting the
problems of both in one ConfigError; `check(config)` lists the problems of a loaded Config, `build(config)`
returns its Resources or raises ConfigError. A problem names the file and key path the value came from
(`Config.origins`, so included files are named), as the loader's messages do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pgdoorman import hba, talos
from pgdoorman.config import Config, ConfigError, UserConfig, password_kind, read_config
from pgdoorman.config.loader import format_path
from pgdoorman.config.values import JWT_PRIVKEY_PREFIX, JWT_PUBKEY_PREFIX
from pgdoorman.jwt_auth import JwtSetupError, load_private_key, load_public_key
from pgdoorman.net.tls import ClientTls, ServerTls, TlsSetupError, client_tls, server_tls
from pgdoorman.pam_auth import PamSetupError, check_available

SERVER_TLS_KEYS = ("server_tls_mode", "server_tls_ca_cert", "server_tls_certificate", "server_tls_private_key")


@dataclass(frozen=True)
class PoolResources:
    """What one (pool, user) connects and logs in with: the pool's server TLS and the user's JWT keys."""

    server_tls: ServerTls
    jwt_key: Any = None  # password: jwt-pkey-fpath:... (checks the clients' tokens)
    jwt_server_key: Any = None  # server_password: jwt-priv-key-fpath:... (signs our tokens to PostgreSQL)


@dataclass(frozen=True)
class Resources:
    client_tls: ClientTls
    hba_rules: tuple[hba.Rule, ...] | None  # general.pg_hba; None: no rules, everyone may try
    hba_networks: tuple[hba.Network, ...]  # legacy general.hba
    pools: Mapping[tuple[str, str], PoolResources]  # (pool name, username)
    # Each pool's server TLS (what the auth_query users' pools, made at run time, connect with).
    server_tls_by_pool: Mapping[str, ServerTls] = field(default_factory=dict)
    talos_keys: Mapping[str, Any] = field(default_factory=dict)  # talos.keys: kid -> public key

    def for_pool(self, pool: str, username: str) -> PoolResources:
        return self.pools[(pool, username)]

    def for_dynamic(self, pool: str) -> PoolResources:
        """What an auth_query user's pool in `pool` connects with: the pool's server TLS, no JWT keys."""
        return PoolResources(self.server_tls_by_pool[pool])


@dataclass(frozen=True)
class Loaded:
    """A config file loaded and its resources built (what `pg_doorman -t`, start-up and RELOAD get)."""

    config: Config
    resources: Resources

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.config.warnings


class _Builder:
    """Builds the resources of one Config, collecting a message per problem instead of stopping."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.errors: list[str] = []
        self._pam: PamSetupError | None | bool = False  # False: not checked yet

    def file(self, *path: str | int, default: str | None = None) -> str:
        """The file the key at `path` came from; else `default`; else the main config file."""
        origin = self.config.origin(*path)
        return origin.file if origin is not None else default if default is not None else self.config.path

    def given(self, *path: str | int) -> bool:
        return self.config.origin(*path) is not None

    def error(self, file: str, path: str, message: str) -> None:
        self.errors.append(f"{file}: {path}: {message}")

    def pam_problem(self) -> PamSetupError | None:
        if self._pam is False:
            try:
                check_available()
                self._pam = None
            except PamSetupError as e:
                self._pam = e
        assert not isinstance(self._pam, bool)
        return self._pam

    def build(self) -> Resources | None:
        tls = self.client_tls()
        rules, networks = self.access()
        keys = {(name, u.username): self.user_keys(name, i, u)
                for name, pool in self.config.pools.items() for i, u in enumerate(pool.users)}
        pool_tls = self.server_tls()
        talos_keys = self.talos_keys()
        if self.errors or tls is None or pool_tls is None:
            return None
        pools = {(name, user): PoolResources(pool_tls[name], *pair) for (name, user), pair in keys.items()}
        return Resources(tls, rules, networks, pools, pool_tls, talos_keys)

    def talos_keys(self) -> dict[str, Any]:
        """talos.keys loaded (kid = file name without extension)."""
        keys: dict[str, Any] = {}
        for path in self.config.talos.keys:
            try:
                keys.update(talos.load_keys([path]))
            except JwtSetupError as e:
                self.error(self.file("talos", "keys"), "talos.keys", str(e))
        return keys

    def client_tls(self) -> ClientTls | None:
        """The tls_* settings together, and the files they name loaded."""
        g = self.config.general
        try:
            return client_tls(g.tls_mode, g.tls_certificate, g.tls_private_key, g.tls_ca_cert)
        except TlsSetupError as e:
            given = [k for k in (e.key, "tls_certificate", "tls_private_key", "tls_mode") if self.given("general", k)]
            self.error(self.file("general", given[0]) if given else self.file("general"), f"general.{e.key}", str(e))
            return None

    def access(self) -> tuple[tuple[hba.Rule, ...] | None, tuple[hba.Network, ...]]:
        """The legacy hba list parsed; pg_hba rules read (from their file too) and parsed."""
        g = self.config.general
        networks: tuple[hba.Network, ...] = ()
        try:
            networks = hba.parse_networks(g.hba)
        except ValueError as e:
            self.error(self.file("general", "hba"), "general.hba", str(e))
        src = g.pg_hba
        if src is None:
            return None, networks
        try:
            return hba.read_rules(src.content, src.path), networks
        except OSError as e:
            self.error(self.file("general", "pg_hba"), "general.pg_hba", f"cannot read {src.path}: {e.strerror or e}")
        except hba.HbaError as e:
            where = f"{src.path} " if src.path else ""
            self.error(self.file("general", "pg_hba"), "general.pg_hba", f"{where}{e}")
        return None, networks

    def user_keys(self, pool: str, index: int, user: UserConfig) -> tuple[Any, Any]:
        """A user's JWT keys loaded (a JWT or PAM user also needs server credentials), PAM checked."""
        at = ("pools", pool, "users", index)
        entry = self.config.origin(*at)
        shown = entry.path if entry is not None else format_path(list(at))
        here = entry.file if entry is not None else None

        def fail(key: str, blamed: str, message: str) -> None:
            self.error(self.file(*at, key, default=here), f"{shown}.{blamed}", message)

        has_server_password = user.server_password is not None or self.given(*at, "server_password")
        public = private = None
        if password_kind(user.password) == "jwt":
            try:
                public = load_public_key(user.password[len(JWT_PUBKEY_PREFIX):])
            except JwtSetupError as e:
                fail("password", "password", str(e))
            if not has_server_password:
                fail("password", "server_password",
                     "is required for a JWT user (PostgreSQL cannot be logged in to with the client's token)")
        spw = user.server_password
        if spw is not None and spw.startswith(JWT_PRIVKEY_PREFIX):
            try:
                private = load_private_key(spw[len(JWT_PRIVKEY_PREFIX):])
            except JwtSetupError as e:
                fail("server_password", "server_password", str(e))
        if user.auth_pam_service:
            problem = self.pam_problem()
            if problem is not None:
                fail("auth_pam_service", "auth_pam_service", str(problem))
            if not has_server_password:
                fail("auth_pam_service", "server_password",
                     "is required for a PAM user (PostgreSQL cannot check the PAM password)")
        return public, private

    def server_tls(self) -> dict[str, ServerTls] | None:
        """server_tls_* of general, and of every pool that overrides one (pool value, else general's), checked
        together and loaded; an error names the pool's key when the pool set it, else general's."""
        g = self.config.general
        settings = {k: getattr(g, k) for k in SERVER_TLS_KEYS}
        try:
            shared = _server_tls(settings)
        except TlsSetupError as e:
            key = e.key if self.given("general", e.key) else \
                next((k for k in SERVER_TLS_KEYS if self.given("general", k)), e.key)
            self.error(self.file("general", key), f"general.{e.key}", str(e))
            return None
        out: dict[str, ServerTls] = {}
        for name, pool in self.config.pools.items():
            own = {k: getattr(pool, k) for k in SERVER_TLS_KEYS if getattr(pool, k) is not None}
            if not own:
                out[name] = shared
                continue
            try:
                out[name] = _server_tls(self.config.server_tls_settings_for(pool))
            except TlsSetupError as e:
                key = e.key if self.given("pools", name, e.key) else next(k for k in SERVER_TLS_KEYS if k in own)
                self.error(self.file("pools", name, key), format_path(["pools", name, e.key]), str(e))
        return out if len(out) == len(self.config.pools) else None


def _server_tls(s: Mapping[str, str | None]) -> ServerTls:
    return server_tls(s["server_tls_mode"], s["server_tls_ca_cert"], s["server_tls_certificate"],
                      s["server_tls_private_key"])


def _build(config: Config) -> tuple[Resources | None, list[str]]:
    builder = _Builder(config)
    return builder.build(), builder.errors


def check(config: Config) -> list[str]:
    """The problems of the files and services `config` names, one message each ("file: key.path: why");
    empty when build(config) succeeds."""
    return _build(config)[1]


def build(config: Config) -> Resources:
    """The live objects of a loaded config; ConfigError lists every problem."""
    resources, errors = _build(config)
    if resources is None:
        raise ConfigError(errors)
    return resources


def load(path: str) -> Loaded:
    """Load the config file at `path` and build its resources. ConfigError lists every problem of both
    (the loader's first): what `pg_doorman -t` reports, and what keeps a RELOAD from applying."""
    config, errors = read_config(path)
    resources = None
    if config is not None:
        resources, more = _build(config)
        errors = errors + more
    if config is None or resources is None or errors:
        raise ConfigError(errors)
    return Loaded(config, resources)
