"""The ``nf serve`` application: server-rendered pages (Jinja2), each with a JSON twin under
``/api/``, images with caching headers, and (``allow_jobs``) token-protected reconstruction
jobs with progress over server-sent events.

:func:`create_app` assembles the routers (:mod:`nfserve.routes_pages`,
:mod:`nfserve.routes_jobs`), the error handlers and the middleware: security headers on every
response, the ``Host`` check (loopback plus the bound host; against DNS rebinding) and the
request guard (:mod:`nfserve.guard`), which refuses a state-changing request from its headers
before its body is read. No OpenAPI schema or docs pages are served.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.trustedhost import TrustedHostMiddleware

from nfserve import data as D
from nfserve import routes_jobs, routes_pages
from nfserve.guard import RequestGuard, SecurityHeaders, host_patterns
from nfserve.site import HERE, Site, render
from nfserve.upload import MAX_UPLOAD  # noqa: F401 - re-exported
from nfstore.errors import NFError, OptionError


@dataclass(frozen=True)
class ServeConfig:
    """``nf serve`` options (see ``nf serve --help``).

    ``hosts`` are the names besides 127.0.0.1, localhost and ::1 that requests may carry in
    their ``Host`` header (the bound ``--host`` and any ``--allowed-host``)."""

    store: Any  # path, URL or opened nfstore.Store
    allow_jobs: bool = False
    sdxl: Path | None = None
    ip_adapter: Path | None = None
    checkpoints: tuple[Path, ...] = ()
    encoder: Path | None = None
    token: str = ""
    size: int = 256
    hosts: tuple[str, ...] = ()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the job worker (jobs on, no runner given) and close the runner at shutdown."""
    s: Site = app.state.site
    if s.cfg.allow_jobs and app.state.runner is None:
        from nfserve.jobs import JobRunner

        app.state.runner = JobRunner(Path(s.view.path), s.cfg.sdxl, s.cfg.ip_adapter)
    try:
        yield
    finally:
        if app.state.runner is not None:
            app.state.runner.close()


def create_app(cfg: ServeConfig, runner: Any = None) -> FastAPI:
    """The app over ``cfg.store``; ``runner`` is the job runner (made on startup if jobs)."""
    view = D.View(cfg.store)
    token = cfg.token or (secrets.token_urlsafe(16) if cfg.allow_jobs else "")
    app = FastAPI(title="NeuroFusion", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan)
    app.state.site = Site(cfg, view, Jinja2Templates(directory=str(HERE / "templates")), token)
    app.state.token, app.state.runner, app.state.view = token, runner, view
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(routes_pages.router)
    app.include_router(routes_jobs.router)
    app.add_exception_handler(NFError, _nf_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(PermissionError, _forbidden)
    # added innermost first: the guard runs after the Host check, the headers wrap them all
    app.add_middleware(RequestGuard, limits=routes_jobs.LIMITS,
                       token=token if cfg.allow_jobs else "")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(cfg.hosts),
                       www_redirect=False)
    app.add_middleware(SecurityHeaders)
    return app


# ------------------------------------------------------------------------- errors
def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def error_response(request: Request, status: int, message: str) -> Response:
    """``{"error": message}`` for the API and images, else the error page."""
    message = one_line(message)
    path = request.url.path
    if path.startswith(("/api/", "/image/")) or path.endswith(".png"):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", {"status": status, "message": message}, status)


def nf_status(err: NFError) -> int:
    """404 for what the store does not hold, 400 for a malformed parameter, 500 for a store
    that cannot be read as it should (a missing chunk, a broken group)."""
    if isinstance(err, LookupError):
        return 404
    if isinstance(err, (D.BadRequest, OptionError)):
        return 400
    return 500


async def _nf_error(request: Request, err: Exception) -> Response:
    return error_response(request, nf_status(err), str(err))


async def _invalid(request: Request, err: Exception) -> Response:
    """A query, path or form parameter of the wrong type: a one-line 400 naming it."""
    first = err.errors()[0] if isinstance(err, RequestValidationError) and err.errors() else {}
    name = str(first.get("loc", ("request",))[-1])
    if first.get("type") == "missing":
        return error_response(request, 400, f"{name}: expected a value; found none")
    want = str(first.get("msg", "a valid value")).removeprefix("Input should be ")
    return error_response(request, 400, f"{name}: expected {want}; found "
                                        f"{str(first.get('input'))[:40]!r}")


async def _forbidden(request: Request, err: Exception) -> Response:
    return JSONResponse({"error": "a valid token is required for jobs (printed by nf serve at "
                                  "start; open the printed URL once, or send X-NF-Token)"},
                        status_code=403)
