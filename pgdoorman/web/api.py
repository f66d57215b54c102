"""The JSON API: `GET /api/<view>` (the SHOW commands' rows as JSON objects, plus an overview and the
process's sockets) and `POST /api/admin/{reload,pause,resume,reconnect}` (the console's commands), for
`web.ui`. A route hook of the web listener (metrics/server.py); serve.py plugs it in.

Access: Admin is HTTP Basic with the admin console's credentials (constant-time compare); Anonymous is
a request without credentials while `web.ui_anonymous` is on. No or wrong credentials: 401 with
`WWW-Authenticate: Basic realm="pg_doorman"`; authenticated but not allowed (Anonymous on a POST, or on
a view with personal data: client addresses, SQL text): 403. A POST must show it is not a cross-site
form or fetch: a same-origin `Origin` or `Sec-Fetch-Site`, or an `X-Requested-With` header (which a
cross-site page cannot send without a CORS preflight, and the listener grants none); else 403 before
credentials are even looked at.

Every view of one second reads the same snapshot (`SnapshotCache`): a page polling every view builds
each at most once a second, on the listener's threads, never on a worker.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pgdoorman.admin.resultset import BOOL, INT4, INT8, NUMERIC, ResultSet
from pgdoorman.admin.show import SHOW_BUILDERS, ShowContext, show_stats, version_string
from pgdoorman.core.stats import percentile
from pgdoorman.metrics import webstats
from pgdoorman.metrics.process import cached_socket_counts, process_facts
from pgdoorman.metrics.server import HttpRequest, HttpResponse
from pgdoorman.observe import Control, Observer, UnknownDatabase
from pgdoorman.observe.events import EventJournal, RecordingControl
from pgdoorman.web import ui, views
from pgdoorman.web.logtap import LogTap
from pgdoorman.web.sso import Identity, SsoCheck, token_of

log = logging.getLogger("pgdoorman.web")

REALM = 'Basic realm="pg_doorman"'
CACHE_SECONDS = 1.0
ADMIN = "admin"
SSO = "sso"
ANONYMOUS = "anonymous"

# GET /api/<name> -> the SHOW subcommand whose rows it returns.
TABLE_VIEWS: dict[str, str] = {
    "version": "version",
    "pools": "pools",
    "pools_extended": "pools_extended",
    "pools_memory": "pools_memory",
    "clients": "clients",
    "servers": "servers",
    "connections": "connections",
    "stats": "stats",
    "databases": "databases",
    "users": "users",
    "config": "config",
    "log_level": "log_level",
    "prepared": "prepared_statements",
    "lists": "lists",
    "auth_query": "auth_query",
    "pool_coordinator": "pool_coordinator",
    "pool_scaling": "pool_scaling",
    "interner": "interner",
    "listeners": "listeners",
    "startup_parameters": "startup_parameters",
}
OBJECT_VIEWS = ("overview", "sockets", "process")
LIVE_VIEWS = ("logs", "events")  # read live, not from the snapshot
VIEWS = (*TABLE_VIEWS, *views.DERIVED, *OBJECT_VIEWS, *LIVE_VIEWS)
# Views with personal data (client addresses and application names, SQL text, log lines): never anonymous.
# (And /api/prepared/text/<hash>, the SQL text of one statement.)
PERSONAL = frozenset({"clients", "prepared", "logs", "top/clients", "top/queries", "apps"})
PREPARED_TEXT = "prepared/text/"
ACTIONS = ("reload", "pause", "resume", "reconnect")

# Text columns whose values JSON carries typed: SHOW's 'true'/'false' and a port number.
_BOOL_TEXT = frozenset({"tls"})
_INT_TEXT = frozenset({("databases", "port")})

RunOnWorker = Callable[[Callable[[Any], None]], None]


# ------------------------------------------------------------------------------------------ JSON
def json_value(value: Any) -> Any:
    """A cell as JSON takes it: non-finite floats become null, integral floats stay floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _column_type(view: str, name: str, oid: int) -> str:
    if name in _BOOL_TEXT:
        return "boolean"
    if (view, name) in _INT_TEXT or oid in (NUMERIC, INT4, INT8):
        return "number"
    if oid == BOOL:
        return "boolean"
    return "string"


def _typed(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "boolean" and isinstance(value, str):
        return value == "true"
    if kind == "number" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return json_value(value)


def table_json(view: str, rs: ResultSet) -> dict[str, Any]:
    """A SHOW result as `{"columns": [{name, type}], "rows": [{column: value}]}`: the same columns in
    the same order, values typed (numbers as numbers, tls as a boolean)."""
    kinds = [(name, _column_type(view, name, oid)) for name, oid in rs.columns]
    rows = [{name: _typed(kind, cell) for (name, kind), cell in zip(kinds, row, strict=True)} for row in rs.rows]
    return {"columns": [{"name": n, "type": k} for n, k in kinds], "rows": rows}


def _int_param(params: dict[str, list[str]], name: str, default: int) -> int:
    raw = params.get(name, [""])[-1]
    if raw == "":
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a non-negative integer")
    return int(raw)


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, 0)
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value).lower())


def page_of(table: dict[str, Any], params: dict[str, list[str]]) -> dict[str, Any]:
    """One page of a table view, for a console showing 10,000 clients a hundred at a time:
    `filter` (rows with a cell containing it, case-insensitive), `sort` (a column; `-column` descending),
    `offset` and `limit`. Adds `total` (rows after the filter) and `offset` when any is given; without
    them the table is returned whole, as before."""
    if not any(k in params for k in ("filter", "sort", "offset", "limit")):
        return table
    rows: list[dict[str, Any]] = table["rows"]
    needle = params.get("filter", [""])[-1].strip().lower()
    if needle:
        rows = [r for r in rows if any(v is not None and needle in str(v).lower() for v in r.values())]
    sort = params.get("sort", [""])[-1]
    if sort:
        column, desc = sort.lstrip("-"), sort.startswith("-")
        if column not in {c["name"] for c in table["columns"]}:
            raise ValueError(f"no column {column!r} to sort by")
        rows = sorted(rows, key=lambda r: _sort_key(r.get(column)), reverse=desc)
    offset = _int_param(params, "offset", 0)
    limit = _int_param(params, "limit", len(rows))
    return {"columns": table["columns"], "rows": rows[offset:offset + limit], "total": len(rows),
            "offset": offset}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def error(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None,
          who: str = "-") -> HttpResponse:
    return HttpResponse(status, dumps({"error": code, "message": message}), headers=headers or [], who=who)


# ------------------------------------------------------------------------------------------ views
class LatencyWindow:
    """Query and transaction latency percentiles over the last window: the pools' histograms summed, minus
    their sum at the previous build (the overview is built at most once per snapshot, so a page polling
    every second sees each second's percentiles). A window without samples gives nulls; a pool going
    away (counts shrinking) restarts the window from the current sums."""

    def __init__(self) -> None:
        self._prev: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def measure(self, ctx: ShowContext) -> dict[str, Any]:
        sums: dict[str, list[int]] = {"query": [], "xact": []}
        for v in ctx.snap.pools:
            (qc, _, _), (xc, _, _), _ = ctx.obs.totals(v.key).hists
            for kind, counts in (("query", qc), ("xact", xc)):
                acc = sums[kind]
                if len(acc) < len(counts):
                    acc.extend([0] * (len(counts) - len(acc)))
                for i, c in enumerate(counts):
                    acc[i] += c
        out: dict[str, Any] = {}
        with self._lock:
            for kind, now in sums.items():
                prev = self._prev.get(kind, [])
                delta = [c - (prev[i] if i < len(prev) else 0) for i, c in enumerate(now)]
                if any(d < 0 for d in delta):
                    delta = [0] * len(now)
                n = sum(delta)
                out[kind] = {"count": n, **{f"p{int(q * 100)}": (percentile(delta, n, q) if n else None)
                                           for q in (0.5, 0.95, 0.99)}}
                self._prev[kind] = now
        return out


def build_overview(ctx: ShowContext, started: float | None, latency: LatencyWindow | None = None) -> dict[str, Any]:
    snap = ctx.snap
    clients: dict[str, int] = {"active": 0, "idle": 0, "waiting": 0, "login": 0}
    for c in snap.clients:
        clients[c.state] = clients.get(c.state, 0) + 1
    servers: dict[str, int] = {"active": 0, "idle": 0, "used": 0, "login": 0}
    for s in snap.servers:
        if s.state != "closed":
            servers[s.state] = servers.get(s.state, 0) + 1
    stats = show_stats(ctx)
    names = [c[0] for c in stats.columns]
    xi, qi = names.index("avg_xact_count"), names.index("avg_query_count")
    return {
        "version": version_string(),
        "started_at": started,
        "uptime_seconds": None if started is None else max(0, int(snap.wall - started)),
        "pools": len(snap.pools),
        "paused_pools": sum(1 for v in snap.pools if v.info.paused),
        "clients": clients,
        "servers": servers,
        "maxwait_us": max((v.maxwait_us for v in snap.pools), default=0),
        "xact_per_second": sum(float(r[xi] or 0) for r in stats.rows),
        "query_per_second": sum(float(r[qi] or 0) for r in stats.rows),
        "connections": ctx.obs.connection_counts(),
        # Microseconds (bucket upper bounds, as SHOW POOLS_EXTENDED's percentiles).
        "latency_us": latency.measure(ctx) if latency is not None else None,
    }


def build_process(started: float | None) -> dict[str, Any]:
    """/api/process: the pooler process's resources (metrics/process.py) with its start and uptime."""
    return {"started_at": started,
            "uptime_seconds": None if started is None else max(0, int(time.time() - started)),
            **process_facts()}


def build_sockets() -> dict[str, Any]:
    counts = cached_socket_counts()
    return {"available": counts is not None, "counts": counts or {}}


class SnapshotCache:
    """One ShowContext (so one snapshot) per `ttl` seconds, and each view built from it at most once.
    Building holds the lock: concurrent requests wait for the one build instead of taking their own."""

    def __init__(self, obs: Observer, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.obs = obs
        self.ttl = ttl
        self.clock = clock
        self.generation = 0
        self._lock = threading.Lock()
        self._ctx: ShowContext | None = None
        self._at = 0.0
        self._wall = 0.0
        self._results: dict[str, Any] = {}

    def get(self, name: str, build: Callable[[ShowContext], Any]) -> tuple[Any, float, int]:
        """The view `name` of the current snapshot: (data, wall time it was taken, generation)."""
        with self._lock:
            now = self.clock()
            if self._ctx is None or now - self._at >= self.ttl:
                self._ctx = ShowContext(self.obs)
                self._at = now
                self._wall = time.time()
                self._results = {}
                self.generation += 1
            if name not in self._results:
                started = time.perf_counter()
                self._results[name] = build(self._ctx)
                webstats.count_build(name, time.perf_counter() - started)
            return self._results[name], self._wall, self.generation

    def invalidate(self) -> None:
        """After a command: the next read takes a new snapshot, so it shows the command's effect."""
        with self._lock:
            self._ctx = None


# ------------------------------------------------------------------------------------------ access
def cross_site_reason(req: HttpRequest) -> str | None:
    """Why a POST looks cross-site (None if it does not): a mutating request must prove it comes from a
    page of this origin or from a script, never from another site's form or fetch."""
    h = req.headers
    site = (h.get("Sec-Fetch-Site") or "").strip().lower()
    if site and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = (h.get("Origin") or "").strip()
    if origin:
        host = (h.get("Host") or "").strip().lower()
        if origin == "null" or not host or urlsplit(origin).netloc.lower() != host:
            return f"Origin {origin} is not this listener"
        return None
    if site == "same-origin" or (h.get("X-Requested-With") or "").strip():
        return None
    return "a POST needs an X-Requested-With header (or a same-origin Origin)"


class WebApi:
    """The route hook: `__call__(request)` answers /api/* while `web.ui` is on (None otherwise: 404)."""

    def __init__(self, obs: Observer, control: Control, run_on_worker: RunOnWorker,
                 started: Callable[[], float] | None = None, ttl: float = CACHE_SECONDS,
                 logtap: LogTap | None = None, events: EventJournal | None = None) -> None:
        self.obs = obs
        self.logtap = logtap
        self.events = events
        self.sso = SsoCheck()
        self.control = control
        self.run_on_worker = run_on_worker
        self.started = started
        self.cache = SnapshotCache(obs, ttl)
        self.latency = LatencyWindow()
        webstats.sso_problem = lambda config: self.sso.config_error(config.web)

    # -------------------------------------------------------------- auth
    def identify(self, req: HttpRequest) -> Identity:
        """Who sent `req`: Admin (Basic with the admin credentials, or an SSO token with an admin group),
        Sso, Anonymous (no credentials, `ui_anonymous`), or role None (401) with why. Counted in
        pg_doorman_web_auth_attempts_total (role `rejected` for credentials that failed)."""
        ident, presented = self._identify(req)
        role = ident.role or ("rejected" if presented != "none" else ANONYMOUS)
        webstats.count_auth(role, presented if ident.role in (ADMIN, SSO) else "none")
        return ident

    def _identify(self, req: HttpRequest) -> tuple[Identity, str]:
        """The identity, and what the request presented: basic, sso or none."""
        cfg = self.obs.config
        header = (req.headers.get("Authorization") or "").strip()
        if header:
            scheme, _, cred = header.partition(" ")
            if scheme.lower() == "bearer":
                if not cfg.web.sso_enabled:
                    return Identity(None, why="Bearer tokens need web.sso_enabled"), "sso"
                return self.sso.identify(cred.strip(), cfg.web, req), "sso"
            if scheme.lower() != "basic":
                return Identity(None, why=f"{scheme} authorization is not supported"), "basic"
            try:
                user, sep, password = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, ValueError):
                return Identity(None, why="malformed Basic credentials"), "basic"
            g = cfg.general
            user_ok = hmac.compare_digest(user.encode("utf-8"), g.admin_username.encode("utf-8"))
            password_ok = hmac.compare_digest(password.encode("utf-8"), g.admin_password.encode("utf-8"))
            if sep and user_ok and password_ok and g.admin_password:
                return Identity(ADMIN), "basic"
            return Identity(None, why="invalid credentials"), "basic"
        token = token_of(req) if cfg.web.sso_enabled else None
        if token:
            return self.sso.identify(token, cfg.web, req), "sso"
        if cfg.web.ui_anonymous:
            return Identity(ANONYMOUS), "none"
        return Identity(None, why="authentication required"), "none"

    def role(self, req: HttpRequest) -> tuple[str | None, str]:
        """(ADMIN, SSO, ANONYMOUS or None for 401, and why not)."""
        ident = self.identify(req)
        return ident.role, ident.why

    # -------------------------------------------------------------- routing
    def __call__(self, req: HttpRequest) -> HttpResponse | None:
        if not self.obs.config.web.ui:
            return None
        if not (req.path == "/api" or req.path.startswith("/api/")):
            return self._page(req)
        name = req.path[len("/api/"):].strip("/")
        if name.startswith("admin/") or name == "admin":
            return self._admin(req, name[len("admin/"):])
        if name == "auth/config":
            if req.method not in ("GET", "HEAD"):
                return error(405, "method_not_allowed", "use GET", [("Allow", "GET, HEAD")])
            return self._auth_config(req)
        if name == "whoami":
            ident = self.identify(req)
            if ident.role is None:
                return self._unauthorized(ident)
            return HttpResponse(200, dumps({"role": ident.role, "user": ident.user, "admin": ident.role == ADMIN,
                                            "personal": ident.role != ANONYMOUS}), who=ident.who)
        if name not in VIEWS and not name.startswith(PREPARED_TEXT):
            return error(404, "not_found", f"no API endpoint /api/{name}")
        if req.method not in ("GET", "HEAD"):
            return error(405, "method_not_allowed", "use GET", [("Allow", "GET, HEAD")])
        ident = self.identify(req)
        if ident.role is None:
            return self._unauthorized(ident)
        if ident.role == ANONYMOUS and (name in PERSONAL or name.startswith(PREPARED_TEXT)):
            return error(403, "forbidden", "admin role required", who=ident.who)
        if name.startswith(PREPARED_TEXT):
            return self._prepared_text(name[len(PREPARED_TEXT):], ident.who)
        if name == "logs":
            return self._logs(ident.who, req.query)
        if name == "events":
            return self._events(ident, req.query)
        return self._view(name, ident.who, req.query)

    def challenges(self) -> list[tuple[str, str]]:
        out = [("WWW-Authenticate", REALM)]
        if self.obs.config.web.sso_enabled:
            out.append(("WWW-Authenticate", 'Bearer realm="pg_doorman"'))
        return out

    def _unauthorized(self, ident: Identity) -> HttpResponse:
        return error(401, "unauthorized", ident.why, self.challenges(), who=ident.who)

    def _events(self, ident: Identity, query: str) -> HttpResponse:
        """GET /api/events?after=<seq>&limit=<n>: the event journal, newest last. The source (an address)
        is not for Anonymous readers."""
        who = ident.who
        params = parse_qs(query)
        try:
            after = _int_param(params, "after", 0)
            limit = _int_param(params, "limit", 1000)
        except ValueError as e:
            return error(400, "bad_request", str(e), who=who)
        events, last = self.events.read(after, limit) if self.events is not None else ([], 0)
        rows = [e.as_dict() for e in events]
        if ident.role == ANONYMOUS:
            for r in rows:
                r["source"] = ""
        return HttpResponse(200, dumps({"view": "events", "events": rows, "last": last}), who=who)

    def _logs(self, who: str, query: str) -> HttpResponse:
        """GET /api/logs?after=<seq>&limit=<n>&level=<name>: the log tap's entries after `after`."""
        if self.logtap is None or self.obs.config.web.log_tap_max_entries <= 0:
            return error(404, "not_found", "the log tap is off (web.log_tap_max_entries: 0)", who=who)
        params = parse_qs(query)
        try:
            after = _int_param(params, "after", 0)
            limit = min(_int_param(params, "limit", 1000), 10_000)
        except ValueError as e:
            return error(400, "bad_request", str(e), who=who)
        level_name = params.get("level", ["debug"])[-1].lower()
        level = {"warn": logging.WARNING}.get(level_name, logging.getLevelName(level_name.upper()))
        if not isinstance(level, int):
            return error(400, "bad_request", f"unknown level {level_name!r}", who=who)
        body = {"view": "logs", **self.logtap.read(after, limit, level)}
        return HttpResponse(200, dumps(body), who=who)

    def _page(self, req: HttpRequest) -> HttpResponse | None:
        """The console: `/` (the shell; the same access as a view), `/static/*` (no data, no sign-in),
        `/login` (asks for Admin credentials even where Anonymous may read, then back to `/`)."""
        if req.method not in ("GET", "HEAD"):
            return None
        if req.path.startswith("/static/"):
            return ui.static(req.path[len("/static/"):])
        if req.path == "/favicon.ico":  # what a browser asks for on a page without an icon link
            return ui.static("favicon.svg")
        if req.path not in ("/", "/index.html", "/login"):
            return None
        ident = self.identify(req)
        sso_url = self.obs.config.web.sso_proxy_url if self.obs.config.web.sso_enabled else None
        if req.path == "/login":
            if ident.role != ADMIN:
                return ui.page(401, headers=self.challenges(), sso_url=sso_url)
            return ui.redirect("/", ident.who)
        if ident.role is None:
            return ui.page(401, headers=self.challenges(), sso_url=sso_url)
        return ui.page(who=ident.who)

    def _builder(self, name: str) -> Callable[[ShowContext], Any]:
        """How the view `name` is built from a snapshot (once per snapshot window)."""
        if name in TABLE_VIEWS:
            sub = TABLE_VIEWS[name]
            return lambda ctx: table_json(name, SHOW_BUILDERS[sub](ctx))
        if name in views.DERIVED:
            table = views.DERIVED[name][0]
            return lambda ctx: table_json(name, table(ctx))
        started = self.started() if self.started else None
        if name == "overview":
            return lambda ctx: build_overview(ctx, started, self.latency)
        if name == "process":
            return lambda ctx: build_process(started)
        return lambda ctx: build_sockets()

    def _view(self, name: str, who: str, query: str = "") -> HttpResponse:
        data, taken, generation = self.cache.get(name, self._builder(name))
        body: dict[str, Any] = {"view": name, "taken_at": taken, "snapshot": generation}
        if name in TABLE_VIEWS or name in views.DERIVED:
            params = parse_qs(query)
            try:
                if name in views.DERIVED:
                    params = views.DERIVED[name][1](params)
                    if "pool" in params:
                        data = views.only_pool(data, params["pool"][-1])
                data = page_of(data, params)
            except ValueError as e:
                return error(400, "bad_request", str(e), who=who)
            body.update(data)
        else:
            body["data"] = data
        return HttpResponse(200, dumps(body), who=who)

    def _prepared_text(self, text: str, who: str) -> HttpResponse:
        """GET /api/prepared/text/<hash>: the rows of SHOW PREPARED_STATEMENTS with that hash (one per pool whose
        cache holds the statement), SQL text included."""
        try:
            h = views.parse_hash(text)
        except views.BadRequest as e:
            return error(400, "bad_hash", str(e), who=who)
        data, taken, generation = self.cache.get("prepared", self._builder("prepared"))
        rows = [r for r in data["rows"] if r["hash"] == h]
        if not rows:
            return error(404, "not_found", "no prepared statement with this hash", who=who)
        body = {"view": "prepared/text", "taken_at": taken, "snapshot": generation, "hash": str(h),
                "columns": data["columns"], "rows": rows}
        return HttpResponse(200, dumps(body), who=who)

    def _auth_config(self, req: HttpRequest) -> HttpResponse:
        """GET /api/auth/config, for anyone (a page learns how to sign in before it can): whether SSO is on
        and usable, where to sign in, whether SSO admin groups are set, and who the request is signed in as."""
        web = self.obs.config.web
        ident = self.identify(req)
        problem = None
        if web.sso_enabled:
            problem = self.sso.config_error(web)
        current = None
        if ident.role in (ADMIN, SSO):
            basic = not ident.user
            current = {"username": self.obs.config.general.admin_username if basic else ident.user,
                       "source": "basic" if basic else "sso", "role": ident.role}
        data = {"sso_enabled": web.sso_enabled and problem is None, "sso_proxy_url": web.sso_proxy_url or None,
                "sso_config_error": problem, "sso_admin_groups_configured": bool(web.sso_admin_groups),
                "current_user": current}
        return HttpResponse(200, dumps({"view": "auth/config", "data": data}), who=ident.who)

    def _admin(self, req: HttpRequest, action: str) -> HttpResponse:
        if action not in ACTIONS:
            return error(404, "not_found", f"no admin command {action!r}; there are {', '.join(ACTIONS)}")
        if req.method != "POST":
            return error(405, "method_not_allowed", "use POST", [("Allow", "POST")])
        reason = cross_site_reason(req)
        if reason is not None:
            log.warning("refused cross-site POST /api/admin/%s from %s: %s", action, req.remote, reason)
            return error(403, "cross_site", f"refused as a possible cross-site request: {reason}")
        ident = self.identify(req)
        if ident.role is None:
            return self._unauthorized(ident)
        if ident.role != ADMIN:
            return error(403, "forbidden", "admin role required", who=ident.who)
        params = parse_qs(req.query, keep_blank_values=True)
        if "pool" in params:
            return error(400, "bad_request", "commands act on a database (?db=) or on every pool, not on one pool",
                         who=ident.who)
        db = params.get("db", [None])[-1] or None
        return self._run(action, db, ident.who, req.remote)

    def _run(self, action: str, db: str | None, who: str, remote: str = "") -> HttpResponse:
        verb = action.upper()
        control: Control = self.control
        if self.events is not None:
            control = RecordingControl(control, self.events, f"web API {remote} ({who})")
        if action == "reload":
            if db is not None:
                return error(400, "bad_request", "RELOAD takes no database", who=who)
            ok, message = control.reload()
            self.cache.invalidate()
            if not ok:
                return error(409, "reload_failed", f"RELOAD failed, the running configuration is kept: {message}",
                             who=who)
            log.info("RELOAD (web API)")
            return HttpResponse(200, dumps({"ok": True, "command": verb}), who=who)

        def act(here: Any) -> None:
            if action == "pause":
                control.pause(db, here)
            elif action == "resume":
                control.resume(db, here)
            else:
                control.reconnect(db)

        try:
            self.run_on_worker(act)
        except UnknownDatabase as e:
            return error(404, "unknown_database", f'No pool for database "{e.database}"', who=who)
        except TimeoutError:
            return error(503, "unavailable", f"{verb} was not run: the workers did not answer", who=who)
        self.cache.invalidate()
        log.info("%s %s (web API)", verb, db or "(all pools)")
        return HttpResponse(200, dumps({"ok": True, "command": verb, "database": db}), who=who)
