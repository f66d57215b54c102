"""SSO sign-in for the web console and API (`web.sso_enabled`; needs the `jwt` extra): an RS256 JWT
signed by the key in `web.sso_public_key_file`, from `Authorization: Bearer`, the cookie
`sso_access_token` or `?token=` (in that order). Checked: the signature, `exp` (required), `nbf`, `aud`
against `web.sso_audience` (when set); the user (`preferred_username`, else `sub`) against
`web.sso_allowed_users` ("*" lets everyone in). Its groups (the claim `web.sso_groups_claim`, a list or
one string) in `web.sso_admin_groups` make it an Admin; else it is Sso: read-only, personal data
included. With `web.sso_require_https` a token counts only on a request a trusted proxy
(`web.trusted_proxies`) says came over HTTPS. The key is read once and again when the file changes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from pgdoorman import jwt_auth
from pgdoorman.config import WebConfig
from pgdoorman.metrics import webstats
from pgdoorman.metrics.server import HttpRequest

log = logging.getLogger("pgdoorman.web")

COOKIE = "sso_access_token"


@dataclass(frozen=True)
class Identity:
    role: str | None  # "admin", "sso", "anonymous", or None: 401
    user: str = ""
    why: str = ""  # why not (role None)

    @property
    def who(self) -> str:
        """The access log's name for it."""
        return f"{self.role}:{self.user}" if self.role and self.user else (self.role or "-")


def token_of(req: HttpRequest) -> str | None:
    """The SSO token of a request without an Authorization header: the cookie, else ?token=."""
    raw = req.headers.get("Cookie")
    if raw:
        try:
            morsel = SimpleCookie(raw).get(COOKIE)
        except CookieError:
            morsel = None
        if morsel is not None and morsel.value:
            return morsel.value
    token = parse_qs(req.query).get("token", [""])[-1]
    return token or None


def _refusal_reason(jwt: Any, e: Exception) -> str:
    """pg_doorman_web_sso_validation_errors_total's reason for a token PyJWT refused."""
    if isinstance(e, (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError)):
        return "expired"
    if isinstance(e, jwt.MissingRequiredClaimError) and e.claim == "exp":
        return "expired"
    if isinstance(e, jwt.InvalidAudienceError) or (isinstance(e, jwt.MissingRequiredClaimError) and e.claim == "aud"):
        return "audience"
    return "signature"


class SsoCheck:
    def __init__(self) -> None:
        self._key: tuple[str, float, Any] | None = None
        self._lock = threading.Lock()

    def key(self, path: str) -> Any:
        mtime = os.stat(path).st_mtime
        with self._lock:
            if self._key is None or self._key[:2] != (path, mtime):
                self._key = (path, mtime, jwt_auth.load_public_key(path))
            return self._key[2]

    def _usable(self, web: WebConfig) -> tuple[Any, Any] | str:
        """(the public key, the jwt module), or why SSO cannot check tokens (no key file, a key that does not
        load, no PyJWT)."""
        if not web.sso_public_key_file:
            return "web.sso_public_key_file is not set"
        try:
            return self.key(web.sso_public_key_file), jwt_auth._jwt()
        except (OSError, jwt_auth.JwtSetupError) as e:
            return f"cannot use web.sso_public_key_file {web.sso_public_key_file}: {e}"

    def config_error(self, web: WebConfig) -> str | None:
        """Why SSO cannot check tokens, None if it can (/api/auth/config, pg_doorman_web_sso_config_error)."""
        usable = self._usable(web)
        return usable if isinstance(usable, str) else None

    def identify(self, token: str, web: WebConfig, req: HttpRequest) -> Identity:
        if web.sso_require_https and req.forwarded_proto != "https":
            webstats.count_sso_error("insecure_transport")
            return Identity(None, why="SSO needs HTTPS through a trusted proxy (web.sso_require_https)")
        usable = self._usable(web)
        if isinstance(usable, str):
            log.error("SSO: %s", usable)
            return Identity(None, why="SSO is not usable: see the pooler's log")
        key, jwt = usable
        audience = list(web.sso_audience)
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=audience or None, leeway=0,
                                options={"require": ["exp"], "verify_aud": bool(audience)})
        except jwt.PyJWTError as e:
            webstats.count_sso_error(_refusal_reason(jwt, e))
            return Identity(None, why=f"invalid SSO token: {e}")
        user = claims.get("preferred_username") or claims.get("sub")
        if not isinstance(user, str) or not user:
            webstats.count_sso_error("no_username")
            return Identity(None, why="the SSO token names no user (preferred_username or sub)")
        if "*" not in web.sso_allowed_users and user not in web.sso_allowed_users:
            webstats.count_sso_error("allowlist")
            return Identity(None, user, f"SSO user {user!r} is not in web.sso_allowed_users")
        groups = claims.get(web.sso_groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        admin = isinstance(groups, list) and any(isinstance(g, str) and g in web.sso_admin_groups for g in groups)
        return Identity("admin" if admin else "sso", user)
