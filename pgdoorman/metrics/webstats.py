"""The web listener's own counters, exported as PgDoorman's `pg_doorman_web_*` families: requests by status
class and role (counted by the listener, metrics/server.py, for every request, /metrics included), sign-in
attempts by role and source and SSO token refusals by reason (counted by the JSON API, pgdoorman.web),
whether SSO is on and usable, and (pgdoorman's own) how long the API takes to build its views. One set per process, as there is one web listener.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pgdoorman.config import Config
from pgdoorman.metrics.exposition import Family

BUILD_BUCKETS = (0.001, 0.01, 0.1, 1.0)  # seconds
SSO_REASONS = ("signature", "expired", "audience", "no_username", "allowlist", "insecure_transport")

_lock = threading.Lock()
_requests: dict[tuple[str, str], int] = {}
_auth: dict[tuple[str, str], int] = {}
_sso_errors: dict[str, int] = dict.fromkeys(SSO_REASONS, 0)
_builds: dict[str, list[float]] = {}  # view -> [count per bucket..., count, sum of seconds]
# Why SSO cannot check tokens now (None: it can), set by the JSON API, which holds the key.
sso_problem: Callable[[Config], str | None] | None = None


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def request_role(who: str, status: int) -> str:
    """The role label of a request from the access log's `who` (`admin`, `sso:alice`, `admin:bob`,
    `anonymous`, `-`): a request nobody signed in for is `rejected` when it was answered 401, else
    `anonymous` (/metrics, static files, a refused cross-site POST)."""
    if who == "-":
        return "rejected" if status == 401 else "anonymous"
    return who.partition(":")[0]


def count_request(status: int, who: str) -> None:
    key = (status_class(status), request_role(who, status))
    with _lock:
        _requests[key] = _requests.get(key, 0) + 1


def count_auth(role: str, source: str) -> None:
    """role: admin, sso, anonymous or rejected; source: basic, sso or none."""
    with _lock:
        _auth[(role, source)] = _auth.get((role, source), 0) + 1


def count_sso_error(reason: str) -> None:
    with _lock:
        _sso_errors[reason] = _sso_errors.get(reason, 0) + 1


def count_build(view: str, seconds: float) -> None:
    """The JSON API built `view` from a snapshot (the first view of a snapshot window takes the snapshot)."""
    with _lock:
        b = _builds.setdefault(view, [0.0] * (len(BUILD_BUCKETS) + 2))
        for i, bound in enumerate(BUILD_BUCKETS):
            if seconds <= bound:
                b[i] += 1
        b[-2] += 1
        b[-1] += seconds


def families(config: Config) -> list[Family]:
    """pg_doorman_web_sso_enabled, _sso_config_error, _auth_attempts_total, _requests_total and
    _sso_validation_errors_total."""
    F = Family
    problem = None
    if config.web.sso_enabled:
        problem = sso_problem(config) if sso_problem is not None else "the JSON API is not running"
    with _lock:
        requests, auth, errors = dict(_requests), dict(_auth), dict(_sso_errors)
        builds = {view: list(b) for view, b in _builds.items()}
    req = F("pg_doorman_web_requests_total", "counter",
            "Requests to the web listener by status class (2xx, 4xx, ...) and role (admin, sso, anonymous, "
            "rejected: answered 401).")
    for (cls, role), n in sorted(requests.items()):
        req.add(n, {"status_class": cls, "role": role})
    att = F("pg_doorman_web_auth_attempts_total", "counter",
            "Sign-ins of console and API requests by the role they got (admin, sso, anonymous, rejected) and "
            "what they presented (basic, sso, none).")
    for (role, source), n in sorted(auth.items()):
        att.add(n, {"role": role, "source": source})
    sso = F("pg_doorman_web_sso_validation_errors_total", "counter",
            "SSO tokens refused, by reason: signature, expired, audience, no_username, allowlist, "
            "insecure_transport (web.sso_require_https without a trusted proxy saying https).")
    for reason, n in sorted(errors.items()):
        sso.add(n, {"reason": reason})
    build = F("pg_doorman_web_view_build_duration_seconds", "histogram",
              "Time the JSON API took to build a view from its one-second snapshot, by view (the first view "
              "of a window also takes the snapshot); at most one build per view and second.")
    for view, b in sorted(builds.items()):
        build.add_histogram({"view": view}, list(zip(BUILD_BUCKETS, (int(n) for n in b[:-2]), strict=True)),
                            b[-1], int(b[-2]))
    return [
        F("pg_doorman_web_sso_enabled", "gauge", "1 when web.sso_enabled is on and its public key is usable.")
        .add(1 if config.web.sso_enabled and problem is None else 0),
        F("pg_doorman_web_sso_config_error", "gauge",
          "1 when web.sso_enabled is on but SSO cannot check tokens (the key file is missing or not a PEM "
          "public key, or PyJWT is not installed); the reason is in /api/auth/config.")
        .add(1 if problem is not None else 0),
        att, req, sso, build,
    ]
