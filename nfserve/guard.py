"""ASGI middleware of ``nf serve`` that acts before any route runs or any body is read.

:class:`RequestGuard` answers every state-changing request (anything but GET, HEAD and OPTIONS)
from its headers alone: an unknown route, a cross-site origin, a missing or wrong job token, a
missing ``Content-Length`` or one over the route's limit is refused without calling the
``receive`` channel, so a large body is never received, parsed or spooled to disk.
:class:`SecurityHeaders` adds the browser hardening headers to every response.
"""

from __future__ import annotations

import json
import re
import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nfstore.errors import OptionError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_HEADER = "x-nf-token"
TOKEN_COOKIE = "nf_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
HOST_NAME = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$|"
                       r"^\[?[0-9a-f:.]+(%[a-z0-9]+)?\]?$")

# Pages load their script and style from /static only; images, the event stream and form
# posts stay on the same origin; the pages may not be framed (clickjacking).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def host_patterns(hosts: tuple[str, ...]) -> list[str]:
    """Host header values accepted: loopback plus ``hosts``, IPv6 literals in brackets (as
    Starlette's :class:`~starlette.middleware.trustedhost.TrustedHostMiddleware` compares).

    Raises
    ------
    OptionError
        A name that is not a host name or an IP address (wildcards included)."""
    out: list[str] = []
    for given in (*LOOPBACK, *hosts):
        h = str(given).strip().lower()
        if not HOST_NAME.match(h):
            raise OptionError(f"allowed_hosts: expected a host name or IP address; found "
                              f"{str(given)[:80]!r}")
        h = f"[{h}]" if ":" in h and not h.startswith("[") else h
        if h not in out:
            out.append(h)
    return out


def token_of(headers: Headers) -> str:
    """The job token a request carries: the ``X-NF-Token`` header, else the ``nf_token``
    cookie; empty if none."""
    given = headers.get(TOKEN_HEADER, "")
    if given:
        return given
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except CookieError:
        return ""
    morsel = cookie.get(TOKEN_COOKIE)
    return morsel.value if morsel is not None else ""


def token_ok(headers: Headers, token: str) -> bool:
    """Whether the request carries ``token`` (constant-time comparison)."""
    given = token_of(headers)
    return bool(token) and bool(given) and secrets.compare_digest(given.encode(), token.encode())


def cross_site(headers: Headers) -> str:
    """Why a state-changing request comes from another site, or empty if it does not.

    ``Sec-Fetch-Site`` (sent by current browsers to 127.0.0.1, localhost and https) must be
    ``same-origin`` or ``none``; ``Origin`` must be this server as the client addressed it
    (the ``Host`` header). ``Origin: null`` carries no origin: the pages' own forms send it,
    as their ``Referrer-Policy`` is ``no-referrer``, so it passes on, as does a request with
    neither header (a script), to the token check; the token cookie is ``SameSite=Strict``,
    so a browser does not send it with a request from another site."""
    host = headers.get("host", "").lower()
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: expected same-origin; found {site[:40]!r}"
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower() != "null":
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            return f"Origin: expected http://{host}; found {origin[:80]!r}"
    return ""


async def _refuse(send: Send, status: int, message: str) -> None:
    """A JSON ``{"error": message}`` response, sent without touching the request body."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Refuses a state-changing request from its headers, before its body is read.

    Parameters
    ----------
    app : ASGI application
        The application behind the guard.
    limits : dict of str to int
        The POST routes (path -> largest ``Content-Length`` in bytes); any other path or
        method that changes state is refused.
    token : str
        The job token; empty when jobs are off (every state-changing request is a 404).
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], token: str) -> None:
        self.app, self.limits, self.token = app, dict(limits), token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        status, message = self.check(scope["method"], scope["path"], Headers(scope=scope))
        if status:
            await _refuse(send, status, message)
            return
        await self.app(scope, receive, send)

    def check(self, method: str, path: str, headers: Headers) -> tuple[int, str]:
        """(HTTP status, one-line message) refusing the request, or (0, "") to let it in."""
        if not self.token:
            return 404, "jobs are off: start nf serve with --allow-jobs"
        limit = self.limits.get(path)
        if limit is None:
            return 404, f"{path[:80]}: no such job route; expected one of {sorted(self.limits)}"
        if method != "POST":
            return 405, f"method: expected POST for {path}; found {method[:10]}"
        why = cross_site(headers)
        if why:
            return 403, why
        if not token_ok(headers, self.token):
            return 403, ("token: a valid job token is required (the X-NF-Token header, or the "
                         "cookie set by opening the URL nf serve printed at start)")
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return 411, f"Content-Length: expected a byte count; found {length!r}"
        if int(length) > limit:
            return 413, (f"Content-Length: expected at most {limit} bytes for {path}; "
                         f"found {int(length)}")
        return 0, ""


class SecurityHeaders:
    """Adds ``X-Content-Type-Options``, ``Content-Security-Policy``, ``X-Frame-Options`` and
    ``Referrer-Policy`` to every HTTP response (those a route set itself are kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
