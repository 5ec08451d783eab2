"""``zq api``'s Prometheus metrics: route templates as labels, ``/metrics`` open, streams intact.

In process (FastAPI's TestClient, or the ASGI app driven directly) against a real Redis:
submitting a job, its SSE stream and the ComfyUI WebSocket all read the queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from common.settings import Settings
from producer.api.app import create_app
from producer.api.auth import ApiKeys
from producer.api.metrics import UNMATCHED, route_template
from producer.client import Client
from tests.integration.conftest import in_process_api

pytestmark = pytest.mark.integration
GOOD = {"prompt": "a lantern", "width": 64, "height": 64}
EVENTS = "/v1/jobs/{job_id}/events"


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The API without keys (loopback use), on the test's Redis and file store."""
    yield from in_process_api(settings, Client(settings))


def scrape(api: TestClient, headers: dict[str, str] | None = None) -> dict[tuple[Any, ...], float]:
    """``GET /metrics`` parsed: (sample name, sorted labels) -> value."""
    response = api.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(samples: dict[tuple[Any, ...], float], name: str, **labels: str) -> float | None:
    """One sample's value, ``None`` when the series does not exist."""
    return samples.get((name, tuple(sorted(labels.items()))))


def test_requests_are_counted_by_route_template_and_status(api: TestClient) -> None:
    made = api.post("/v1/jobs", json=GOOD)
    assert made.status_code == 201, made.text
    job_id = made.json()["job_id"]
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    missing = f"missing-{uuid.uuid4().hex}"
    assert api.get(f"/v1/jobs/{missing}").status_code == 404
    assert api.post("/v1/jobs", json={**GOOD, "width": 17}).status_code == 422
    assert api.patch(f"/v1/jobs/{missing}").status_code == 405  # path known, method not
    nowhere = f"/nowhere/{uuid.uuid4().hex}"
    assert api.get(nowhere).status_code == 404
    assert api.request("BREW", "/v1/jobs").status_code == 405

    samples = scrape(api)
    counted = {labels: n for (name, labels), n in samples.items()
               if name == "zq_api_requests_total"}
    total = "zq_api_requests_total"
    assert value(samples, total, method="POST", route="/v1/jobs", status="201") == 1
    assert value(samples, total, method="POST", route="/v1/jobs", status="422") == 1
    assert value(samples, total, method="GET", route="/v1/jobs/{job_id}", status="200") == 1
    assert value(samples, total, method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert value(samples, total, method="PATCH", route="/v1/jobs/{job_id}", status="405") == 1
    assert value(samples, total, method="GET", route=UNMATCHED, status="404") == 1
    assert value(samples, total, method="OTHER", route="/v1/jobs", status="405") == 1
    assert sum(counted.values()) == 7  # /metrics counts once its headers are sent
    assert value(samples, "zq_api_request_duration_seconds_count", method="POST",
                 route="/v1/jobs") == 2
    assert value(samples, "zq_api_request_duration_seconds_bucket", method="GET",
                 route="/v1/jobs/{job_id}", le="+Inf") == 2
    assert value(samples, "zq_api_requests_in_progress") == 1  # the scrape itself

    labels = {v for (_, pairs), _n in samples.items() for _k, v in pairs}
    assert not {v for v in labels if job_id in v or missing in v or "nowhere" in v}
    templates = {*api.app.openapi()["paths"], "/metrics"}  # type: ignore[attr-defined]
    assert {dict(pairs)["route"] for pairs in counted} <= templates | {UNMATCHED}

    again = scrape(api)
    assert value(again, total, method="GET", route="/metrics", status="200") == 1


def test_metrics_need_no_key_when_keys_are_set(settings: Settings) -> None:
    client = Client(settings)
    app = create_app(settings, client, ApiKeys.from_lines(["secret"]))
    with TestClient(app) as locked:
        assert locked.get("/v1/jobs/x").status_code == 401
        samples = scrape(locked)  # no Authorization header
        assert value(samples, "zq_api_requests_total", method="GET", route="/v1/jobs/{job_id}",
                     status="401") == 1
        assert "/metrics" not in locked.get("/openapi.json").json()["paths"]
    other = create_app(settings, client, ApiKeys())  # the app is made many times: no clash
    assert other.state.metrics.registry is not app.state.metrics.registry


def test_sse_stream_still_streams(api: TestClient) -> None:
    client: Client = api.app.state.client  # type: ignore[attr-defined]
    job_id = api.post("/v1/jobs", json=GOOD).json()["job_id"]
    app: Any = api.app
    registry = app.state.metrics.registry
    events = {"method": "GET", "route": EVENTS, "status": "200"}

    async def follow() -> list[dict[str, Any]]:
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        hang_up = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await sent.put(message)

        path = f"/v1/jobs/{job_id}/events"
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": b"", "headers": [(b"host", b"testserver")],
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
        task = asyncio.create_task(app(scope, receive, send))
        start = await asyncio.wait_for(sent.get(), 10)
        assert start["type"] == "http.response.start" and start["status"] == 200
        first = await asyncio.wait_for(sent.get(), 10)
        # The first frame arrives while the stream is open: nothing is buffered.
        assert first["more_body"] and first["body"].startswith(b"event: status")
        assert not task.done()
        assert registry.get_sample_value("zq_api_requests_total", events) == 1
        assert registry.get_sample_value("zq_api_requests_in_progress") == 1
        await asyncio.to_thread(client.cancel, job_id)
        rest = [first]
        while rest[-1].get("more_body"):
            rest.append(await asyncio.wait_for(sent.get(), 10))
        await asyncio.wait_for(task, 10)
        hang_up.set()
        return rest

    frames = b"".join(m["body"] for m in asyncio.run(follow())).decode()
    assert "event: end" in frames and '"status":"cancelled"' in frames
    assert registry.get_sample_value("zq_api_requests_total", events) == 1
    assert registry.get_sample_value("zq_api_requests_in_progress") == 0
    with api.stream("GET", f"/v1/jobs/{job_id}/events") as stream:  # through the client too
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "event: end" in "".join(stream.iter_text())


def test_websocket_still_works_and_is_gauged_apart(api: TestClient) -> None:
    registry = api.app.state.metrics.registry  # type: ignore[attr-defined]
    with api.websocket_connect("/ws?clientId=metrics") as socket:
        assert socket.receive_json()["type"] == "status"
        assert registry.get_sample_value("zq_api_websocket_connections") == 1
    samples = scrape(api)
    assert value(samples, "zq_api_websocket_connections") == 0
    assert not [labels for (name, labels) in samples
                if name == "zq_api_requests_total" and ("route", "/ws") in labels]


def test_route_templates_without_scope_route(api: TestClient) -> None:
    # Where starlette does not leave scope["route"], the routes are matched again.
    routes = api.app.router.routes  # type: ignore[attr-defined]

    def scope(method: str, path: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "root_path": ""}

    assert route_template(scope("GET", "/v1/jobs/abc123"), routes) == "/v1/jobs/{job_id}"
    assert route_template(scope("POST", "/v1/jobs/abc/cancel"), routes) == (
        "/v1/jobs/{job_id}/cancel")
    assert route_template(scope("GET", "/v1/jobs/abc/events"), routes) == EVENTS
    assert route_template(scope("PATCH", "/v1/jobs/abc"), routes) == "/v1/jobs/{job_id}"
    assert route_template(scope("GET", "/metrics"), routes) == "/metrics"
    assert route_template(scope("GET", "/v2/jobs/abc"), routes) == UNMATCHED
    assert route_template({"type": "websocket", "path": "/ws", "root_path": ""}, routes) == "/ws"
