"""Sans-IO authentication primitives: md5 and SCRAM-SHA-256 exactly as PostgreSQL speaks them.

Owns the md5 hash/response maths (including pass-the-hash), PostgreSQL's SCRAM verifier format,
SASLprep as PostgreSQL applies it, and the two SCRAM state machines: ``ScramServer`` (pooler
authenticating a client, recovering its ClientKey for passthrough) and ``ScramClient`` (pooler
logging in to PostgreSQL with a password or by replaying a recovered ClientKey).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from dataclasses import dataclass, field

from pgdoorman.protocol.auth_error import AuthError, malformed
from pgdoorman.protocol.scram_reader import Reader, sanitize_str

__all__ = [
    "AuthError",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "is_md5_hash",
    "is_scram_verifier",
    "md5_response",
    "md5_stored",
    "md5_verify",
    "saslprep",
    "scram_verifier_for",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
CBIND_TYPE = "tls-server-end-point"  # the one channel binding type PostgreSQL (and libpq) use
# PostgreSQL's defaults (SCRAM_DEFAULT_SALT_LEN, SCRAM_RAW_NONCE_LEN, scram_iterations).
_DEFAULT_SALT_LEN = 16
_RAW_NONCE_LEN = 18
_DEFAULT_ITERATIONS = 4096
# Upper bound accepted from a server: a hostile or broken server must not make us burn minutes
# of CPU in PBKDF2.
_MAX_SERVER_ITERATIONS = 10_000_000
_KEY_LEN = 32  # SHA-256 digest size
_MD5_LEN = 35  # "md5" + 32 hex digits, PostgreSQL's MD5_PASSWD_LEN
_MD5_RE = re.compile(r"md5[0-9a-f]{32}")  # PostgreSQL accepts lowercase hex only
_DIGITS_RE = re.compile(r"[0-9]+")
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- helpers


def _to_bytes(s: str) -> bytes:
    # surrogateescape round-trips strings that were decoded from arbitrary (non-UTF-8) bytes,
    # e.g. a config file or a client password in a legacy encoding; surrogatepass covers any
    # other lone surrogate so that encoding can never raise.
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _b64enc(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _b64dec(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AuthError(f"malformed SCRAM message: invalid base64 in {what}") from None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _md5_hex(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _is_printable_nonce(s: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','.
    return bool(s) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in s)


def _new_nonce() -> str:
    return _b64enc(os.urandom(_RAW_NONCE_LEN))


def _check_nonce_arg(nonce: bytes | None) -> str:
    """Injected nonces are used verbatim (they are the printable nonce text, as in RFC 7677)."""
    if nonce is None:
        return _new_nonce()
    try:
        text = nonce.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("nonce must be printable ASCII without ','") from None
    if not _is_printable_nonce(text):
        raise ValueError("nonce must be printable ASCII without ','")
    return text


def _decode_message(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"malformed SCRAM {what}: not valid UTF-8") from None


def _split_attr(part: str, what: str) -> tuple[str, str]:
    """Split one ``x=value`` SCRAM attribute (single ASCII letter name)."""
    if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
        raise AuthError(f"malformed SCRAM {what}: expected attribute=value")
    return part[0], part[2:]


def _expect_attr(part: str | None, name: str, what: str) -> str:
    if not part:
        raise AuthError(f"malformed SCRAM {what}: missing attribute '{name}'")
    got, value = _split_attr(part, what)
    if got != name:
        raise AuthError(f"malformed SCRAM {what}: expected attribute '{name}', got '{got}'")
    return value


def _saslname_escape(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


# --------------------------------------------------------------------------- SASLprep


def _prohibited(c: str) -> bool:
    # RFC 4013 section 2.3 (tables C.1.2 .. C.9), plus unassigned code points (A.1), which
    # PostgreSQL also rejects because passwords are "stored strings".
    return (
        stringprep.in_table_c12(c)
        or stringprep.in_table_c21(c)
        or stringprep.in_table_c22(c)
        or stringprep.in_table_c3(c)
        or stringprep.in_table_c4(c)
        or stringprep.in_table_c5(c)
        or stringprep.in_table_c6(c)
        or stringprep.in_table_c7(c)
        or stringprep.in_table_c8(c)
        or stringprep.in_table_c9(c)
        or stringprep.in_table_a1(c)
    )


def saslprep(password: str | bytes) -> bytes:
    """Return the bytes PostgreSQL feeds to PBKDF2 for ``password`` (pg_saslprep semantics).

    Pure-ASCII input is used as is. Input that is not valid UTF-8, or that SASLprep rejects
    (prohibited characters, bidi violations, empty after mapping), is used as raw bytes, like
    PostgreSQL does. Faithful to PostgreSQL, the prohibition and bidi checks run on the mapped
    string *before* NFKC normalisation; the normalised string is what gets returned.
    """
    raw = password if isinstance(password, bytes) else _to_bytes(password)
    if raw.isascii():
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    # Step 1: map non-ASCII spaces (C.1.2) to SPACE, drop "commonly mapped to nothing" (B.1).
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    if not mapped:
        return raw  # PostgreSQL refuses to turn a non-empty password into an empty one
    # Step 2: NFKC (PostgreSQL uses its current Unicode tables, as does unicodedata).
    normalized = unicodedata.normalize("NFKC", mapped)
    # Steps 3 and 4 on the pre-normalisation string, as pg_saslprep does.
    if any(_prohibited(c) for c in mapped):
        return raw
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return raw
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return raw
    return normalized.encode("utf-8")


def _salted_password(password: str | bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)


# --------------------------------------------------------------------------- md5


def is_md5_hash(s: str) -> bool:
    """True if ``s`` is a PostgreSQL md5 password hash ("md5" + 32 lowercase hex digits)."""
    return len(s) == _MD5_LEN and _MD5_RE.fullmatch(s) is not None


def md5_stored(username: str, password: str) -> str:
    """PostgreSQL's stored md5 value: ``"md5" + hex(md5(password + username))``."""
    return "md5" + _md5_hex(_to_bytes(password) + _to_bytes(username))


def md5_response(username: str, secret: str, salt: bytes) -> bytes:
    """The PasswordMessage payload (without the NUL) answering AuthenticationMD5Password.

    ``secret`` is either the plain-text password or an already stored ``md5...`` hash; the latter
    is pass-the-hash, which is what md5 passthrough to the backend relies on.
    """
    inner = secret[3:] if is_md5_hash(secret) else md5_stored(username, secret)[3:]
    return ("md5" + _md5_hex(inner.encode("ascii") + salt)).encode("ascii")


def md5_verify(username: str, stored: str, salt: bytes, response: bytes) -> bool:
    """Check a client's md5 PasswordMessage against ``stored`` (an md5 hash or plain text).

    A SCRAM verifier cannot answer an md5 challenge and an empty stored password never
    matches (PostgreSQL treats both as a failed login). Comparison is constant-time.
    """
    if response.endswith(b"\x00"):
        response = response[:-1]
    if not stored or is_scram_verifier(stored):
        # Still do a comparison so the timing does not reveal which case we were in.
        hmac.compare_digest(response, b"md5" + b"0" * 32)
        return False
    expected = md5_response(username, stored, salt)
    return hmac.compare_digest(expected, response)


# --------------------------------------------------------------------------- SCRAM verifier


@dataclass(frozen=True)
class ScramVerifier:
    """A SCRAM-SHA-256 secret as stored by PostgreSQL (pg_authid.rolpassword)."""

    iterations: int
    salt: bytes
    # Keys are kept out of repr(): anyone holding them can impersonate the server.
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= _INT32_MAX:
            raise ValueError("SCRAM iteration count out of range")
        if len(self.stored_key) != _KEY_LEN or len(self.server_key) != _KEY_LEN:
            raise ValueError("SCRAM StoredKey/ServerKey must be 32 bytes")

    @classmethod
    def parse(cls, s: str) -> ScramVerifier:
        """Parse ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``; ValueError if invalid."""
        mech, _, rest = s.partition("$")
        iter_salt, sep1, keys = rest.partition("$")
        iters, sep2, salt_b64 = iter_salt.partition(":")
        stored_b64, sep3, server_b64 = keys.partition(":")
        if mech != SCRAM_SHA_256 or not (sep1 and sep2 and sep3):
            raise ValueError("not a SCRAM-SHA-256 verifier")
        if not _DIGITS_RE.fullmatch(iters) or int(iters) > _INT32_MAX:
            raise ValueError("invalid SCRAM verifier iteration count")
        try:
            salt = base64.b64decode(salt_b64.encode("ascii"), validate=True)
            stored_key = base64.b64decode(stored_b64.encode("ascii"), validate=True)
            server_key = base64.b64decode(server_b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("invalid base64 in SCRAM verifier") from None
        return cls(int(iters), salt, stored_key, server_key)

    @classmethod
    def from_password(
        cls, password: str, salt: bytes | None = None, iterations: int = _DEFAULT_ITERATIONS
    ) -> ScramVerifier:
        """Build a verifier the way PostgreSQL does (random 16-byte salt unless given)."""
        if salt is None:
            salt = os.urandom(_DEFAULT_SALT_LEN)
        if iterations < 1:
            raise ValueError("SCRAM iteration count must be >= 1")
        salted = _salted_password(password, salt, iterations)
        stored_key = _sha256(_hmac(salted, b"Client Key"))
        server_key = _hmac(salted, b"Server Key")
        return cls(iterations, salt, stored_key, server_key)

    def __str__(self) -> str:
        return (
            f"{SCRAM_SHA_256}${self.iterations}:{_b64enc(self.salt)}"
            f"${_b64enc(self.stored_key)}:{_b64enc(self.server_key)}"
        )


def is_scram_verifier(s: str) -> bool:
    """True if ``s`` parses as a PostgreSQL SCRAM-SHA-256 verifier."""
    try:
        ScramVerifier.parse(s)
    except ValueError:
        return False
    return True


def scram_verifier_for(password: str) -> str:
    """A fresh PostgreSQL-format verifier (random salt, 4096 iterations) for ``password``."""
    return str(ScramVerifier.from_password(password))


# --------------------------------------------------------------------------- SCRAM server


class ScramServer:
    """SCRAM-SHA-256 server side: the pooler authenticating a connecting client.

    Feed the SASLInitialResponse to :meth:`client_first` and the SASLResponse to
    :meth:`client_final`; send back what they return (as AuthenticationSASLContinue and
    AuthenticationSASLFinal). Any error is final: the exchange cannot be resumed.
    After success ``client_key`` holds the client's ClientKey, which is what SCRAM
    passthrough replays to the backend.

    `end_point`: on a TLS connection, the tls-server-end-point data of the certificate the client was shown
    (net/tls.py): SCRAM-SHA-256-PLUS is offered first, as PostgreSQL offers it over TLS, and a client that
    could bind but was not offered it ("y") is refused, as there.
    """

    def __init__(self, verifier: ScramVerifier, nonce: bytes | None = None, end_point: bytes | None = None) -> None:
        self._verifier = verifier
        self._server_nonce = _check_nonce_arg(nonce)
        self._end_point = end_point
        self.mechanisms = (SCRAM_SHA_256_PLUS, SCRAM_SHA_256) if end_point else (SCRAM_SHA_256,)
        self._binding = False  # the client chose SCRAM-SHA-256-PLUS
        self._state = "start"
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self.client_key: bytes | None = None

    def _fail(self, msg: str) -> AuthError:
        self._state = "failed"
        return AuthError(msg)

    def client_first(self, mechanism: str, data: bytes) -> bytes:
        """Consume client-first-message; return server-first-message. Checked in PostgreSQL's order and
        refused in its words (read_client_first_message): bytes are taken as they come, as C chars."""
        if self._state != "start":
            raise self._fail("unexpected SASLInitialResponse")
        self._state = "failed"  # until this step completes
        self.select(mechanism)
        r = Reader(data)
        self._gs2_flag(r)
        if r.peek() == "a":
            raise AuthError("client uses authorization identity, but it is not supported", "0A000")
        if r.peek() != ",":
            raise malformed(f'Unexpected attribute "{r.char()}" in client-first-message.')
        r.pos += 1
        self._gs2_header = r.text[: r.pos]
        bare = r.text[r.pos :]
        if r.peek() == "m":
            raise AuthError("client requires an unsupported SCRAM extension", "0A000")
        r.attr("n")  # the SCRAM username is ignored (the startup packet's user counts), as in PostgreSQL
        nonce = r.attr("r")
        if nonce and not _is_printable_nonce(nonce):  # (an empty one passes, as in PostgreSQL)
            raise AuthError("non-printable characters in SCRAM nonce", "08P01")
        while not r.end():
            r.any_attr()  # optional extensions, checked and ignored
        self._client_first_bare = bare
        self._nonce = nonce + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64enc(v.salt)},i={v.iterations}"
        self._state = "first"
        return self._server_first.encode("ascii")

    def select(self, mechanism: str) -> None:
        """The mechanism the client chose, checked first as PostgreSQL checks it (also when its first message
        comes only after SASL's empty challenge: ClientAuth)."""
        if mechanism not in self.mechanisms:
            raise AuthError("client selected an invalid SASL authentication mechanism", "08P01")
        self._binding = mechanism == SCRAM_SHA_256_PLUS

    def _gs2_flag(self, r: Reader) -> None:
        """The channel-binding flag of a client-first-message, checked as PostgreSQL checks it against the
        mechanism chosen and whether binding was offered; `r` is left after it (and its comma)."""
        flag = r.peek()
        if flag == "n" or flag == "y":
            if self._binding:
                raise malformed("The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include "
                                 "channel binding data.")
            if flag == "y" and self._end_point:
                raise AuthError("SCRAM channel binding negotiation error", "28000",
                                "The client supports SCRAM channel binding but thinks the server does not.  "
                                "However, this server does support channel binding.")
            r.pos += 1
            if r.peek() != ",":
                raise malformed(f'Comma expected, but found character "{r.char()}".')
            r.pos += 1
            return
        if flag == "p":
            if not self._binding:
                raise malformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message "
                                 "includes channel binding data.")
            kind = r.attr("p")
            if kind != CBIND_TYPE:
                raise AuthError(f'unsupported SCRAM channel-binding type "{sanitize_str(kind)}"', "08P01")
            return
        raise malformed(f'Unexpected channel-binding flag "{r.char()}".')

    def client_final(self, data: bytes) -> bytes:
        """Consume client-final-message; return server-final-message or raise AuthError (PostgreSQL's
        read_client_final_message and its checks after it, in their order and words; a wrong proof is the
        one failure without a SQLSTATE: "password authentication failed")."""
        if self._state != "first":
            raise self._fail("unexpected SASLResponse")
        self._state = "failed"
        r = Reader(data)
        cbind = r.attr("c")
        if self._binding:
            if cbind != _b64enc(self._gs2_header.encode("latin-1") + (self._end_point or b"")):
                raise AuthError("SCRAM channel binding check failed", "28000")
        elif not ((cbind == "biws" and self._gs2_header[0] == "n") or (cbind == "eSws" and self._gs2_header[0] == "y")):
            raise AuthError("unexpected SCRAM channel-binding attribute in client-final-message", "08P01")
        nonce = r.attr("r")
        while True:  # extensions, then the proof
            proof_at = r.pos - 1
            name, value = r.any_attr()
            if name == "p":
                break
        try:
            proof = base64.b64decode(value.encode("latin-1"), validate=True)
        except (binascii.Error, ValueError):
            proof = b""
        if len(proof) != _KEY_LEN:
            raise malformed("Malformed proof in client-final-message.")
        if not r.end():
            raise malformed("Garbage found at the end of client-final-message.")
        if nonce != self._nonce:
            raise AuthError("invalid SCRAM response", "08P01", "Nonce does not match.")
        auth_message_b = ",".join((self._client_first_bare, self._server_first, r.text[:proof_at])).encode("latin-1")
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message_b))
        if not hmac.compare_digest(_sha256(client_key), v.stored_key):
            raise AuthError("SCRAM authentication failed: invalid client proof")
        self.client_key = client_key
        self._state = "done"
        return b"v=" + _b64enc(_hmac(v.server_key, auth_message_b)).encode("ascii")


# --------------------------------------------------------------------------- SCRAM client


class ScramClient:
    """SCRAM-SHA-256 client side: the pooler logging in to PostgreSQL.

    With ``password`` this is an ordinary SCRAM client. With ``client_key`` it replays a ClientKey
    recovered by :class:`ScramServer` (passthrough): PBKDF2 is skipped, StoredKey = H(ClientKey),
    and the server signature is verified only if ``server_key`` is given. Replay only works when
    the backend's verifier has the same salt and iterations as the one the client answered;
    ``salt`` and ``iterations`` expose what the backend sent so the caller can report that.
    """

    def __init__(
        self,
        username: str = "",
        password: str | None = None,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        nonce: bytes | None = None,
        end_point: bytes | None = None,
    ) -> None:
        """`end_point`: bind the exchange to the TLS connection (SCRAM-SHA-256-PLUS, tls-server-end-point data of
        the certificate the server showed), as libpq does by default when the server offers it."""
        if (password is None) == (client_key is None):
            raise ValueError("exactly one of password and client_key is required")
        if client_key is not None and len(client_key) != _KEY_LEN:
            raise ValueError("client_key must be 32 bytes")
        if server_key is not None and (password is not None or len(server_key) != _KEY_LEN):
            raise ValueError("server_key is only for client_key replay and must be 32 bytes")
        self._username = username
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._nonce = _check_nonce_arg(nonce)
        self._end_point = end_point
        self._gs2_header = f"p={CBIND_TYPE},," if end_point else "n,,"
        self.mechanism = SCRAM_SHA_256_PLUS if end_point else SCRAM_SHA_256
        self._state = "start"
        self._client_first_bare = ""
        self._expected_server_signature: bytes | None = None
        self.salt: bytes | None = None
        self.iterations: int | None = None
        # True once server_final() has checked the server's signature (False in replay mode
        # without server_key, where the server is not authenticated).
        self.server_verified = False

    def client_first(self) -> bytes:
        """Return the client-first-message (SASLInitialResponse data)."""
        if self._state != "start":
            raise AuthError("SCRAM client-first-message already sent")
        # PostgreSQL ignores n= (the startup packet's user counts); libpq sends it empty.
        self._client_first_bare = f"n={_saslname_escape(self._username)},r={self._nonce}"
        self._state = "first"
        return (self._gs2_header + self._client_first_bare).encode("utf-8")

    def server_first(self, data: bytes) -> bytes:
        """Consume server-first-message; return client-final-message."""
        if self._state != "first":
            self._state = "failed"
            raise AuthError("unexpected SCRAM server-first-message")
        self._state = "failed"
        text = _decode_message(data, "server-first-message")
        if text.startswith("m"):
            raise AuthError("server requires an unsupported SCRAM extension")
        parts = text.split(",")
        nonce = _expect_attr(parts[0], "r", "server-first-message")
        if (
            len(nonce) <= len(self._nonce)
            or not nonce.startswith(self._nonce)
            or not _is_printable_nonce(nonce)
        ):
            raise AuthError("SCRAM nonce mismatch in server-first-message")
        salt = _b64dec(
            _expect_attr(parts[1] if len(parts) > 1 else None, "s", "server-first-message"), "salt"
        )
        iters = _expect_attr(parts[2] if len(parts) > 2 else None, "i", "server-first-message")
        if not _DIGITS_RE.fullmatch(iters):
            raise AuthError("malformed SCRAM server-first-message: invalid iteration count")
        iterations = int(iters)
        if not 1 <= iterations <= _MAX_SERVER_ITERATIONS:
            raise AuthError("SCRAM iteration count from server out of range")
        for ext in parts[3:]:
            _split_attr(ext, "server-first-message")
        self.salt = salt
        self.iterations = iterations

        if self._password is not None:
            salted = _salted_password(self._password, salt, iterations)
            client_key = _hmac(salted, b"Client Key")
            server_key: bytes | None = _hmac(salted, b"Server Key")
        else:
            assert self._client_key is not None
            client_key = self._client_key
            server_key = self._server_key
        stored_key = _sha256(client_key)
        without_proof = f"c={_b64enc(self._gs2_header.encode('ascii') + (self._end_point or b''))},r={nonce}"
        auth_message = ",".join((self._client_first_bare, text, without_proof)).encode("utf-8")
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        if server_key is not None:
            self._expected_server_signature = _hmac(server_key, auth_message)
        self._state = "final"
        return f"{without_proof},p={_b64enc(proof)}".encode("ascii")

    def server_final(self, data: bytes) -> None:
        """Check server-final-message; raise AuthError on an error or a wrong signature."""
        if self._state != "final":
            self._state = "failed"
            raise AuthError("unexpected SCRAM server-final-message")
        self._state = "failed"
        text = _decode_message(data, "server-final-message")
        parts = text.split(",")
        name, value = _split_attr(parts[0], "server-final-message")
        if name == "e":
            # Server error values are short RFC 5802 tokens; keep only safe characters.
            safe = re.sub(r"[^A-Za-z0-9_.-]", "?", value)[:64]
            raise AuthError(f"server reported SCRAM error: {safe}")
        if name != "v":
            raise AuthError("malformed SCRAM server-final-message: missing attribute 'v'")
        signature = _b64dec(value, "server signature")
        for ext in parts[1:]:
            _split_attr(ext, "server-final-message")
        if self._expected_server_signature is not None:
            if not hmac.compare_digest(signature, self._expected_server_signature):
                raise AuthError("SCRAM server signature mismatch: server not authenticated")
            self.server_verified = True
        self._state = "done"
