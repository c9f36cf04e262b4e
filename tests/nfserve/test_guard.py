"""nf serve before any route runs: bodies refused unread, Host and Origin checks, the job
token on the job list, security headers, no OpenAPI schema."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nfserve.app import ServeConfig, create_app
from nfstore.errors import OptionError

from .conftest import BASE, TOKEN, RecordingRunner

HUGE = 400 * 2**20  # bytes a client says it will send


def _asgi_post(app: object, path: str, headers: dict[str, str], body: bytes = b""
               ) -> tuple[int, bytes, int]:
    """POST ``path`` to the ASGI ``app`` directly; (status, response body, number of times
    the app asked for request body chunks). The body is offered in 64 KiB chunks, as many as
    asked for, up to ``Content-Length``."""
    calls = 0
    sent: list[dict] = []
    length = int(headers.get("content-length", len(body)))

    async def receive() -> dict:
        nonlocal calls
        calls += 1
        if body:
            return {"type": "http.request", "body": body, "more_body": False}
        more = calls * 2**16 < length
        return {"type": "http.request", "body": b"\0" * 2**16, "more_body": more}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in
                         {"host": "127.0.0.1:8000", **headers}.items()]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:]), calls


def _jobs_app(served: dict[str, Path]) -> object:
    return create_app(ServeConfig(served["store"], allow_jobs=True,
                                  checkpoints=(served["checkpoint"],), token=TOKEN),
                      runner=RecordingRunner())


@pytest.mark.parametrize("jobs, path, headers, status, message", [
    (False, "/api/jobs/upload", {}, 404, "jobs are off"),
    (True, "/api/jobs/upload", {}, 403, "token: a valid job token is required"),
    (True, "/api/jobs/upload", {"x-nf-token": "wrong"}, 403, "token"),
    (True, "/api/jobs/upload", {"x-nf-token": TOKEN}, 413, "Content-Length: expected at most"),
    (True, "/api/jobs/trial", {"cookie": f"nf_token={TOKEN}"}, 413, "expected at most 65536"),
    (True, "/api/overview", {"x-nf-token": TOKEN}, 404, "no such job route"),
    (True, "/api/jobs/upload", {"x-nf-token": TOKEN, "origin": "http://evil.com"}, 403,
     "Origin: expected http://127.0.0.1:8000"),
])
def test_a_large_post_is_refused_before_its_body_is_read(
        served: dict[str, Path], jobs: bool, path: str, headers: dict[str, str], status: int,
        message: str) -> None:
    app = _jobs_app(served) if jobs else create_app(ServeConfig(served["store"]))
    got, body, calls = _asgi_post(app, path, {
        "content-type": "multipart/form-data; boundary=x", "content-length": str(HUGE),
        **headers})
    assert (got, calls) == (status, 0), body[:300]
    assert message in body.decode()


def test_missing_length_is_refused_and_a_good_post_is_read(served: dict[str, Path]) -> None:
    app = _jobs_app(served)
    got, body, calls = _asgi_post(app, "/api/jobs/trial", {"x-nf-token": TOKEN})
    assert (got, calls) == (411, 0) and b"Content-Length: expected a byte count" in body
    form = b"decoded=ridge&subject=nsd%2Fsubj01&stimulus=nsd%2F99999&steps=2"
    got, body, calls = _asgi_post(app, "/api/jobs/trial", {
        "x-nf-token": TOKEN, "content-type": "application/x-www-form-urlencoded",
        "content-length": str(len(form))}, form)
    assert calls >= 1 and got == 404 and b"nsd/99999" in body  # reached the route


@pytest.mark.parametrize("host, status", [
    ("evil.com", 400), ("evil.com:8000", 400), ("127.0.0.1.evil.com", 400),
    ("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
    ("my-box.lan:8000", 200)])
def test_only_loopback_and_the_given_hosts_are_answered(served: dict[str, Path], host: str,
                                                        status: int) -> None:
    named = {"hosts": ("my-box.lan",)} if host.startswith("my-box") else {}
    c = TestClient(create_app(ServeConfig(served["store"], **named)), base_url=BASE)
    r = c.get("/api/overview", headers={"host": host})
    assert r.status_code == status, r.text[:200]
    assert (status == 200) == ("subjects" in r.text)


def test_a_wildcard_host_is_a_one_line_error(served: dict[str, Path]) -> None:
    with pytest.raises(OptionError, match=r"allowed_hosts: expected a host name or IP "
                                          r"address; found '\*'"):
        create_app(ServeConfig(served["store"], hosts=("*",)))


@pytest.fixture(scope="module")
def trial(served: dict[str, Path]) -> dict[str, str]:
    """The form of a trial job: a row of the served store's decoded set ``ridge``."""
    import nfstore

    d = nfstore.open_store(served["store"]).decoded("ridge", "nsd/subj01")
    return {"decoded": "ridge", "subject": "nsd/subj01", "stimulus": str(d.stimulus.values[0]),
            "steps": "2"}


@pytest.mark.parametrize("headers, status", [
    ({"origin": "http://evil.com"}, 403), ({"origin": "null", "sec-fetch-site": "cross-site"},
                                           403),
    ({"origin": "http://127.0.0.1:9999"}, 403), ({"sec-fetch-site": "cross-site"}, 403),
    ({"sec-fetch-site": "same-site"}, 403), ({"origin": "file://"}, 403),
    ({"origin": "http://127.0.0.1", "sec-fetch-site": "cross-site"}, 403),
    ({"origin": "http://127.0.0.1"}, 202), ({"sec-fetch-site": "same-origin"}, 202),
    # a page with Referrer-Policy: no-referrer posts its forms with Origin: null
    ({"origin": "null", "sec-fetch-site": "same-origin"}, 202), ({}, 202)])
def test_job_posts_from_another_site_are_refused(recorded: TestClient, trial: dict[str, str],
                                                 headers: dict[str, str], status: int) -> None:
    recorded.cookies.set("nf_token", TOKEN)
    r = recorded.post("/api/jobs/trial", data=trial, headers=headers)
    assert r.status_code == status, r.text[:300]
    assert len(recorded.app.state.runner.jobs) == (status == 202)
    if status == 403:
        assert re.match(r"^(Origin|Sec-Fetch-Site): expected ", r.json()["error"])


def test_the_job_list_needs_the_token(recorded: TestClient, trial: dict[str, str],
                                      served: dict[str, Path]) -> None:
    assert recorded.post("/api/jobs/trial", data=trial,
                         headers={"x-nf-token": TOKEN}).status_code == 202
    r = recorded.get("/api/jobs")
    assert r.status_code == 403 and "token" in r.json()["error"]
    page = recorded.get("/jobs")
    assert page.status_code == 200 and "?token=" in page.text
    assert str(served["checkpoint"]) not in page.text and "/jobs/000000000000" not in page.text
    recorded.get(f"/?token={TOKEN}")  # the printed URL sets the cookie
    listed = recorded.get("/api/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == ["000000000000"]
    assert listed["checkpoints"] == [str(served["checkpoint"])]
    page = recorded.get("/jobs").text
    assert str(served["checkpoint"]) in page and "/jobs/000000000000" in page


HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
           "referrer-policy": "no-referrer"}


@pytest.mark.parametrize("url, status", [
    ("/", 200), ("/api/overview", 200), ("/image/stimulus?id=nsd/00003", 200),
    ("/static/style.css", 200), ("/static/site.js", 200), ("/gallery/nope", 404),
    ("/api/gallery/recon?page=0", 400), ("/openapi.json", 404), ("/docs", 404),
    ("/redoc", 404)])
def test_security_headers_and_no_schema(readonly: TestClient, url: str, status: int) -> None:
    r = readonly.get(url)
    assert r.status_code == status
    assert {k: r.headers.get(k) for k in HEADERS} == HEADERS
    csp = dict(p.strip().split(" ", 1) for p in r.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert "unsafe" not in r.headers["content-security-policy"]
    assert "openapi" not in r.text


def test_pages_have_no_inline_script(readonly: TestClient, recorded: TestClient,
                                     trial: dict[str, str]) -> None:
    """Under ``script-src 'self'`` an inline script or ``on...=`` handler would not run."""
    recorded.cookies.set("nf_token", TOKEN)
    jid = recorded.post("/api/jobs/trial", data=trial).json()["id"]
    pages = [readonly.get(u) for u in (
        "/", "/subject/nsd/subj01", "/stimulus?id=nsd/00003", "/gallery/recon-i2i",
        "/compare?a=recon&b=recon-i2i")] + [recorded.get(u) for u in ("/jobs", f"/jobs/{jid}")]
    for r in pages:
        assert r.status_code == 200, r.url
        assert not re.search(r"<script(?![^>]*\ssrc=)", r.text), r.url
        assert not re.search(r"\son[a-z]+\s*=", r.text), r.url
        assert '<script src="/static/site.js" defer></script>' in r.text
    job = pages[-1].text
    assert f'data-id="{jid}"' in job and 'data-live="1"' in job  # site.js follows it
    assert "data-autosubmit" in pages[3].text


def test_cli_allowed_host_is_checked_before_serving(served: dict[str, Path]) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    r = CliRunner().invoke(cli, ["serve", str(served["store"]), "--allowed-host", "*.lan"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: --allowed-host: expected a host name or IP address; found '*.lan'"], r.output
    assert "--allowed-host NAME" in CliRunner().invoke(cli, ["serve", "--help"]).output
