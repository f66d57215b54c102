"""TLS towards clients (`general.tls_*`: the server-side SSLContext and what each `tls_mode` means) and
towards PostgreSQL (`server_tls_*`, per pool: libpq's sslmode semantics). The connection layer wraps a socket
after SSLRequest was answered with 'S' and drives the handshake and the reads on the worker's loop (see
ClientConn and ServerConn); nothing here blocks.

Client modes (PgDoorman's): `disable` answers 'N' to SSLRequest; `allow` (the default) offers TLS when a
certificate is configured; `require` also refuses TCP clients that start without TLS (Unix-socket clients
are exempt: PostgreSQL never offers TLS there); `verify-full` is `require` plus a client certificate
signed by `tls_ca_cert`. TLS 1.2 is the minimum both ways.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

MODES = ("disable", "allow", "require", "verify-full")

# The most plaintext one TLS record carries. A TLS connection is always read with at least this much room,
# so OpenSSL never holds decrypted bytes back (SSLSocket.pending() stays 0) where epoll could not see them.
TLS_READ_MIN = 16384
# The ALPN protocol name PostgreSQL 17 offers and a direct TLS connection must agree on.
ALPN = "postgresql"


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
    # SCRAM channel binding's tls-server-end-point data: the hash of the certificate clients see (None: no
    # TLS, or a signature algorithm without a hash to use; SCRAM-SHA-256-PLUS is then not offered).
    end_point: bytes | None = None

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
    _check_pair("tls_", certificate, private_key)
    if mode in ("require", "verify-full") and not certificate:
        raise TlsSetupError("tls_mode", f"{mode!r} needs tls_certificate and tls_private_key")
    if mode == "verify-full" and not ca_cert:
        raise TlsSetupError("tls_ca_cert", "is required by tls_mode 'verify-full' (client certificates are "
                                           "verified against it)")
    if mode == "disable" or not certificate:
        return ClientTls(mode, None)
    assert private_key is not None
    _check_readable(("tls_certificate", certificate), ("tls_private_key", private_key), ("tls_ca_cert", ca_cert))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, "tls_certificate", certificate, private_key)
    if ca_cert:
        _load_ca(ctx, "tls_ca_cert", ca_cert)
    if mode == "verify-full":
        ctx.verify_mode = ssl.CERT_REQUIRED
    # No session tickets (TLS 1.2 or 1.3): PostgreSQL does not offer resumption either, and TLS 1.3 would
    # send them after every handshake for nothing.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    # No TLS 1.2 renegotiation: a write that needs a read first would stall the relay (PostgreSQL refuses
    # it too).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    # As PostgreSQL 17: "postgresql" is agreed when a client offers it (libpq 17 does, either way it starts
    # TLS); a direct TLS client must (ClientLogin._tls_handshake).
    ctx.set_alpn_protocols([ALPN])
    return ClientTls(mode, ctx, end_point_data(certificate))


# The hash of tls-server-end-point (RFC 5929 section 4.1): the certificate's signature hash, SHA-256 for MD5 and
# SHA-1, keyed by the DER body of the signature algorithm's object identifier (RSA PKCS#1 v1.5 and ECDSA).
_SIGNATURE_HASHES = {
    bytes.fromhex("2a864886f70d010104"): "sha256",  # md5WithRSAEncryption
    bytes.fromhex("2a864886f70d010105"): "sha256",  # sha1WithRSAEncryption
    bytes.fromhex("2a864886f70d01010b"): "sha256",
    bytes.fromhex("2a864886f70d01010c"): "sha384",
    bytes.fromhex("2a864886f70d01010d"): "sha512",
    bytes.fromhex("2a864886f70d01010e"): "sha224",
    bytes.fromhex("2a8648ce3d0401"): "sha256",  # ecdsa-with-SHA1
    bytes.fromhex("2a8648ce3d040301"): "sha224",
    bytes.fromhex("2a8648ce3d040302"): "sha256",
    bytes.fromhex("2a8648ce3d040303"): "sha384",
    bytes.fromhex("2a8648ce3d040304"): "sha512",
}
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


def end_point_data(certificate: str) -> bytes | None:
    """SCRAM channel binding data for the first certificate of a PEM file (the one a TLS client is shown), as
    PostgreSQL computes it for its own certificate; None for a signature algorithm outside the table
    (RSA-PSS, Ed25519: no hash to take; PostgreSQL cannot bind them either)."""
    with open(certificate, encoding="ascii", errors="replace") as f:
        text = f.read()
    start = text.find(_PEM_BEGIN)
    end = text.find(_PEM_END, start)
    if start < 0 or end < 0:
        return None
    return end_point_of(ssl.PEM_cert_to_DER_cert(text[start : end + len(_PEM_END)]))


def end_point_of(der: bytes | None) -> bytes | None:
    """tls-server-end-point data of a DER certificate (the one a server showed the pooler, or the pooler's own);
    None when its signature algorithm has no hash to use (or there is no certificate)."""
    if not der:
        return None
    try:
        name = _SIGNATURE_HASHES.get(_signature_oid(der))
    except (IndexError, ValueError):
        return None
    return hashlib.new(name, der).digest() if name else None


def _signature_oid(der: bytes) -> bytes:
    """The signatureAlgorithm's object identifier of a DER certificate: SEQUENCE { tbsCertificate SEQUENCE,
    signatureAlgorithm SEQUENCE { OID, ... }, signatureValue }."""

    def item(pos: int, tag: int) -> tuple[int, int]:  # (content start, content end) of the element at pos
        if der[pos] != tag:
            raise ValueError(f"DER tag {der[pos]:#x} where {tag:#x} was expected")
        n = der[pos + 1]
        if n < 0x80:
            return pos + 2, pos + 2 + n
        size = int.from_bytes(der[pos + 2 : pos + 2 + (n & 0x7F)], "big")
        return pos + 2 + (n & 0x7F), pos + 2 + (n & 0x7F) + size

    body, _ = item(0, 0x30)
    _, tbs_end = item(body, 0x30)
    alg, _ = item(tbs_end, 0x30)
    oid, oid_end = item(alg, 0x06)
    return der[oid:oid_end]


def _check_pair(prefix: str, certificate: str | None, private_key: str | None) -> None:
    """`<prefix>certificate` and `<prefix>private_key` come together or not at all."""
    if bool(certificate) != bool(private_key):
        missing = "private_key" if certificate else "certificate"
        given = "certificate" if certificate else "private_key"
        raise TlsSetupError(prefix + missing, f"must be set together with {prefix}{given}")


def _load_chain(ctx: ssl.SSLContext, key: str, certificate: str, private_key: str) -> None:
    try:
        ctx.load_cert_chain(certificate, private_key)
    except (ssl.SSLError, OSError) as e:
        raise TlsSetupError(key, f"cannot load certificate {certificate} with key {private_key}: "
                                 f"{_reason(e)}") from None


def _load_ca(ctx: ssl.SSLContext, key: str, ca_cert: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_cert)
    except (ssl.SSLError, OSError) as e:
        raise TlsSetupError(key, f"cannot load CA bundle {ca_cert}: {_reason(e)}") from None


def _check_readable(*settings: tuple[str, str | None]) -> None:
    """OpenSSL's errors do not say which file it could not open: try each one first."""
    for key, path in settings:
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise TlsSetupError(key, f"cannot read {path}: {e.strerror or e}") from None


def ssl_reason(e: BaseException) -> str:
    """What went wrong in a handshake, in OpenSSL's words where it has some."""
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    return str(e)


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    return str(e)


# ---------------------------------------------------------------------------------------- towards servers
SERVER_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class ServerTls:
    """How a pool connects to PostgreSQL, libpq's sslmode semantics: `disable` plain; `allow` plain first and
    TLS on a new connection if PostgreSQL refuses the plain one (28000, a pg_hba `hostssl` rule); `prefer`
    TLS when the server offers it; `require` TLS without checking the certificate; `verify-ca` the
    certificate is signed by `ca_cert`; `verify-full` and it names the host. Unix sockets never use TLS."""

    mode: str
    context: ssl.SSLContext | None  # None for disable

    @property
    def first(self) -> bool:
        """Ask for TLS on the first connection (SSLRequest before the startup packet)."""
        return self.mode not in ("disable", "allow")

    @property
    def required(self) -> bool:
        return self.mode in ("require", "verify-ca", "verify-full")


def server_tls(mode: str | None, ca_cert: str | None, certificate: str | None, private_key: str | None,
               prefix: str = "server_tls_") -> ServerTls:
    """The settings of one pool (pool overrides already applied); TlsSetupError names the key that is wrong
    (e.g. `server_tls_ca_cert`). The files are read now: a RELOAD picks up renewed certificates."""
    mode = mode or "allow"
    if mode not in SERVER_MODES:
        raise TlsSetupError(prefix + "mode", f"must be one of {', '.join(SERVER_MODES)}, got {mode!r}")
    _check_pair(prefix, certificate, private_key)
    if mode in ("verify-ca", "verify-full") and not ca_cert:
        raise TlsSetupError(prefix + "ca_cert", f"is required by {prefix}mode {mode!r} (the server certificate is "
                                                "verified against it)")
    if mode == "disable":
        return ServerTls(mode, None)
    _check_readable((prefix + "ca_cert", ca_cert), (prefix + "certificate", certificate),
                    (prefix + "private_key", private_key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = mode == "verify-full"
    if mode in ("verify-ca", "verify-full"):
        ctx.verify_mode = ssl.CERT_REQUIRED
        assert ca_cert is not None
        _load_ca(ctx, prefix + "ca_cert", ca_cert)
    else:
        ctx.verify_mode = ssl.CERT_NONE  # libpq's require/prefer/allow: encrypted, not authenticated
    if certificate:
        assert private_key is not None
        _load_chain(ctx, prefix + "certificate", certificate, private_key)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ServerTls(mode, ctx)
