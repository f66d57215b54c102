"""Talos logins (PgDoorman's `talos` user; the `jwt` extra): a client logs in as user `talos` with a JWT as its
clear-text password. The token's header `kid` names the key (the file name, without extension, of one of
`talos.keys`); RS256, `exp` required, `nbf` honoured. Its `resource_access` claim maps resources named
`<anything>:<database>` to roles; the roles of the resources whose database is the one the client asked for
(and one of `talos.databases`) give the highest of `owner` > `read_write` > `read_only`, and the client is
logged in as the pool user of that name. `clientId` becomes its application_name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pgdoorman.jwt_auth import LEEWAY, _jwt, load_public_key

USERNAME = "talos"
ROLES = ("read_only", "read_write", "owner")  # lowest first


class TalosRefused(Exception):
    """Why a token does not let its client in (for the log; the client only hears 28P01)."""


@dataclass(frozen=True)
class Grant:
    role: str  # the pool user the client logs in as
    client_id: str  # its application_name


def load_keys(paths: Iterable[str]) -> dict[str, Any]:
    """kid (file name without extension) -> public key. JwtSetupError names a file that does not load."""
    keys = {}
    for path in paths:
        kid = os.path.splitext(os.path.basename(path))[0]
        keys[kid] = load_public_key(path)
    return keys


def verify(token: str, keys: Mapping[str, Any], database: str, databases: Iterable[str]) -> Grant:
    """The grant of `token` for `database`; TalosRefused says why not."""
    jwt = _jwt()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TalosRefused(f"not a JWT: {e}") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TalosRefused("the token's header has no kid")
    key = keys.get(kid)
    if key is None:
        raise TalosRefused(f"no talos key {kid!r} (talos.keys)")
    try:
        claims = jwt.decode(token, key, algorithms=["RS256"], leeway=LEEWAY,
                            options={"require": ["exp"], "verify_aud": False, "verify_iss": False})
    except jwt.PyJWTError as e:
        raise TalosRefused(f"invalid token: {e}") from None
    if database not in set(databases):
        raise TalosRefused(f"database {database!r} is not one of talos.databases")
    access = claims.get("resource_access")
    roles: list[str] = []
    if isinstance(access, dict):
        for resource, grant in access.items():
            _, sep, db = str(resource).partition(":")
            if sep and db == database and isinstance(grant, dict) and isinstance(grant.get("roles"), list):
                roles += [str(r) for r in grant["roles"]]
    if not roles:
        raise TalosRefused(f"the token grants no role on database {database!r}")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise TalosRefused(f"unsupported role {unknown[0]!r} in the token")
    client_id = claims.get("clientId")
    if not isinstance(client_id, str) or any(ord(c) < 0x20 or c == "\x7f" for c in client_id):
        client_id = ""  # not usable as an application_name
    return Grant(max(roles, key=ROLES.index), client_id)
