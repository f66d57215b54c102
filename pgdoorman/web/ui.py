"""The console page (`web.ui`): static files shipped inside the package (pgdoorman/web/static: one HTML
shell, one script, one style sheet; no build step, nothing from a CDN), served by the JSON API's route
hook. The page reads /api/* with fetch and builds every element with DOM calls, putting server data in
with `textContent` only; the Content-Security-Policy below allows scripts from this listener and nothing
inline, so an application_name or a query text can never run as code.
"""

from __future__ import annotations

import functools
import html
from importlib import resources

from pgdoorman.metrics.server import HttpResponse

HTML = "text/html; charset=utf-8"
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"),
                    ("Referrer-Policy", "no-referrer")]
SIGN_IN_PAGE = (b"<!doctype html><meta charset=utf-8><title>pg_doorman: sign in</title>"
                b"<h1>Sign in required</h1><p>The pg_doorman console needs the admin console's user name and "
                b"password (HTTP Basic). Reload the page to be asked again.</p>")


@functools.cache
def asset(name: str) -> bytes:
    """A file of pgdoorman/web/static (read once; works from a wheel, a .deb or a checkout)."""
    return resources.files("pgdoorman.web").joinpath("static", name).read_bytes()


def page(status: int = 200, who: str = "-", headers: list[tuple[str, str]] | None = None,
         sso_url: str | None = None) -> HttpResponse:
    body = asset("index.html") if status == 200 else SIGN_IN_PAGE
    if status != 200 and sso_url:
        body += b'<p><a href="' + html.escape(sso_url, quote=True).encode() + b'">Sign in with SSO</a></p>'

    return HttpResponse(status, body, HTML, [*SECURITY_HEADERS, *(headers or [])], who=who)


def static(name: str) -> HttpResponse | None:
    """GET /static/<name>: one of ASSETS, None (404) for anything else."""
    kind = ASSETS.get(name)
    if kind is None:
        return None
    return HttpResponse(200, asset(name), kind, SECURITY_HEADERS)


def redirect(location: str, who: str) -> HttpResponse:
    return HttpResponse(303, b"", HTML, [("Location", location)], who=who)
