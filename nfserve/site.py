"""What every ``nf serve`` route shares: the options, the opened store, the templates and the
job token (one :class:`Site` per app, on ``app.state.site``), and the page renderer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.templating import Jinja2Templates

from nfserve import data as D

HERE = Path(__file__).parent


@dataclass
class Site:
    """The served store and options of one app.

    Attributes
    ----------
    cfg : nfserve.app.ServeConfig
        The ``nf serve`` options.
    view : nfserve.data.View
        The store, opened once.
    templates : Jinja2Templates
        The page templates (``nfserve/templates``).
    token : str
        The job token; empty when jobs are off.
    """

    cfg: Any
    view: D.View
    templates: Jinja2Templates
    token: str


def site(request: Request) -> Site:
    """The :class:`Site` of the app serving ``request``."""
    return request.app.state.site


def runner(request: Request) -> Any:
    """The job runner (``None`` until started, or when jobs are off)."""
    return request.app.state.runner


def render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    """Template ``name`` with ``ctx`` plus what the page frame shows (store, jobs link)."""
    s = site(request)
    return s.templates.TemplateResponse(request, name, {
        **ctx, "store_path": str(s.view.path), "jobs_enabled": s.cfg.allow_jobs},
        status_code=status)


def page(request: Request, name: str, d: dict[str, Any]) -> Response:
    """A page whose template reads its JSON twin's dict as ``d``."""
    return render(request, name, {"d": d})
