"""nf serve fixtures: the app over the served store, read-only and with jobs whose runner only
records what was submitted (no worker process, no pipeline)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from nfserve.app import ServeConfig, create_app
from nfserve.jobs import Job

BASE = "http://127.0.0.1"  # the app answers loopback Host names only
TOKEN = "secret"


class RecordingRunner:
    """A job runner that keeps submitted jobs (state ``queued``) and runs none."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def submit(self, kind: str, params: dict[str, Any], subject: str) -> Job:
        job = Job(f"{len(self.jobs):012x}", kind, params, steps=params["steps"], subject=subject)
        self.jobs[job.id] = job
        return job

    def get(self, jid: str) -> Job | None:
        return self.jobs.get(jid)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def readonly(served: dict[str, Path]) -> TestClient:
    """A read-only app over the served store."""
    return TestClient(create_app(ServeConfig(served["store"])), base_url=BASE)


@pytest.fixture
def recorded(served: dict[str, Path]) -> TestClient:
    """An app with jobs on (token ``secret``, the served checkpoint) and a
    :class:`RecordingRunner` (``client.app.state.runner``)."""
    cfg = ServeConfig(served["store"], allow_jobs=True, sdxl=served["sdxl"],
                      ip_adapter=served["ip_adapter"], checkpoints=(served["checkpoint"],),
                      token=TOKEN, size=32)
    return TestClient(create_app(cfg, runner=RecordingRunner()), base_url=BASE)
