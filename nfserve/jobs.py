"""``nf serve --allow-jobs``: reconstructions run in one worker process, one at a time.

The server puts job specs on a queue; the worker (a ``spawn`` process, so the server's event
loop never runs a diffusion step) loads the pipeline once, runs each job through the library
(:func:`nfrecon.reconstruct.reconstruct`) and reports progress events back on a second queue;
a thread in the server folds them into the job table that pages and the server-sent events
read. Results are reconstruction sets in the store (``job-<id>``).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    id: str
    kind: str
    params: dict[str, Any]
    state: str = "queued"   # queued, running, done, failed
    step: int = 0
    steps: int = 0
    message: str = ""
    result: str | None = None  # reconstruction set name
    subject: str | None = None
    created: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "step": self.step,
                "steps": self.steps, "message": self.message, "result": self.result,
                "subject": self.subject,
                "params": {k: v for k, v in self.params.items() if k != "betas"}}


def _run(spec: dict[str, Any], store: str, sdxl: str, ip_adapter: str, events: Any) -> str:
    from nfrecon.reconstruct import ReconConfig, reconstruct

    jid, p = spec["id"], spec["params"]
    cfg = ReconConfig(steps=p["steps"], guidance=p["guidance"], ip_scale=p["ip_scale"],
                      samples=p["samples"], size=p["size"], batch=1)

    def on_step(step: int, steps: int) -> None:
        events.put((jid, "running", step, steps, ""))

    name = f"job-{jid}"
    if spec["kind"] == "upload":
        decoded = _decode_upload(store, jid, p)
        reconstruct(store, decoded, sdxl, ip_adapter, name, cfg, subjects=[p["subject"]],
                    split="test", on_step=on_step, encoder=p.get("encoder"))
    else:
        reconstruct(store, p["decoded"], sdxl, ip_adapter, name, cfg, subjects=[p["subject"]],
                    split=p["split"], stimuli=[p["stimulus"]], on_step=on_step,
                    encoder=p.get("encoder"))
    return name


def _decode_upload(store: str, jid: str, p: dict[str, Any]) -> str:
    """The uploaded betas through the checkpoint's adapter -> a one-row decoded set."""
    import numpy as np

    from nfrecon.decoded import write_decoded
    from nfstore import transaction
    from nftrain import checkpoint

    model, meta, _ = checkpoint.load(p["checkpoint"])
    emb = checkpoint.decode_betas(model, p["subject"], np.asarray([p["betas"]], np.float32))
    name = f"job-{jid}-decoded"
    with transaction(store, f"nf serve job {jid}") as tx:
        write_decoded(tx, name, p["subject"], emb,
                      np.array([f"upload/{jid}"], dtype=object), np.array(["test"], dtype=object),
                      np.ones(1, bool), np.ones(1, np.int64),
                      {"decoder": "checkpoint", "checkpoint": str(p["checkpoint"]),
                       "embedding": meta["embedding"], "source": "uploaded betas (nf serve)",
                       "split": "test"})
    return name


def worker(store: str, sdxl: str, ip_adapter: str, requests: Any, events: Any) -> None:
    """The worker process: one job at a time until ``None`` arrives."""
    while True:
        spec = requests.get()
        if spec is None:
            return
        events.put((spec["id"], "running", 0, spec["params"]["steps"], "started"))
        try:
            name = _run(spec, store, sdxl, ip_adapter, events)
            events.put((spec["id"], "done", spec["params"]["steps"], spec["params"]["steps"],
                        name))
        except Exception as err:  # noqa: BLE001 - reported to the page, the worker goes on
            events.put((spec["id"], "failed", 0, 0,
                        f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"))


class JobRunner:
    """The job table and the worker process behind it."""

    def __init__(self, store: Path, sdxl: Path, ip_adapter: Path) -> None:
        ctx = mp.get_context("spawn")
        self.requests, self.events = ctx.Queue(), ctx.Queue()
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.process = ctx.Process(target=worker, daemon=True, args=(
            str(store), str(sdxl), str(ip_adapter), self.requests, self.events))
        self.process.start()
        self._drain = threading.Thread(target=self._collect, daemon=True)
        self._stop = threading.Event()
        self._drain.start()

    def _collect(self) -> None:
        import queue

        while not self._stop.is_set():
            try:
                jid, state, step, steps, message = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            with self.lock:
                job = self.jobs.get(jid)
                if job is None:
                    continue
                job.state, job.step, job.steps = state, step, steps
                if state == "done":
                    job.result, job.message = message, "finished"
                elif message:
                    job.message = message

    def submit(self, kind: str, params: dict[str, Any], subject: str) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind, params, steps=params["steps"], subject=subject)
        with self.lock:
            self.jobs[job.id] = job
        self.requests.put({"id": job.id, "kind": kind, "params": params})
        return job

    def get(self, jid: str) -> Job | None:
        with self.lock:
            return self.jobs.get(jid)

    def close(self) -> None:
        self._stop.set()
        self.requests.put(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
