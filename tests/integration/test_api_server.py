"""A real ``zq api`` process against Redis, Ceph RGW and a real turbo worker."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.job import ModelType
from tests.integration.cluster import Cluster
from zq.processes import die_with_parent, free_port, stop

pytestmark = pytest.mark.integration
KEY = "test-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Api:
    """A ``zq api`` subprocess and a tiny HTTP client for it."""

    def __init__(self, cluster: Cluster, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.proc = self._start(cluster, log, env)

    def _start(self, cluster: Cluster, log: Path,
               env: dict[str, str]) -> subprocess.Popen[bytes]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_API_KEYS")}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zq", "api", "--port", str(self.port)],
                env={**inherited, **cluster.env, **env}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, preexec_fn=die_with_parent())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if self.request("GET", "/openapi.json")[0] == 200:
                    return proc
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"zq api did not answer:\n{log.read_text()}")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request (no redirects followed): status, headers, body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={
            "Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return result

    def events(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Follow the job's SSE stream to its end."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        connection.request("GET", f"/v1/jobs/{job_id}/events", headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200
        events = sse_frames(raw.decode().rstrip("\n") for raw in response)
        connection.close()
        return events


def sse_frames(lines: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of each SSE frame in ``lines``, up to and with the ``end`` one."""
    frames, name = [], ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            frames.append((name, json.loads(line.removeprefix("data: "))))
            if name == "end":
                break
    return frames


@pytest.fixture
def api(cluster: Cluster, tmp_path: Path) -> Iterator[Api]:
    """``zq api`` with one API key, on loopback."""
    server = Api(cluster, tmp_path / "api.log", {"ZQ_API_KEYS": KEY})
    yield server
    stop(server.proc)


def test_rest_job_through_a_real_worker(cluster: Cluster, api: Api) -> None:
    cluster.start(ModelType.TURBO)
    body = {"prompt": "a lantern", "width": 32, "height": 32, "tags": {"sku": "A-1"}}
    headers = {**AUTH, "Idempotency-Key": "order-42"}
    first = api.request("POST", "/v1/jobs", body, headers)
    again = api.request("POST", "/v1/jobs", body, headers)
    assert (first[0], again[0]) == (201, 200), first[2]
    job_id = json.loads(first[2])["job_id"]
    assert job_id == json.loads(again[2])["job_id"] == "order-42"

    events = api.events(job_id)
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "end", names
    assert events[-1][1]["status"] == "succeeded", events[-1]
    progress = [data for name, data in events if name == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total"]

    status, headers_out, _ = api.request("GET", f"/v1/jobs/{job_id}/image", headers=AUTH)
    assert status == 302
    with urllib.request.urlopen(headers_out["location"], timeout=30) as image:
        assert image.read(8) == b"\x89PNG\r\n\x1a\n"
    status, _, manifest = api.request("GET", f"/v1/jobs/{job_id}/manifest", headers=AUTH)
    assert status == 200 and json.loads(manifest)

    status, _, done = api.request("DELETE", f"/v1/jobs/{job_id}", headers=AUTH)
    assert (status, json.loads(done)["status"]) == (200, "succeeded")  # too late to cancel
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/image", "/v1/conversations/nope"):
        status, headers_out, _ = api.request("GET", path, headers=AUTH)
        assert (status, headers_out["content-type"]) == (404, "application/problem+json")
    assert api.request("GET", f"/v1/jobs/{job_id}")[0] == 401
    assert api.request("GET", f"/v1/jobs/{job_id}", headers={
        "Authorization": "Bearer wrong"})[0] == 401


def test_cancel_a_queued_job_over_rest(api: Api) -> None:
    status, _, made = api.request("POST", "/v1/jobs", {"prompt": "x", "width": 32,
                                                       "height": 32}, AUTH)
    assert status == 201
    job_id = json.loads(made)["job_id"]
    status, _, cancelled = api.request("POST", f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert (status, json.loads(cancelled)["status"]) == (200, "cancelled")
    assert api.events(job_id)[-1][1]["status"] == "cancelled"


def test_without_keys_loopback_is_open_and_other_addresses_refused(
        cluster: Cluster, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_API_KEYS")}
    refused = subprocess.run([sys.executable, "-m", "zq", "api", "--host", "0.0.0.0",
                              "--port", str(free_port())], env={**env, **cluster.env},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "ZQ_API_KEYS_FILE" in refused.stderr

    server = Api(cluster, tmp_path / "open.log", {})
    try:
        assert server.request("GET", "/v1/jobs/nope")[0] == 404
    finally:
        stop(server.proc)
