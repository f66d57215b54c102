"""Logging in to PostgreSQL as a pool's server user, without I/O: the startup packet, then each backend
message in and the bytes to send back plus where the login stands out (h11's and psycopg's sans-IO split).

`ServerConn` owns the socket, TLS, timers and what happens on a refusal (a TLS retry or an error for the
waiting clients); `BackendLogin` only turns authentication requests into answers, collects the backend's
ParameterStatus and BackendKeyData, and says when ReadyForQuery ends the login. It raises
`auth.AuthError` for what no answer can satisfy (a method the configured secret cannot serve).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pgdoorman import jwt_auth
from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m

# What feed() says about the login after a message.
PENDING = 0  # go on reading
READY = 1  # ReadyForQuery: logged in; params, pid and secret are final
REFUSED = 2  # ErrorResponse: PostgreSQL refused the login; `error` holds its fields


class Credentials(Protocol):
    """What a login needs from its pool. Read when PostgreSQL asks, not when the login starts: SCRAM
    passthrough learns `scram_client_key` from the first client that logs in, possibly meanwhile."""

    @property
    def server_user(self) -> str: ...

    @property
    def server_secret(self) -> str | None: ...

    @property
    def jwt_server_key(self) -> Any: ...

    @property
    def scram_client_key(self) -> bytes | None: ...


class BackendLogin:
    __slots__ = ("creds", "params", "pid", "secret", "scram", "error", "end_point")

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        # Over TLS, the tls-server-end-point data of the server's certificate (net/tls.py's end_point_of): SCRAM
        # binds to it when PostgreSQL offers SCRAM-SHA-256-PLUS, as libpq's default channel_binding=prefer does.
        self.end_point: bytes | None = None
        self.params: dict[str, str] = {}
        self.pid = 0
        self.secret = 0
        self.scram: auth.ScramClient | None = None
        self.error: dict[str, str] = {}

    def startup_packet(self, database: str, application_name: str,
                       settings: Mapping[str, str] | None = None) -> bytes:
        """`settings`: the pool's startup_parameters (core/startup_params.py), sent after the fixed three."""
        params = {"user": self.creds.server_user, "database": database, "application_name": application_name}
        if settings:
            params.update(settings)
        return m.startup_message(params)

    def feed(self, t: int, body: bytes) -> tuple[bytes, int]:
        """One backend message: (bytes to send, PENDING | READY | REFUSED)."""
        if t == 82:  # 'R'
            return self._authenticate(m.I32.unpack_from(body, 0)[0], body), PENDING
        if t == 83:  # ParameterStatus
            k, v = m.parse_parameter_status(body)
            self.params[k] = v
            return b"", PENDING
        if t == 75:  # BackendKeyData
            self.pid, self.secret = m.TWO_I32.unpack_from(body, 0)
            return b"", PENDING
        if t == 90:  # ReadyForQuery
            self.scram = None
            return b"", READY
        if t == 69:  # ErrorResponse
            self.error = m.parse_fields(body)
            return b"", REFUSED
        if t == 78:  # NoticeResponse
            return b"", PENDING
        raise auth.AuthError(f"unexpected message {chr(t)!r} during server login")

    def _authenticate(self, code: int, body: bytes) -> bytes:
        creds = self.creds
        if code == 0:  # AuthenticationOk
            return b""
        if creds.jwt_server_key is not None and code in (5, 10):
            raise auth.AuthError("server asked for md5 or SCRAM, but server_password is a JWT key "
                                 "(the server must ask for a clear-text password)")
        if code == 5:
            return m.password_message(auth.md5_response(creds.server_user, self._md5_secret(), body[4:8]) + b"\x00")
        if code == 3:
            if creds.jwt_server_key is not None:  # server_password: jwt-priv-key-fpath:...
                return m.password_message(m.cstr(jwt_auth.mint(creds.jwt_server_key, creds.server_user)))
            secret = creds.server_secret
            if not secret or auth.is_md5_hash(secret) or auth.is_scram_verifier(secret):
                raise auth.AuthError("server asked for a clear-text password and no plain-text password is configured")
            return m.password_message(m.cstr(secret))
        if code == 10:
            self.scram = self._scram_client([x.decode() for x in body[4:].split(b"\x00") if x])
            return m.sasl_initial_response(self.scram.mechanism, self.scram.client_first())
        if code == 11:
            if self.scram is None:
                raise auth.AuthError("unexpected SASL continue")
            return m.msg(b"p", self.scram.server_first(body[4:]))
        if code == 12:
            if self.scram is None:
                raise auth.AuthError("unexpected SASL final")
            self.scram.server_final(body[4:])
            return b""
        raise auth.AuthError(f"unsupported authentication request {code} from server")

    def _md5_secret(self) -> str:
        secret = self.creds.server_secret
        if not secret:
            raise auth.AuthError("server asked for an md5 password and none is configured")
        if auth.is_scram_verifier(secret):
            raise auth.AuthError(
                "server asked for md5 but the configured password is a SCRAM verifier; "
                "set server_password or store the role's password as md5")
        return secret

    def _scram_client(self, mechanisms: list[str]) -> auth.ScramClient:
        creds = self.creds
        if "SCRAM-SHA-256" not in mechanisms:
            raise auth.AuthError(f"server offers unsupported SASL mechanisms {mechanisms}")
        secret = creds.server_secret
        if not secret:
            raise auth.AuthError("server asked for SCRAM and no password is configured")
        if auth.is_md5_hash(secret):
            raise auth.AuthError(
                "server asked for SCRAM but the configured password is an md5 hash; "
                "set server_password or store the role's password as SCRAM")
        # Without binding data the flag is "n" (never "y": PostgreSQL over TLS takes that for a downgrade).
        bind = self.end_point if auth.SCRAM_SHA_256_PLUS in mechanisms else None
        if not auth.is_scram_verifier(secret):
            return auth.ScramClient(creds.server_user, password=secret, end_point=bind)
        client_key = creds.scram_client_key
        if client_key is None:
            raise auth.AuthError(
                "SCRAM passthrough needs one client to log in first (no ClientKey yet); "
                "or set server_username/server_password")
        ver = auth.ScramVerifier.parse(secret)
        return auth.ScramClient(creds.server_user, client_key=client_key, server_key=ver.server_key, end_point=bind)
