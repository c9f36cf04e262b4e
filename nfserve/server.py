"""Start ``nf serve``: validate options, print the URL (and the job token), run uvicorn."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nfstore
from nfstore.errors import OptionError


def _check_jobs(opened: Any, sdxl: str | None, ip_adapter: str | None,
                checkpoints: list[str]) -> None:
    """One-line errors for ``allow_jobs`` options that cannot work (before anything runs)."""
    if opened.remote:
        raise OptionError(f"allow_jobs: jobs write reconstruction sets into the store, which "
                          f"needs a local folder; {opened.location} is a URL (serve it "
                          f"read-only)")
    from nfrecon.pipeline import locate_ip_adapter, locate_sdxl

    if sdxl is None or ip_adapter is None:
        missing = [n for n, v in (("sdxl", sdxl), ("ip_adapter", ip_adapter)) if v is None]
        raise OptionError(f"allow_jobs: expected the sdxl and ip_adapter folders jobs use "
                          f"(--sdxl, --ip-adapter); found no {' and no '.join(missing)}")
    locate_sdxl(sdxl)
    locate_ip_adapter(ip_adapter)
    from nftrain import checkpoint as ck

    for c in checkpoints:
        ck.load(c)  # one-line error for a folder that is not a checkpoint


def run(store: str, host: str, port: int, allow_jobs: bool, sdxl: str | None,
        ip_adapter: str | None, checkpoints: list[str], encoder: str | None, size: int,
        echo: Callable[[str], None] = print, allowed_hosts: Sequence[str] = ()) -> None:
    """Serve ``store`` on ``host:port`` until interrupted.

    Requests must name 127.0.0.1, localhost, ::1, ``host`` or one of ``allowed_hosts`` in
    their ``Host`` header (others get 400: a page of another site cannot reach the store
    through DNS rebinding)."""
    import uvicorn

    from nfserve.app import ServeConfig, create_app

    opened = nfstore.open_store(store)  # one-line error if it is not a store
    if allow_jobs:
        _check_jobs(opened, sdxl, ip_adapter, checkpoints)
    token = secrets.token_urlsafe(16) if allow_jobs else ""
    cfg = ServeConfig(opened, allow_jobs, Path(sdxl) if sdxl else None,
                      Path(ip_adapter) if ip_adapter else None,
                      tuple(Path(c) for c in checkpoints),
                      Path(encoder) if encoder else None, token, size,
                      hosts=(host, *allowed_hosts))
    app = create_app(cfg)  # one-line error for a host name that is not one
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    echo(f"nf serve: {opened.location} at {url}" + ("" if allow_jobs else " (read-only)"))
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: --host {host} makes the store reachable from the network")
        if host in ("0.0.0.0", "::") and not allowed_hosts:
            echo("note: requests must name 127.0.0.1 or localhost in their Host header; add "
                 "--allowed-host NAME for each name other machines use to reach this one")
    uvicorn.run(app, host=host, port=port, log_level="warning")
