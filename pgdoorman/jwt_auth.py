"""JWT logins, as PgDoorman does them (needs the `jwt` extra: PyJWT with its crypto backend).

Towards clients: a user whose `password` is `jwt-pkey-fpath:/path/public.pem` is asked for a clear-text
password, which must be an RS256 token signed by that key, with `exp` (required, honoured), `nbf` (honoured
if present) and `preferred_username` equal to the user name. No issuer or audience checks, no JWKS.

Towards PostgreSQL: `server_password: jwt-priv-key-fpath:/path/private.pem` makes the pooler answer a
clear-text password request with a fresh RS256 token (`preferred_username` = server_username, expiring in
120 s), for servers that check tokens (a PAM or LDAP module behind `password`).
"""

from __future__ import annotations

import time
from typing import Any

TOKEN_LIFETIME = 120  # seconds, for tokens we mint towards PostgreSQL
LEEWAY = 0  # no clock skew allowance, as PgDoorman


class JwtSetupError(Exception):
    """A key or the library is missing; the message says which."""


def _jwt() -> Any:
    try:
        import jwt
    except ImportError:
        raise JwtSetupError("JWT authentication needs PyJWT: pip install 'pgdoorman[jwt]'") from None
    return jwt


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise JwtSetupError(f"cannot read {path}: {e.strerror or e}") from None


def load_public_key(path: str) -> Any:
    _jwt()
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(_read(path))
    except ValueError as e:
        raise JwtSetupError(f"{path} is not a PEM public key: {e}") from None


def load_private_key(path: str) -> Any:
    _jwt()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as e:
        raise JwtSetupError(f"{path} is not an unencrypted PEM private key: {e}") from None


def verify(token: str, key: Any, username: str) -> str | None:
    """None if `token` lets `username` in, else why not (for the log; the client only hears 28P01)."""
    jwt = _jwt()
    try:
        claims = jwt.decode(token, key, algorithms=["RS256"], leeway=LEEWAY,
                            options={"require": ["exp"], "verify_aud": False, "verify_iss": False})
    except jwt.PyJWTError as e:
        return f"invalid token: {e}"
    if claims.get("preferred_username") != username:
        return f"token is for {claims.get('preferred_username')!r}, not {username!r}"
    return None


def mint(key: Any, username: str, now: float | None = None) -> str:
    """A token for logging in to PostgreSQL as `username`."""
    jwt = _jwt()
    issued = int(time.time() if now is None else now)
    token: str = jwt.encode({"preferred_username": username, "iat": issued, "exp": issued + TOKEN_LIFETIME},
                            key, algorithm="RS256")
    return token
