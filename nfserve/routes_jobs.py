"""The job routes of ``nf serve --allow-jobs``: the jobs page and list, a trial or an uploaded
voxel vector submitted for reconstruction, a job's page, state and server-sent events.

Every job route needs the token (``X-NF-Token`` header or the ``nf_token`` cookie); the POSTs
have already passed :class:`nfserve.guard.RequestGuard` (route, origin, token, body size)
before their form is read, and check the token again here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from nfserve import data as D
from nfserve.guard import token_ok
from nfserve.site import render, runner, site
from nfserve.upload import MAX_UPLOAD, check_upload

SSE_SECONDS = 1800  # an event stream ends after this long (bounded loop)
FORM_LIMIT = 64 * 2**10  # bytes of a job form without a file
LIMITS = {"/api/jobs/trial": FORM_LIMIT, "/api/jobs/upload": MAX_UPLOAD + FORM_LIMIT}

router = APIRouter()


def jobs_on(request: Request) -> None:
    """Raise :class:`~nfserve.data.NotFound` (404) unless jobs are on."""
    if not site(request).cfg.allow_jobs:
        raise D.NotFound("jobs are off: start nf serve with --allow-jobs")


def require_jobs(request: Request) -> Any:
    """The job runner, for a request that carries the token (else PermissionError: 403)."""
    jobs_on(request)
    if runner(request) is None:
        raise D.NotFound("jobs are off: start nf serve with --allow-jobs")
    if not token_ok(request.headers, site(request).token):
        raise PermissionError("token")
    return runner(request)


def _jobs(request: Request) -> list[dict[str, Any]]:
    r = runner(request)
    if r is None:
        return []
    with r.lock:
        return [j.public() for j in r.jobs.values()]


@router.get("/api/jobs")
def api_jobs(request: Request) -> dict:
    require_jobs(request)
    return {"jobs": _jobs(request),
            "checkpoints": [str(c) for c in site(request).cfg.checkpoints]}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> Response:
    jobs_on(request)
    s = site(request)
    if not token_ok(request.headers, s.token):  # the page only says how to get the token
        return render(request, "jobs.html", {"authorized": False})
    st = s.view.store
    decoded = [n for n in st.decoded_sets() if st.decoded_subjects(n) and
               st.decoded(n, st.decoded_subjects(n)[0]).attrs.get(
                   "embedding", "ip-adapter-sdxl").startswith("ip-adapter")]
    return render(request, "jobs.html", {
        "authorized": True, "jobs": _jobs(request), "decoded": decoded,
        "subjects": st.subjects(), "checkpoints": [str(c) for c in s.cfg.checkpoints]})


def job_params(request: Request, steps: int, guidance: float, ip_scale: float, samples: int
               ) -> dict[str, Any]:
    """The sampling parameters of a job, range-checked (400 names the parameter)."""
    cfg = site(request).cfg
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


@router.post("/api/jobs/trial")
def job_trial(request: Request, decoded: str = Form(...), subject: str = Form(...),
              stimulus: str = Form(...), steps: int = Form(30), guidance: float = Form(5.0),
              ip_scale: float = Form(1.0), samples: int = Form(1)) -> Response:
    jobs = require_jobs(request)
    view = site(request).view
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
    params = {**job_params(request, steps, guidance, ip_scale, samples), "decoded": decoded,
              "subject": subject, "stimulus": stimulus, "split": str(d.split.values[hit[0]])}
    return _job_response(request, jobs.submit("trial", params, subject))


@router.post("/api/jobs/upload")
async def job_upload(request: Request, subject: str = Form(...), file: UploadFile = File(...),
                     steps: int = Form(30), guidance: float = Form(5.0),
                     ip_scale: float = Form(1.0), samples: int = Form(1),
                     checkpoint: int = Form(0)) -> Response:
    jobs = require_jobs(request)
    ckpts = site(request).cfg.checkpoints
    if not ckpts:
        raise D.BadRequest("upload: nf serve was started without --checkpoint")
    if not 0 <= checkpoint < len(ckpts):
        raise D.BadRequest(f"checkpoint: expected 0..{len(ckpts) - 1} (one of nf serve's "
                           f"--checkpoint); got {checkpoint}")
    raw = await file.read(MAX_UPLOAD + 1)
    if len(raw) > MAX_UPLOAD:
        raise D.BadRequest(f"file: larger than {MAX_UPLOAD // 2**20} MiB")
    betas = check_upload(raw, subject, ckpts[checkpoint])
    params = {**job_params(request, steps, guidance, ip_scale, samples), "subject": subject,
              "checkpoint": str(ckpts[checkpoint]), "betas": betas.tolist()}
    return _job_response(request, jobs.submit("upload", params, subject))


def _job_response(request: Request, job: Any) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)
    return JSONResponse(job.public(), status_code=202)


def _job(request: Request, jid: str) -> Any:
    r = runner(request)
    job = r.get(D.check_name(jid, "job")) if r is not None else None
    if job is None:
        raise D.NotFound(f"job {jid[:20]!r} is not known")
    return job


@router.get("/api/jobs/{jid}")
def api_job(request: Request, jid: str) -> dict:
    return _job(request, jid).public()


@router.get("/jobs/{jid}", response_class=HTMLResponse)
def job_page(request: Request, jid: str) -> Response:
    return render(request, "job.html", {"job": _job(request, jid).public()})


@router.get("/api/jobs/{jid}/events")
async def job_events(request: Request, jid: str) -> StreamingResponse:
    job = _job(request, jid)

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
