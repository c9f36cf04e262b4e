"""The read-only routes of ``nf serve``: each page with its JSON twin under ``/api/``, and the
PNG images (with caching headers). Query parameters are typed, so ``?page=abc`` is a 400 from
the app's validation handler before anything is read."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from nfserve import data as D
from nfserve import images as I  # noqa: E741
from nfserve.site import page as render_page
from nfserve.site import site

CACHE = {"Cache-Control": "public, max-age=3600"}

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> Response:
    s = site(request)
    resp = render_page(request, "overview.html", D.overview(s.view))
    if s.token and request.query_params.get("token") == s.token:  # as Jupyter: once, cookie
        resp.set_cookie("nf_token", s.token, httponly=True, samesite="strict")
    return resp


@router.get("/api/overview")
def api_overview(request: Request) -> dict:
    return D.overview(site(request).view)


@router.get("/subject/{dataset}/{subject}", response_class=HTMLResponse)
def subject(request: Request, dataset: str, subject: str, page: int = 1) -> Response:
    view = site(request).view
    d = D.subject_page(view, view.subject(dataset, subject), page)
    return render_page(request, "subject.html", d)


@router.get("/api/subject/{dataset}/{subject}")
def api_subject(request: Request, dataset: str, subject: str, page: int = 1) -> dict:
    view = site(request).view
    return D.subject_page(view, view.subject(dataset, subject), page)


@router.get("/subject/{dataset}/{subject}/roi.png")
def roi_png(request: Request, dataset: str, subject: str, roi: str) -> Response:
    view = site(request).view
    return Response(I.roi_png(view, view.subject(dataset, subject), roi),
                    media_type="image/png", headers=CACHE)


@router.get("/stimulus", response_class=HTMLResponse)
def stimulus(request: Request, id: str) -> Response:  # noqa: A002
    return render_page(request, "stimulus.html", D.stimulus_page(site(request).view, id))


@router.get("/api/stimulus")
def api_stimulus(request: Request, id: str) -> dict:  # noqa: A002
    return D.stimulus_page(site(request).view, id)


@router.get("/image/stimulus")
def stimulus_png(request: Request, id: str, size: int | None = None) -> Response:  # noqa: A002
    return Response(I.stimulus_png(site(request).view, id, size), media_type="image/png",
                    headers=CACHE)


@router.get("/image/recon/{name}/{dataset}/{subject}/{row}/{sample}")
def recon_png(request: Request, name: str, dataset: str, subject: str, row: int, sample: int
              ) -> Response:
    key = f"{D.check_name(dataset, 'dataset')}/{D.check_name(subject, 'subject')}"
    return Response(I.recon_png(site(request).view, name, key, row, sample),
                    media_type="image/png", headers=CACHE)


@router.get("/gallery/{name}", response_class=HTMLResponse)
def gallery(request: Request, name: str, subject: str | None = None, sort: str | None = None,
            order: str = "desc", page: int = 1) -> Response:
    d = D.gallery(site(request).view, name, subject or None, sort or None, order, page)
    return render_page(request, "gallery.html", d)


@router.get("/api/gallery/{name}")
def api_gallery(request: Request, name: str, subject: str | None = None,
                sort: str | None = None, order: str = "desc", page: int = 1) -> dict:
    return D.gallery(site(request).view, name, subject or None, sort or None, order, page)


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, a: str, b: str, subject: str | None = None, page: int = 1
            ) -> Response:
    d = D.compare(site(request).view, a, b, subject or None, page)
    return render_page(request, "compare.html", d)


@router.get("/api/compare")
def api_compare(request: Request, a: str, b: str, subject: str | None = None, page: int = 1
                ) -> dict:
    return D.compare(site(request).view, a, b, subject or None, page)

