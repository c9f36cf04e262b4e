"""nf serve errors as clean one-line responses: mistyped parameters, a store that cannot be
read, a lying .npy header; the gallery's column labels; the store opener of the image cache."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.lib import format as npy_format
from PIL import Image

import nfstore
from nfserve import images as I  # noqa: E741
from nfserve.app import ServeConfig, create_app
from nfstore.errors import StoreError

from .conftest import BASE, TOKEN


@pytest.mark.parametrize("route", ["/subject/nsd/subj01", "/gallery/recon",
                                   "/compare?a=recon&b=recon-i2i"])
@pytest.mark.parametrize("value, found", [("abc", "'abc'"), ("1e9", "'1e9'"),
                                          ("1000000000", "1000000000"), ("-1", "-1")])
def test_a_bad_page_number_is_a_400(readonly: TestClient, route: str, value: str,
                                    found: str) -> None:
    sep = "&" if "?" in route else "?"
    for prefix in ("", "/api"):
        r = readonly.get(f"{prefix}{route}{sep}page={value}")
        assert r.status_code == 400, (prefix, route, value, r.text[:200])
        text = r.json()["error"] if prefix else re.search(r"<p>(.*)</p>", r.text).group(1)
        assert text.startswith("page: expected ") and found in text.replace("&#39;", "'")
        assert "\n" not in text and "Traceback" not in r.text


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                            "shape": shape})
    return buf.getvalue()


def test_an_npy_header_is_checked_before_anything_is_allocated(
        recorded: TestClient, served: dict[str, Path]) -> None:
    n = nfstore.open_store(served["store"]).dataset("nsd/subj01").sizes["voxel"]
    cases = [(_npy_header((10**12,)) + b"\0" * 64, f"expected float values of shape ({n},)"),
             (_npy_header((n,)) + b"\0" * 64, f"expected {4 * n} data bytes"),
             (_npy_header((n,)) + b"\0" * (4 * n + 4), f"expected {4 * n} data bytes"),
             (_npy_header((n,), "|O"), "holds Python objects"),
             (b"\x93NUMPY\x07\x00" + b"\0" * 64, "not a plain .npy array")]
    for payload, message in cases:
        r = recorded.post("/api/jobs/upload", data={"subject": "nsd/subj01", "steps": "2"},
                          headers={"x-nf-token": TOKEN}, files={"file": ("x.npy", payload)})
        assert r.status_code == 400 and message in r.json()["error"], r.text[:300]
    assert recorded.app.state.runner.jobs == {}
    good = _npy_header((n,)) + np.ones(n, "<f4").tobytes()
    r = recorded.post("/api/jobs/upload", data={"subject": "nsd/subj01", "steps": "2"},
                      headers={"x-nf-token": TOKEN}, files={"file": ("x.npy", good)})
    assert r.status_code == 202, r.text
    assert recorded.app.state.runner.jobs[r.json()["id"]].params["betas"] == [1.0] * n


def test_the_gallery_labels_its_columns(readonly: TestClient) -> None:
    for name, labels in (("recon-i2i", ["ground truth", "init: blurry", "reconstruction"]),
                         ("recon", ["ground truth", "reconstruction"])):
        html = readonly.get(f"/gallery/{name}").text
        head = re.search(r'<div class="row head">(.*?)</div>', html, re.S).group(1)
        assert re.findall(r'<span class="col">(.*?)</span>', head) == labels
        first = re.search(r'<div class="row" data-row="\d+">(.*?)</div>', html, re.S).group(1)
        assert first.count("<img ") == len(labels)  # one label per image column
    head = re.search(r'<div class="row head">(.*?)</div>',
                     readonly.get("/compare?a=recon&b=recon-i2i").text, re.S).group(1)
    assert re.findall(r'<span class="col">(.*?)</span>', head) == ["ground truth", "recon",
                                                                    "recon-i2i"]


def test_the_image_cache_opens_a_store_it_was_not_given(
        served: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    location = nfstore.open_store(served["store"]).location
    monkeypatch.setattr(I, "_OPENED", {})
    png = I._stimulus_png.__wrapped__(location, "nsd/00003", None)
    assert I._OPENED[location].location == location
    st = nfstore.open_store(served["store"])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))),
                                  np.asarray(st.images(["nsd/00003"]).values[0]))


class LostChunk(StoreError):
    """What the store raises when a chunk of an array is missing."""


class LosingStore:
    """Every store call fails as a store that lost a chunk does."""

    location = "lost"

    def __getattr__(self, name: str) -> object:
        def fail(*args: object, **kwargs: object) -> None:
            raise LostChunk(f"nsd/subj01/betas/c/0/0: expected a stored chunk\n"
                            f"(in {name}); found none")
        return fail


ROUTES = ["/", "/api/overview", "/subject/nsd/subj01", "/api/subject/nsd/subj01",
          "/subject/nsd/subj01/roi.png?roi=nsdgeneral", "/stimulus?id=nsd/00003",
          "/api/stimulus?id=nsd/00003", "/image/stimulus?id=nsd/00003",
          "/image/recon/recon/nsd/subj01/0/0", "/gallery/recon", "/api/gallery/recon",
          "/compare?a=recon&b=recon-i2i", "/api/compare?a=recon&b=recon-i2i", "/jobs"]


@pytest.fixture(scope="module")
def losing(served: dict[str, Path]) -> TestClient:
    app = create_app(ServeConfig(served["store"], allow_jobs=True, token=TOKEN),
                     runner=object())
    app.state.view.store = LosingStore()
    c = TestClient(app, base_url=BASE)
    c.cookies.set("nf_token", TOKEN)
    return c


@pytest.mark.parametrize("url", ROUTES)
def test_a_store_read_error_is_a_clean_500(losing: TestClient, url: str) -> None:
    r = losing.get(url)
    assert r.status_code == 500, r.text[:300]
    want = "nsd/subj01/betas/c/0/0: expected a stored chunk (in "
    if url.startswith(("/api/", "/image/")) or url.split("?")[0].endswith(".png"):
        assert r.json()["error"].startswith(want) and "\n" not in r.json()["error"]
    else:
        assert r.headers["content-type"].startswith("text/html")
        assert re.search(r"<h1 class=\"error\">500</h1><p>" + re.escape(want), r.text)
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_a_lost_chunk_is_a_500_naming_it(served: dict[str, Path], tmp_path: Path) -> None:
    store = Path(shutil.copytree(served["store"], tmp_path / "nf.zarr"))
    shutil.rmtree(store / "reconstructions/recon/nsd/subj01/images/c/0")  # row 0 lost
    c = TestClient(create_app(ServeConfig(store)), base_url=BASE)
    for url in ("/image/recon/recon/nsd/subj01/0/0", "/api/gallery/recon", "/gallery/recon",
                "/api/compare?a=recon&b=recon-i2i"):
        r = c.get(url)
        assert r.status_code == 500, (url, r.text[:300])
        text = r.json()["error"] if "/api/" in url or "/image/" in url else re.search(
            r"<p>(.*)</p>", r.text).group(1)
        assert "reconstructions/recon/nsd/subj01/images" in text and "expected a stored " \
            "chunk" in text and "\n" not in text, text
    assert c.get("/image/recon/recon/nsd/subj01/1/0").status_code == 200  # row 1 is there
