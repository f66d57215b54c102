"""TLS towards clients: the server-side SSLContext built from `general.tls_*`, and what each `tls_mode`
means. The connection layer wraps an accepted socket after answering SSLRequest with 'S' and drives the
handshake and the reads on the worker's loop (see ClientConn); nothing here blocks.

Modes (PgDoorman's): `disable` answers 'N' to SSLRequest; `allow` (the default) offers TLS when a
certificate is configured; `require` also refuses TCP clients that start without TLS (Unix-socket clients
are exempt: PostgreSQL never offers TLS there); `verify-full` is `require` plus a client certificate
signed by `tls_ca_cert`. TLS 1.2 is the minimum.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

MODES = ("disable", "allow", "require", "verify-full")

# The most plaintext one TLS record carries. A TLS connection is always read with at least this much room,
# so OpenSSL never holds decrypted bytes back (SSLSocket.pending() stays 0) where epoll could not see them.
TLS_READ_MIN = 16384


class TlsSetupError(Exception):
    """A TLS setting cannot be used; `key` is the general.* key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ClientTls:
    """What the listener does with TLS: `context` is None when TLS is never offered."""

    mode: str
    context: ssl.SSLContext | None

    @property
    def required(self) -> bool:
        """TCP clients must use TLS."""
        return self.context is not None and self.mode in ("require", "verify-full")


def client_tls(mode: str | None, certificate: str | None, private_key: str | None,
               ca_cert: str | None) -> ClientTls:
    """Check the settings together and load the files; TlsSetupError names the key that is wrong."""
    mode = mode or "allow"
    if mode not in MODES:
        raise TlsSetupError("tls_mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if bool(certificate) != bool(private_key):
        missing = "tls_private_key" if certificate else "tls_certificate"
        given = "tls_certificate" if certificate else "tls_private_key"
        raise TlsSetupError(missing, f"must be set together with {given}")
    if mode in ("require", "verify-full") and not certificate:
        raise TlsSetupError("tls_mode", f"{mode!r} needs tls_certificate and tls_private_key")
    if mode == "verify-full" and not ca_cert:
        raise TlsSetupError("tls_ca_cert", "is required by tls_mode 'verify-full' (client certificates are "
                                           "verified against it)")
    if mode == "disable" or not certificate:
        return ClientTls(mode, None)
    assert private_key is not None
    # OpenSSL's errors do not say which file it could not open: check each one first.
    for key, path in (("tls_certificate", certificate), ("tls_private_key", private_key), ("tls_ca_cert", ca_cert)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise TlsSetupError(key, f"cannot read {path}: {e.strerror or e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certificate, private_key)
    except (ssl.SSLError, OSError) as e:
        raise TlsSetupError("tls_certificate", f"cannot load certificate {certificate} with key {private_key}: "
                                               f"{_reason(e)}") from None
    if ca_cert:
        try:
            ctx.load_verify_locations(cafile=ca_cert)
        except (ssl.SSLError, OSError) as e:
            raise TlsSetupError("tls_ca_cert", f"cannot load CA bundle {ca_cert}: {_reason(e)}") from None
    if mode == "verify-full":
        ctx.verify_mode = ssl.CERT_REQUIRED
    # No session tickets (TLS 1.2 or 1.3): PostgreSQL does not offer resumption either, and TLS 1.3 would
    # send them after every handshake for nothing.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    # No TLS 1.2 renegotiation: a write that needs a read first would stall the relay (PostgreSQL refuses
    # it too).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ClientTls(mode, ctx)


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    return str(e)
