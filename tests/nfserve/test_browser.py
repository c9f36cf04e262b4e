"""nf serve in a real browser: Debian's headless Chromium driven by Playwright (no browser is
ever downloaded). Starts `nf serve --allow-jobs` on the synthetic store with the tiny models,
clicks through overview -> subject -> gallery, sorts by a metric, runs a reconstruction job,
watches its progress and sees the new image; screenshots go to the test's folder."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # CI must run it
pytestmark = pytest.mark.skipif(CHROMIUM is None and not REQUIRED,
                                reason="Debian's chromium is not installed (`make test` installs "
                                       "it with apt-get where it may)")
LOADED = """Promise.all([...document.images].map(i => { i.loading = "eager";
  return i.complete && i.naturalWidth ? 1 : new Promise(r => { i.onload = () => r(1);
  i.onerror = () => r(0); }); })).then(v => v.reduce((a, b) => a + b, 0))"""
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(served: dict[str, Path]):  # noqa: ANN201
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nf", "serve", str(served["store"]), "--port", str(port),
         "--allow-jobs", "--sdxl", str(served["sdxl"]), "--ip-adapter",
         str(served["ip_adapter"]), "--checkpoint", str(served["checkpoint"]), "--size", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import select

        ready, _, _ = select.select([proc.stdout], [], [], 120)  # bounded wait for the banner
        assert ready, "nf serve printed nothing within 120 s"
        line = proc.stdout.readline()  # "nf serve: STORE at http://127.0.0.1:PORT/?token=T"
        url = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        assert url, line + proc.stdout.read(2000) if proc.poll() is not None else line
        for _ in range(100):  # bounded wait for the port
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield url.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_click_through_sort_and_run_a_job(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI runs the browser test: Debian's chromium must be installed " \
                     "(.ci/install-chromium)"
    base = server.split("?")[0].rstrip("/")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(server)  # the token URL: sets the job cookie
        assert "Store overview" in page.content()
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
        page.click("text=nsd/subj01")
        page.wait_for_url(f"{base}/subject/nsd/subj01")
        assert page.locator("img[alt='ROI map']").evaluate("i => i.naturalWidth") > 0
        page.screenshot(path=str(tmp_path / "subject.png"), full_page=True)
        page.goto(base + "/")
        page.click("a[href='/gallery/recon']")
        page.click("#sort-pixcorr")  # descending first
        page.wait_for_url(re.compile(r".*sort=pixcorr.*"))
        values = [float(v) for v in page.locator(".metric-pixcorr").all_inner_texts()]
        assert values == sorted(values, reverse=True) and len(values) > 1
        page.click("#sort-pixcorr")  # again: ascending
        page.wait_for_url(re.compile(r".*order=asc.*"))
        values = [float(v) for v in page.locator(".metric-pixcorr").all_inner_texts()]
        assert values == sorted(values)
        assert page.evaluate(LOADED) == page.locator("img").count()  # every image arrived
        page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)

        page.goto(base + "/jobs")
        stim = page.evaluate("fetch('/api/gallery/recon').then(r => r.json())")["items"][0][
            "stimulus"]
        page.fill("input[name=stimulus]", stim)
        page.fill("#trial-form input[name=steps]", "20")
        page.click("#run-trial")
        page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{12}$"))
        seen = set()
        for _ in range(600):  # bounded: progress arrives over server-sent events
            seen.add(page.locator("#state").inner_text())
            if page.locator("#result-image").count():
                break
            page.wait_for_timeout(100)
        assert "done" in page.locator("#state").inner_text()
        assert seen & {"queued", "running"}, seen  # the page showed the job before its end
        img = page.locator("#result-image")
        img.wait_for()
        assert img.evaluate("i => i.complete && i.naturalWidth") == 32
        page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
        browser.close()
    for name in ("overview", "subject", "gallery", "job"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
