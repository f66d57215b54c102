"""Authenticating a client, without I/O: the authentication request to send, then each password message in
and the bytes to send back plus where the exchange stands out (the client-side twin of server_login.py).

`ClientLogin` (login.py) owns the socket, the pg_hba decision, timers and the checks that need a thread or
a key (PAM, JWT): for a clear-text password `ClientAuth` only hands the password over (CHECK) and is told the
verdict. Methods: md5 (a salted hash of the stored md5 hash), SCRAM-SHA-256 (against a stored verifier, or
one derived from a plain-text password), and clear text for JWT and PAM users. An unknown user gets a
believable SCRAM exchange that can only fail, with a salt that stays the same across attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from pgdoorman.protocol import auth
from pgdoorman.protocol import messages as m

# What feed() says after a password message.
PENDING = 0  # send the bytes and wait for the next password message
OK = 1  # authenticated: send the bytes (SASL final, if any), then AuthenticationOk is the caller's
FAILED = 2  # wrong password, unknown user or a broken exchange: 28P01, or `error` (PostgreSQL's own words); `why` logs it
CHECK = 3  # a clear-text password (`password`): the caller checks it (PAM, JWT) and reports the verdict

# The exchange's own steps.
_MD5, _SASL_FIRST, _SASL_FINAL, _CLEARTEXT, _DONE, _SASL_LATE = range(6)

# Fake SCRAM salt for unknown users: derived from a per-process key so repeated attempts look stable.
_FAKE_KEY = os.urandom(32)


class ClientAuth:
    __slots__ = ("user", "stored", "step", "salt", "scram", "why", "error", "password", "client_key", "mechanism")

    def __init__(self, user: str, stored: str, *, cleartext: bool = False, force_md5: bool = False,
                 plain_verifier: Callable[[], auth.ScramVerifier] | None = None,
                 end_point: bytes | None = None) -> None:
        """`stored`: the configured password (plain text, an md5 hash or a SCRAM verifier; "" for an unknown
        user). `cleartext`: ask for the password in clear (JWT and PAM users). `force_md5`: pg_hba chose md5,
        so a plain-text password is used as its md5 hash. `plain_verifier`: the (cached) SCRAM verifier of a
        plain-text stored password. `end_point`: the client is on TLS and SCRAM may bind to it (ScramServer)."""
        self.user = user
        self.why = ""
        self.error: auth.AuthError | None = None  # a failure PostgreSQL reports in its own words (sqlstate set)
        self.password = ""
        self.mechanism = ""  # the SASL mechanism of a SASLInitialResponse without data (_SASL_LATE)
        self.client_key: bytes | None = None  # the ClientKey a SCRAM client proved (SCRAM passthrough)
        self.salt = b""
        self.scram: auth.ScramServer | None = None
        if cleartext:
            self.stored, self.step = stored, _CLEARTEXT
            return
        if force_md5 and stored and not auth.is_md5_hash(stored) and not auth.is_scram_verifier(stored):
            stored = auth.md5_stored(user, stored)  # the plain-text password as md5 hashes it
        self.stored = stored
        if stored and auth.is_md5_hash(stored):
            self.salt = os.urandom(4)
            self.step = _MD5
            return
        if stored and auth.is_scram_verifier(stored):
            verifier = auth.ScramVerifier.parse(stored)
        elif stored:
            verifier = plain_verifier() if plain_verifier is not None else auth.ScramVerifier.from_password(stored)
        else:
            # Unknown user (or no password): run a believable exchange that can only fail.
            seed = hmac.new(_FAKE_KEY, user.encode(), hashlib.sha256).digest()
            verifier = auth.ScramVerifier(4096, seed[:16], os.urandom(32), os.urandom(32))
        self.scram = auth.ScramServer(verifier, end_point=end_point)
        self.step = _SASL_FIRST

    def request(self) -> bytes:
        """The authentication request that opens the exchange."""
        if self.step == _CLEARTEXT:
            return m.AUTH_CLEARTEXT
        if self.step == _MD5:
            return m.auth_md5(self.salt)
        assert self.scram is not None
        return m.auth_sasl(self.scram.mechanisms)

    @property
    def sasl(self) -> bool:
        """A SASL (SCRAM) exchange is under way: what PostgreSQL's refusal of another message type says."""
        return self.scram is not None

    def feed(self, body: bytes) -> tuple[bytes, int]:
        """One password message's body (PasswordMessage, SASLInitialResponse or SASLResponse). A message
        PostgreSQL cannot read raises ProtocolViolation with its words."""
        step = self.step
        if step == _CLEARTEXT or step == _MD5:
            if not body or body.find(b"\x00") != len(body) - 1:  # one string, its NUL last (recv_password_packet)
                raise m.ProtocolViolation("invalid password packet size")
        if step == _CLEARTEXT:
            self.step = _DONE
            self.password = body[:-1].decode("utf-8", "replace")
            return b"", CHECK
        if step == _MD5:
            self.step = _DONE
            if self.stored and auth.md5_verify(self.user, self.stored, self.salt, body[:-1]):
                return b"", OK
            return self._fail("wrong md5 password" if self.stored else "no such user")
        scram = self.scram
        if scram is None or step == _DONE:
            return self._fail("password message after the exchange ended")
        try:
            if step == _SASL_FIRST:
                return self._sasl_first(scram, body), PENDING
            if step == _SASL_LATE:  # the client-first-message after an empty challenge
                self.step = _SASL_FINAL
                return m.auth_sasl_continue(scram.client_first(self.mechanism, body)), PENDING
            self.step = _DONE
            final = scram.client_final(body)
        except auth.AuthError as e:
            if e.sqlstate:
                self.error = e
            return self._fail(str(e))
        if not self.stored:
            return self._fail("no such user")
        if scram.client_key is not None and auth.is_scram_verifier(self.stored):
            self.client_key = scram.client_key
        return m.auth_sasl_final(final), OK

    def _sasl_first(self, scram: auth.ScramServer, body: bytes) -> bytes:
        """SASLInitialResponse, read as PostgreSQL reads it (CheckSASLAuth), in its words."""
        end = body.find(b"\x00")
        if end < 0:
            raise m.ProtocolViolation("invalid string in message")
        mech = body[:end].decode(errors="replace")
        pos = end + 1
        if len(body) < pos + 4:
            raise m.ProtocolViolation("insufficient data left in message")
        (dl,) = m.I32.unpack_from(body, pos)
        pos += 4
        if dl < -1 or pos + max(dl, 0) > len(body):
            raise m.ProtocolViolation("insufficient data left in message")
        if pos + max(dl, 0) != len(body):
            raise m.ProtocolViolation("invalid message format")
        if dl == -1:  # no initial response: an empty challenge, and the client-first-message comes next
            scram.select(mech)  # (PostgreSQL checks the mechanism before its challenge)
            self.step = _SASL_LATE
            self.mechanism = mech
            return m.auth_sasl_continue(b"")
        reply = scram.client_first(mech, body[pos:])
        self.step = _SASL_FINAL
        return m.auth_sasl_continue(reply)

    def _fail(self, why: str) -> tuple[bytes, int]:
        self.step = _DONE
        self.why = why
        self.scram = None
        return b"", FAILED
