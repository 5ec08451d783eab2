"""Flower, started as the README says, shows our workers, their queues and our tasks."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.job import ModelType
from common.queueing import queue_name
from common.status import JobStatus
from producer.client import Client
from tests.conftest import require
from tests.integration.cluster import Cluster
from worker.warm_routing import own_queue_name
from zq.processes import free_port, stop

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "zq", "flower-test"
SIDE = 32


@dataclass
class Flower:
    """One ``celery -A worker.celery_app flower`` process and its HTTP API."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD),
            timeout_s: float = 10.0) -> tuple[int, Any]:
        """GET a path; returns the status and the decoded JSON body (None if not JSON)."""
        request = urllib.request.Request(self.url + path)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def log_text(self) -> str:
        """Everything Flower printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def poll(flower: Flower, what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Call ``check`` until it returns something truthy; fail with Flower's log if never."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if flower.proc.poll() is not None:
            raise AssertionError(f"flower exited with {flower.proc.returncode}:\n"
                                 f"{flower.log_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"flower: {what} not seen within {timeout_s}s:\n"
                                 f"{flower.log_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture
def flower(cluster: Cluster, tmp_path: Path) -> Iterator[Flower]:
    """Flower on the cluster's broker, with basic auth, stopped by PID afterwards."""
    require(importlib.util.find_spec("flower") is not None, "flower (pip install -e '.[flower]')")
    port = free_port()
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower",
             "--address=127.0.0.1", f"--port={port}", f"--basic-auth={USER}:{PASSWORD}"],
            cwd=REPO, env={**os.environ, **cluster.env}, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Flower(f"http://127.0.0.1:{port}", proc, log)
    try:
        poll(server, "/healthcheck", lambda: _answers(server, "/healthcheck"), timeout_s=30)
        yield server
    finally:
        stop(proc)


def _answers(flower: Flower, path: str) -> bool:
    try:
        return flower.get(path, auth=None, timeout_s=2)[0] == 200
    except OSError:
        return False


def test_flower_shows_pinned_workers_their_queues_and_our_tasks(
        cluster: Cluster, client: Client, flower: Flower) -> None:
    names = {model: f"{model.value}-flower@test" for model in ModelType}
    started = [cluster.start(model, name=names[model], wait=False) for model in ModelType]
    for worker in started:
        cluster.wait_ready(worker)

    # Flower sees only events sent after it subscribed: wait until its event stream has
    # heard every worker (heartbeats, from task events) before sending any job.
    def alive() -> bool:
        status, body = flower.get("/api/workers?status=1")
        return status == 200 and all(body.get(name) for name in names.values())

    poll(flower, "worker heartbeats", alive)

    first = client.generate("a lighthouse", width=SIDE, height=SIDE, seed=3)
    second = client.edit("paint it red", parent=first.job_id)
    third = client.refine(parent=second.job_id)
    handles = {"zq.generate": first, "zq.edit": second, "zq.refine": third}
    records = {task: handle.wait(60) for task, handle in handles.items()}
    assert all(r.status is JobStatus.SUCCEEDED for r in records.values()), records
    expected_worker = {"zq.generate": names[ModelType.TURBO], "zq.edit": names[ModelType.EDIT],
                       "zq.refine": names[ModelType.BASE]}

    # /api/workers serves what Flower last learnt by `inspect`: once at its start, before
    # these workers existed. `refresh=1` inspects now (workers are idle, so they answer).
    def workers() -> dict[str, Any] | None:
        status, body = flower.get("/api/workers?refresh=1")
        if status != 200 or not all(name in body for name in names.values()):
            return None
        found: dict[str, Any] = body
        return found

    listed = poll(flower, "the three workers in /api/workers", workers)
    for model, name in names.items():
        consumed = sorted(q["name"] for q in listed[name].get("active_queues", []))
        # Its model's shared queue, and its own (adapter jobs passed to it by other workers).
        assert consumed == [queue_name(model), own_queue_name(model, name)], (name, consumed)
        assert {"zq.generate", "zq.edit", "zq.refine"} <= set(listed[name]["registered"])

    def tasks() -> dict[str, dict[str, Any]] | None:
        status, body = flower.get("/api/tasks")
        if status != 200:
            return None
        done = {t["name"]: t for t in body.values() if t.get("state") == "SUCCESS"}
        return done if set(handles) <= set(done) else None

    seen = poll(flower, "zq.generate, zq.edit, zq.refine in SUCCESS", tasks)
    for task, handle in handles.items():
        assert handle.job_id in seen[task]["kwargs"], seen[task]
        assert seen[task]["worker"] == expected_worker[task], seen[task]

    # The API never answers without the credentials; the health check stays open.
    for path in ("/api/workers", "/api/tasks", "/api/queues/length"):
        assert flower.get(path, auth=None)[0] == 401, path
        assert flower.get(path, auth=(USER, "wrong"))[0] == 401, path
    assert flower.get("/healthcheck", auth=None)[0] == 200
