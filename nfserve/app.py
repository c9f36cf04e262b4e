"""The ``nf serve`` application: server-rendered pages (Jinja2), each with a JSON twin under
``/api/``, images with caching headers, and (``allow_jobs``) token-protected reconstruction
jobs with progress over server-sent events."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from nfserve import data as D
from nfserve import images as I  # noqa: E741
from nfstore.errors import NFError

HERE = Path(__file__).parent
CACHE = {"Cache-Control": "public, max-age=3600"}
MAX_UPLOAD = 16 * 2**20  # bytes of one uploaded .npy
SSE_SECONDS = 1800       # an event stream ends after this long (bounded loop)


@dataclass(frozen=True)
class ServeConfig:
    """``nf serve`` options (see ``nf serve --help``)."""

    store: Any  # path, URL or opened nfstore.Store
    allow_jobs: bool = False
    sdxl: Path | None = None
    ip_adapter: Path | None = None
    checkpoints: tuple[Path, ...] = ()
    encoder: Path | None = None
    token: str = ""
    size: int = 256


def create_app(cfg: ServeConfig, runner: Any = None) -> FastAPI:
    """The app over ``cfg.store``; ``runner`` is the job runner (made on startup if jobs)."""
    view = D.View(cfg.store)
    app = FastAPI(title="NeuroFusion", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    tpl = Jinja2Templates(directory=str(HERE / "templates"))
    token = cfg.token or (secrets.token_urlsafe(16) if cfg.allow_jobs else "")
    app.state.token, app.state.runner, app.state.view = token, runner, view

    @app.on_event("startup")
    def _start() -> None:
        if cfg.allow_jobs and app.state.runner is None:
            from nfserve.jobs import JobRunner

            app.state.runner = JobRunner(Path(view.path), cfg.sdxl, cfg.ip_adapter)

    @app.on_event("shutdown")
    def _stop() -> None:
        if app.state.runner is not None:
            app.state.runner.close()

    @app.exception_handler(NFError)
    async def _errors(request: Request, err: NFError) -> Response:
        status = 404 if isinstance(err, (D.NotFound, LookupError)) else 400
        if request.url.path.startswith("/api/") or request.url.path.startswith("/image/"):
            return JSONResponse({"error": str(err)}, status_code=status)
        return tpl.TemplateResponse(request, "error.html", _ctx(
            {"status": status, "message": str(err)}), status_code=status)

    def _ctx(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "store_path": str(view.path), "jobs_enabled": cfg.allow_jobs}

    def page(request: Request, name: str, d: dict[str, Any]) -> Response:
        return tpl.TemplateResponse(request, name, _ctx({"d": d}))

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        resp = page(request, "overview.html", D.overview(view))
        if token and request.query_params.get("token") == token:  # as Jupyter: once, cookie
            resp.set_cookie("nf_token", token, httponly=True, samesite="strict")
        return resp

    @app.get("/api/overview")
    def api_overview() -> dict:
        return D.overview(view)

    @app.get("/subject/{dataset}/{subject}", response_class=HTMLResponse)
    def subject(request: Request, dataset: str, subject: str, page_: int = 1) -> Response:
        return page(request, "subject.html",
                    D.subject_page(view, view.subject(dataset, subject),
                                   int(request.query_params.get("page", page_))))

    @app.get("/api/subject/{dataset}/{subject}")
    def api_subject(dataset: str, subject: str, page: int = 1) -> dict:
        return D.subject_page(view, view.subject(dataset, subject), page)

    @app.get("/subject/{dataset}/{subject}/roi.png")
    def roi_png(dataset: str, subject: str, roi: str) -> Response:
        return Response(I.roi_png(view, view.subject(dataset, subject), roi),
                        media_type="image/png", headers=CACHE)

    @app.get("/stimulus", response_class=HTMLResponse)
    def stimulus(request: Request, id: str) -> Response:  # noqa: A002
        return page(request, "stimulus.html", D.stimulus_page(view, id))

    @app.get("/api/stimulus")
    def api_stimulus(id: str) -> dict:  # noqa: A002
        return D.stimulus_page(view, id)

    @app.get("/image/stimulus")
    def stimulus_png(id: str, size: int | None = None) -> Response:  # noqa: A002
        return Response(I.stimulus_png(view, id, size), media_type="image/png", headers=CACHE)

    @app.get("/image/recon/{name}/{dataset}/{subject}/{row}/{sample}")
    def recon_png(name: str, dataset: str, subject: str, row: int, sample: int) -> Response:
        key = f"{D.check_name(dataset, 'dataset')}/{D.check_name(subject, 'subject')}"
        return Response(I.recon_png(view, name, key, row, sample), media_type="image/png",
                        headers=CACHE)

    @app.get("/gallery/{name}", response_class=HTMLResponse)
    def gallery(request: Request, name: str, subject: str | None = None,
                sort: str | None = None, order: str = "desc", page_: int = 1) -> Response:
        d = D.gallery(view, name, subject or None, sort or None, order,
                      int(request.query_params.get("page", page_)))
        return page(request, "gallery.html", d)

    @app.get("/api/gallery/{name}")
    def api_gallery(name: str, subject: str | None = None, sort: str | None = None,
                    order: str = "desc", page: int = 1) -> dict:
        return D.gallery(view, name, subject or None, sort or None, order, page)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, a: str, b: str, subject: str | None = None) -> Response:
        return page(request, "compare.html", D.compare(view, a, b, subject or None,
                                                       int(request.query_params.get("page", 1))))

    @app.get("/api/compare")
    def api_compare(a: str, b: str, subject: str | None = None, page: int = 1) -> dict:
        return D.compare(view, a, b, subject or None, page)

    # ------------------------------------------------------------------- jobs
    def require_jobs(request: Request, form_token: str | None) -> Any:
        if not cfg.allow_jobs or app.state.runner is None:
            raise D.NotFound("jobs are off: start nf serve with --allow-jobs")
        given = form_token or request.headers.get("x-nf-token") or request.cookies.get(
            "nf_token")
        if not given or not secrets.compare_digest(given, token):
            raise PermissionError("token")
        return app.state.runner

    @app.exception_handler(PermissionError)
    async def _forbidden(request: Request, err: PermissionError) -> Response:
        return JSONResponse({"error": "a valid token is required for jobs (printed by nf serve"
                                      " at start; open the printed URL once)"}, status_code=403)

    @app.get("/api/jobs")
    def api_jobs() -> dict:
        if not cfg.allow_jobs:
            raise D.NotFound("jobs are off: start nf serve with --allow-jobs")
        runner = app.state.runner
        return {"jobs": [j.public() for j in runner.jobs.values()] if runner else [],
                "checkpoints": [str(c) for c in cfg.checkpoints]}

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request) -> Response:
        if not cfg.allow_jobs:
            raise D.NotFound("jobs are off: start nf serve with --allow-jobs")
        runner = app.state.runner
        st = view.store
        decoded = [n for n in st.decoded_sets()
                   if st.decoded(n, st.decoded_subjects(n)[0]).attrs.get("embedding",
                                                                         "ip-adapter-sdxl")
                   .startswith("ip-adapter")]
        return tpl.TemplateResponse(request, "jobs.html", _ctx({
            "jobs": [j.public() for j in runner.jobs.values()] if runner else [],
            "decoded": decoded, "subjects": st.subjects(),
            "token": token if request.cookies.get("nf_token") == token else "",
            "checkpoints": [str(c) for c in cfg.checkpoints]}))

    def job_params(steps: int, guidance: float, ip_scale: float, samples: int) -> dict:
        for name, ok, want, got in (("steps", 1 <= steps <= 200, "1..200", steps),
                                    ("guidance", 0 <= guidance <= 30, "0..30", guidance),
                                    ("ip_scale", 0 <= ip_scale <= 3, "0..3", ip_scale),
                                    ("samples", 1 <= samples <= 8, "1..8", samples)):
            if not ok:
                raise D.BadRequest(f"{name}: expected {want}; got {got}")
        if samples > 1 and cfg.encoder is None:
            raise D.BadRequest("samples: > 1 needs nf serve --encoder (the nf embed encoder)")
        return {"steps": steps, "guidance": guidance, "ip_scale": ip_scale, "samples": samples,
                "size": cfg.size, "encoder": str(cfg.encoder) if cfg.encoder else None}

    @app.post("/api/jobs/trial")
    def job_trial(request: Request, decoded: str = Form(...), subject: str = Form(...),
                  stimulus: str = Form(...), steps: int = Form(30), guidance: float = Form(5.0),
                  ip_scale: float = Form(1.0), samples: int = Form(1),
                  token_: str | None = Form(None, alias="token")) -> Response:
        runner = require_jobs(request, token_)
        st = view.store
        if D.check_name(decoded, "decoded") not in st.decoded_sets():
            raise D.NotFound(f"decoded set {decoded!r} is not in the store")
        if subject not in st.decoded_subjects(decoded):
            raise D.NotFound(f"decoded set {decoded!r} has no subject {subject[:40]!r}")
        view.stimulus(stimulus)
        d = st.decoded(decoded, subject)
        hit = np.flatnonzero(d.stimulus.values == stimulus)
        if hit.size == 0:
            raise D.NotFound(f"decoded set {decoded!r} has no row for {stimulus!r}")
        params = {**job_params(steps, guidance, ip_scale, samples), "decoded": decoded,
                  "subject": subject, "stimulus": stimulus,
                  "split": str(d.split.values[hit[0]])}
        job = runner.submit("trial", params, subject)
        return _job_response(request, job)

    @app.post("/api/jobs/upload")
    async def job_upload(request: Request, subject: str = Form(...),
                         file: UploadFile = File(...), steps: int = Form(30),
                         guidance: float = Form(5.0), ip_scale: float = Form(1.0),
                         samples: int = Form(1), checkpoint: int = Form(0),
                         token_: str | None = Form(None, alias="token")) -> Response:
        runner = require_jobs(request, token_)
        if not cfg.checkpoints:
            raise D.BadRequest("upload: nf serve was started without --checkpoint")
        if not 0 <= checkpoint < len(cfg.checkpoints):
            raise D.BadRequest(f"checkpoint: expected 0..{len(cfg.checkpoints) - 1} (one of "
                               f"nf serve's --checkpoint); got {checkpoint}")
        ckpt = cfg.checkpoints[checkpoint]
        raw = await file.read(MAX_UPLOAD + 1)
        if len(raw) > MAX_UPLOAD:
            raise D.BadRequest(f"file: larger than {MAX_UPLOAD // 2**20} MiB")
        betas = check_upload(raw, subject, ckpt)
        params = {**job_params(steps, guidance, ip_scale, samples), "subject": subject,
                  "checkpoint": str(ckpt), "betas": betas.tolist()}
        job = runner.submit("upload", params, subject)
        return _job_response(request, job)

    def check_upload(raw: bytes, subject: str, ckpt: Path) -> np.ndarray:
        from nftrain import checkpoint

        model, _, _ = checkpoint.load(ckpt)
        if subject not in model.spec.subjects:
            raise D.NotFound(f"subject: the checkpoint has no adapter for {subject[:40]!r}; it "
                             f"has {list(model.spec.subjects)}")
        want = model.spec.n_voxels[model.spec.subjects.index(subject)]
        try:
            x = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as err:
            raise D.BadRequest(f"file: not a plain .npy array ({str(err)[:120]})") from None
        except (OSError, EOFError):
            raise D.BadRequest("file: not a .npy file") from None
        if x.dtype.kind != "f" or x.shape != (want,):
            raise D.BadRequest(f"file: expected float values of shape ({want},) for {subject}; "
                               f"got {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise D.BadRequest(f"file: {int((~np.isfinite(x)).sum())} values are not finite")
        return x.astype(np.float32)

    def _job_response(request: Request, job: Any) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/jobs/{job.id}", status_code=303)
        return JSONResponse(job.public(), status_code=202)

    def _job(jid: str) -> Any:
        runner = app.state.runner
        job = runner.get(D.check_name(jid, "job")) if runner is not None else None
        if job is None:
            raise D.NotFound(f"job {jid[:20]!r} is not known")
        return job

    @app.get("/api/jobs/{jid}")
    def api_job(jid: str) -> dict:
        return _job(jid).public()

    @app.get("/jobs/{jid}", response_class=HTMLResponse)
    def job_page(request: Request, jid: str) -> Response:
        return tpl.TemplateResponse(request, "job.html", _ctx({"job": _job(jid).public()}))

    @app.get("/api/jobs/{jid}/events")
    async def job_events(jid: str) -> StreamingResponse:
        job = _job(jid)

        async def stream():  # noqa: ANN202 - server-sent events, bounded
            last = None
            for _ in range(int(SSE_SECONDS / 0.25)):
                state = job.public()
                if state != last:
                    yield f"data: {json.dumps(state)}\n\n"
                    last = state
                if state["state"] in ("done", "failed"):
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app
