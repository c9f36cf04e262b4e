"""nf serve routes with FastAPI's test client: pages, JSON twins, images, errors, security."""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import nfstore
from nfrecon.metrics import pixel_metrics
from nfrecon.report import chosen_images, ground_truth
from nfserve.app import ServeConfig, create_app

BASE = "http://127.0.0.1"  # the app answers loopback Host names only


@pytest.fixture(scope="module")
def client(served: dict[str, Path]) -> TestClient:
    return TestClient(create_app(ServeConfig(served["store"])), base_url=BASE)


def test_pages_and_their_json_twins(client: TestClient, served: dict[str, Path]) -> None:
    st = nfstore.open_store(served["store"])
    o = client.get("/api/overview").json()
    assert [s["key"] for s in o["subjects"]] == st.subjects()
    assert set(o["reconstructions"]) >= {"blurry", "recon", "recon-i2i"}  # + jobs of other tests
    assert o["reconstructions"]["recon-i2i"]["init"] == "blurry"
    assert "ip-adapter-sdxl" in o["embeddings"] and "ridge" in o["decoded"]
    html = client.get("/").text
    assert all(s in html for s in st.subjects()) and 'href="/gallery/recon"' in html
    s = client.get("/api/subject/nsd/subj01").json()
    ds = st.dataset("nsd/subj01")
    assert s["splits"]["test"] == int((ds.split.values == "test").sum())
    assert {r["roi"]: r["voxels"] for r in s["rois"]}["nsdgeneral"] == int(
        ds.roi_mask.sel(roi="nsdgeneral").values.sum())
    assert sum(c["train"] for c in s["sessions"].values()) == s["splits"]["train"]
    assert len(s["stimuli"]) == min(24, s["n_stimuli"]) and s["has_grid"]
    page2 = client.get("/api/subject/nsd/subj01?page=2").json()["stimuli"]
    assert not set(page2) & set(s["stimuli"])
    assert "/subject/nsd/subj01/roi.png?roi=" in client.get("/subject/nsd/subj01").text
    png = client.get("/subject/nsd/subj01/roi.png?roi=nsdgeneral")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    sid = s["stimuli"][0]
    stim = client.get(f"/api/stimulus?id={sid}").json()
    assert {t["subject"] for t in stim["trials"]} <= set(st.subjects()) and stim["trials"]
    assert sid in client.get(f"/stimulus?id={sid}").text


def test_images_are_the_stored_pixels_with_caching_headers(client: TestClient,
                                                           served: dict[str, Path]) -> None:
    from PIL import Image

    r = client.get("/image/recon/recon/nsd/subj01/0/0")
    assert r.status_code == 200 and "max-age" in r.headers["cache-control"]
    imgs, _ = chosen_images(served["store"], "recon", "nsd/subj01")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), imgs[0])
    r = client.get("/image/stimulus?id=nsd/00003")
    st = nfstore.open_store(served["store"])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))),
                                  np.asarray(st.images(["nsd/00003"]).values[0]))


def test_gallery_sorts_by_a_metric_and_pages(client: TestClient, served: dict[str, Path]
                                             ) -> None:
    g = client.get("/api/gallery/recon?subject=nsd/subj01&sort=pixcorr&order=asc").json()
    imgs, stim = chosen_images(served["store"], "recon", "nsd/subj01")
    want = pixel_metrics(ground_truth(nfstore.open_store(served["store"]), stim), imgs,
                         "mindeye2")["pixcorr"]
    got = [it["metrics"]["pixcorr"] for it in g["items"]]
    assert got == sorted(got) and got[0] == pytest.approx(want.min())
    assert g["n"] == len(stim) and set(g["metrics"]) == {"pixcorr", "ssim"}
    desc = client.get("/api/gallery/recon?sort=ssim&order=desc").json()["items"]
    assert [it["metrics"]["ssim"] for it in desc] == sorted(
        [it["metrics"]["ssim"] for it in desc], reverse=True)
    html = client.get("/gallery/recon-i2i?sort=pixcorr").text
    assert "/image/recon/blurry/nsd/subj01/" in html  # the blurry start shown beside
    c = client.get("/api/compare?a=recon&b=recon-i2i").json()
    assert c["n"] == len(stim) and set(c["table"]) == {"pixcorr", "ssim"}
    assert c["table"]["pixcorr"]["a"] == pytest.approx(want.mean())


@pytest.mark.parametrize("url, status", [
    ("/stimulus?id=../../etc/passwd", 400), ("/api/stimulus?id=nsd/99999999", 404),
    ("/api/gallery/..%2F..%2Fetc", 404), ("/api/gallery/nope", 404),
    ("/api/gallery/recon?sort=__class__", 400), ("/api/gallery/recon?order=sideways", 400),
    ("/api/subject/nsd/subj99", 404), ("/api/subject/nsd/..", 404),
    ("/image/recon/recon/nsd/subj01/999/0", 404), ("/image/stimulus?id=nsd/00003&size=9999", 400),
    ("/api/gallery/recon?page=0", 400), ("/subject/nsd/subj01/roi.png?roi=..", 404),
    ("/jobs", 404), ("/api/jobs/abc", 404)])
def test_bad_requests_get_a_clear_4xx(client: TestClient, url: str, status: int) -> None:
    r = client.get(url)
    assert r.status_code == status, (url, r.text[:200])
    if url.startswith("/api/") and status != 404 or "error" in r.text[:20]:
        assert "error" in r.json()


@pytest.fixture(scope="module")
def jobs(served: dict[str, Path]):  # noqa: ANN201
    app = create_app(ServeConfig(served["store"], allow_jobs=True, sdxl=served["sdxl"],
                                 ip_adapter=served["ip_adapter"],
                                 checkpoints=(served["checkpoint"],), token="secret", size=32))
    with TestClient(app, base_url=BASE) as c:
        yield c


def _upload(c: TestClient, payload: bytes, token: str | None = "secret") -> object:
    return c.post("/api/jobs/upload", data={"subject": "nsd/subj01", "steps": "2"},
                  headers={"x-nf-token": token} if token else {},
                  files={"file": ("x.npy", payload)})


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=True)
    return buf.getvalue()


def test_job_security(jobs: TestClient, served: dict[str, Path]) -> None:
    before = sorted(p.name for p in (served["store"] / "reconstructions").iterdir())
    n = nfstore.open_store(served["store"]).dataset("nsd/subj01").sizes["voxel"]
    good = np.zeros(n, np.float32)
    assert _upload(jobs, _npy(good), token=None).status_code == 403
    assert _upload(jobs, _npy(good), token="wrong").status_code == 403
    r = jobs.post("/api/jobs/trial", data={"decoded": "ridge", "subject": "nsd/subj01",
                                           "stimulus": "nsd/00003", "steps": "2"})
    assert r.status_code == 403
    for payload, msg in ((_npy(good[:-1]), f"shape ({n},)"),
                         (_npy(np.array([{"a": 1}], dtype=object)), "not a plain .npy"),
                         (pickle.dumps(good), "not a plain .npy"),  # never unpickled
                         (b"garbage", "not a plain .npy"),
                         (_npy(np.full(n, np.nan, np.float32)), "not finite"),
                         (b"\0" * (16 * 2**20 + 1), "larger than 16 MiB")):
        r = _upload(jobs, payload)
        assert r.status_code == 400 and msg in r.json()["error"], r.text[:300]
    r = jobs.post("/api/jobs/upload", data={"subject": "nsd/subj01", "checkpoint": "3"},
                  headers={"x-nf-token": "secret"}, files={"file": ("x.npy", _npy(good))})
    assert r.status_code == 400 and "checkpoint: expected 0..0" in r.json()["error"]
    r = jobs.post("/api/jobs/trial", headers={"x-nf-token": "secret"}, data={
        "decoded": "../ridge", "subject": "nsd/subj01", "stimulus": "nsd/00003"})
    assert r.status_code == 400
    assert sorted(p.name for p in (served["store"] / "reconstructions").iterdir()) == before


def _wait(c: TestClient, jid: str, timeout: float = 180) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = c.get(f"/api/jobs/{jid}").json()
        if j["state"] in ("done", "failed"):
            return j
        time.sleep(0.5)
    raise AssertionError(f"job {jid} did not finish in {timeout} s")


def test_trial_and_upload_jobs_write_reconstruction_sets(jobs: TestClient,
                                                         served: dict[str, Path]) -> None:
    st = nfstore.open_store(served["store"])
    d = st.decoded("ridge", "nsd/subj01")
    stim = str(d.stimulus.values[d.split.values == "test"][0])
    r = jobs.post("/api/jobs/trial", headers={"x-nf-token": "secret"}, data={
        "decoded": "ridge", "subject": "nsd/subj01", "stimulus": stim, "steps": "3"})
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    events = jobs.get(f"/api/jobs/{jid}/events").text  # streams until the job ends
    states = [line for line in events.splitlines() if line.startswith("data: ")]
    assert '"state": "done"' in states[-1] and len(states) >= 2
    j = _wait(jobs, jid)
    assert j["state"] == "done" and j["step"] == 3, j
    g = jobs.get(f"/api/gallery/{j['result']}").json()
    assert [it["stimulus"] for it in g["items"]] == [stim]
    assert jobs.get(f"/jobs/{jid}").text.count("result-image") == 1

    n = st.dataset("nsd/subj01").sizes["voxel"]
    x = np.asarray(st.betas("nsd/subj01", split="test").values[0], np.float32)
    assert x.shape == (n,)
    r = _upload(jobs, _npy(x))
    assert r.status_code == 202, r.text
    u = _wait(jobs, r.json()["id"])
    assert u["state"] == "done", u
    rec = nfstore.open_store(served["store"]).decoded(f"job-{u['id']}-decoded", "nsd/subj01")
    assert rec.sizes["stimulus"] == 1 and rec.attrs["source"] == "uploaded betas (nf serve)"
    assert jobs.get(f"/image/recon/{u['result']}/nsd/subj01/0/0").status_code == 200
    listed = jobs.get("/api/jobs", headers={"x-nf-token": "secret"}).json()
    assert {jid, u["id"]} <= {j["id"] for j in listed["jobs"]}
    assert listed["checkpoints"] == [str(served["checkpoint"])]
