"""``zq api`` in process (FastAPI's TestClient) against a real Redis and a file store.

No workers: these tests check what the API refuses and how, idempotency, cancel,
uploads and conversations. tests/integration/test_api_server.py runs the real server.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from common.settings import Settings
from producer.api.app import create_app
from producer.api.auth import ApiKeys, digest
from producer.client import Client

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"
GOOD = {"prompt": "a lantern", "width": 64, "height": 64}


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The API without keys (loopback use)."""
    with TestClient(create_app(settings, Client(settings), ApiKeys())) as test_client:
        yield test_client


def png(side: int = 64, colour: str = "red") -> bytes:
    """A small PNG."""
    out = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(out, "PNG")
    return out.getvalue()


def assert_problem(response: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    """The response is problem+json with the given status; returns its body."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert body["title"] and body["type"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def _bad_fields() -> list[tuple[str, dict[str, Any]]]:
    """(name, body) pairs, each breaking one rule of the job schema."""
    bad: dict[str, list[Any]] = {
        "kind": [1, [], {}, "draw", "", True, None, "GENERATE "],
        "prompt": [1, [], {}, True, "x" * 2001, "", "   "],
        "negative_prompt": [1, [], "x" * 2001],
        "model": ["gpt", 1, [], {}, "edit"],
        "steps": [0, 151, -1, "9", 9.5, True, [], {}],
        "seed": [-1, 2**63, "1", 1.5, True, []],
        "guidance": [-0.1, 20.5, "1", True, []],
        "strength": [0.5, "x", -1],
        "parent_id": ["unknown-parent", "bad id!", 5, [], ""],
        "source_image": ["uploads/missing.png", "/etc/passwd", "../x.png", 5],
        "mask": ["m.png", 5],
        "tags": [[], "x", {"k": 1}, {"": "v"}, {"k": "v" * 257},
                 {f"k{i}": "v" for i in range(33)}],
        "priority": [-1, 10, "5", 5.5, True],
        "output_format": ["gif", 1, [], ""],
        "quality": [50, "50"],
        "webhook": [5, [], "not a url", "ftp://10.0.0.1/x", "http://10.0.0.1/hook"],
        "job_id": ["bad id!", 5, "x" * 101, ""],
        "conversation_id": ["bad id!", [], 7],
        "colour": ["red"],
    }
    cases = [(f"{name}={value!r:.30}", {**GOOD, name: value})
             for name, values in bad.items() for value in values]
    for side in (17, 0, -16, 8192, "64", 64.0, True, [], 10**30):
        cases += [(f"width={side!r}", {**GOOD, "width": side}),
                  (f"height={side!r}", {**GOOD, "height": side})]
    cases += [
        ("width alone", {"prompt": "x", "width": 64}),
        ("too many pixels", {**GOOD, "width": 4096, "height": 4096}),
        ("edit without image", {"kind": "edit", "prompt": "x"}),
        ("refine without image", {"kind": "refine"}),
        ("edit missing source", {"kind": "edit", "prompt": "x", "source_image": "a/b.png"}),
        ("mask on refine", {"kind": "refine", "source_image": "a.png", "mask": "b.png"}),
        ("quality 0 jpeg", {**GOOD, "output_format": "jpeg", "quality": 0}),
        ("quality 101 webp", {**GOOD, "output_format": "webp", "quality": 101}),
        ("empty object", {}),
    ]
    return cases


RAW_BODIES = [b"", b"{", b"[]", b"1", b'"s"', b"null", b"true", b"\xff\xfe\x00", b"[" * 5000,
              b'{"prompt": "x",}', b"NaN", b'{"a":' * 3000, b"{'prompt': 'x'}",
              b'{"prompt": "\\ud800"}', b'{"prompt": "x", "steps": 1e400}',
              b'{"prompt": "x", "guidance": NaN}', b'{"prompt": "x", "guidance": Infinity}',
              b'{"prompt": "x", "seed": -Infinity}', b"\x00" * 10, "{\"prompt\": \"é\"".encode()]


@pytest.mark.parametrize(("name", "body"), _bad_fields(), ids=[c[0] for c in _bad_fields()])
def test_every_malformed_job_is_a_problem_naming_the_field(api: TestClient, name: str,
                                                           body: dict[str, Any]) -> None:
    problem = assert_problem(api.post("/v1/jobs", json=body), (404, 422))
    assert problem["field"] and problem["limit"], problem
    assert problem["errors"][0]["field"] == problem["field"]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=[repr(r[:20]) for r in RAW_BODIES])
def test_malformed_bodies_are_400_or_422(api: TestClient, raw: bytes) -> None:
    assert_problem(api.post("/v1/jobs", content=raw,
                            headers={"content-type": "application/json"}), (400, 422))


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/jobs/nope"), ("DELETE", "/v1/jobs/nope"), ("POST", "/v1/jobs/nope/cancel"),
    ("GET", "/v1/jobs/nope/image"), ("GET", "/v1/jobs/nope/manifest"),
    ("GET", "/v1/jobs/nope/events"), ("GET", "/v1/conversations/nope"),
    ("GET", "/v1/jobs/%00%ff"), ("GET", "/v1/jobs/" + "x" * 3000), ("GET", "/v2/jobs"),
    ("PUT", "/v1/jobs"), ("PATCH", "/v1/jobs/nope"), ("GET", "/v1/uploads")])
def test_unknown_things_are_404_or_405(api: TestClient, method: str, path: str) -> None:
    assert_problem(api.request(method, path), (404, 405))


@pytest.mark.parametrize(("name", "kwargs"), [
    ("no file", {"data": {"field": "mask"}}),
    ("file as text", {"data": {"file": "not a file"}}),
    ("not an image", {"files": {"file": ("a.png", b"hello", "image/png")}}),
    ("truncated png", {"files": {"file": ("a.png", png()[:40], "image/png")}}),
    ("empty", {"files": {"file": ("a.png", b"", "image/png")}}),
    ("bad field", {"files": {"file": ("a.png", png(), "image/png")}, "data": {"field": "x"}}),
    ("json body", {"json": {"file": "x"}}),
    ("broken multipart", {"content": b"--x\r\nnope", "headers": {
        "content-type": "multipart/form-data; boundary=x"}}),
])
def test_bad_uploads_are_problems(api: TestClient, name: str, kwargs: dict[str, Any]) -> None:
    assert_problem(api.post("/v1/uploads", **kwargs), (400, 422))


def test_bodies_over_the_limit_are_413(api: TestClient, settings: Settings) -> None:
    assert_problem(api.post("/v1/jobs", content=b" " * (2 << 20)), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(3):
            yield b" " * (1 << 20)

    assert_problem(api.post("/v1/jobs", content=chunks()), 413)
    big = b"\0" * (settings.max_input_bytes + (2 << 20))
    assert_problem(api.post("/v1/uploads", files={"file": ("a.png", big, "image/png")}), 413)


def test_idempotency_key_makes_a_retry_the_same_job(api: TestClient) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex[:8]}"}
    first = api.post("/v1/jobs", json=GOOD, headers=key)
    again = api.post("/v1/jobs", json=GOOD, headers=key)
    assert (first.status_code, again.status_code) == (201, 200), first.text
    assert first.json()["job_id"] == again.json()["job_id"] == key["Idempotency-Key"]
    assert first.json()["seed"] == again.json()["seed"]
    assert first.headers["location"] == f"/v1/jobs/{key['Idempotency-Key']}"
    conflict = assert_problem(api.post("/v1/jobs", json={**GOOD, "prompt": "other"},
                                       headers=key), 409)
    assert key["Idempotency-Key"] in conflict["detail"]
    assert_problem(api.post("/v1/jobs", json={**GOOD, "job_id": "other"}, headers=key), 422)
    assert_problem(api.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "a b"}), 422)
    by_id = {**GOOD, "job_id": f"body-{uuid.uuid4().hex[:8]}"}  # the id in the body works too
    assert [api.post("/v1/jobs", json=by_id).status_code for _ in range(2)] == [201, 200]


def test_job_lifecycle_without_workers(api: TestClient) -> None:
    made = api.post("/v1/jobs", json={**GOOD, "tags": {"sku": "A-1"}, "priority": 7})
    assert made.status_code == 201, made.text
    job = made.json()
    assert (job["status"], job["model"], job["kind"]) == ("queued", "turbo", "generate")
    assert api.get(f"/v1/jobs/{job['job_id']}").json() == job
    assert_problem(api.get(f"/v1/jobs/{job['job_id']}/image"), 409)
    assert_problem(api.get(f"/v1/jobs/{job['job_id']}/manifest"), 409)
    assert api.delete(f"/v1/jobs/{job['job_id']}").json() == {
        "job_id": job["job_id"], "status": "cancelled"}
    assert api.post(f"/v1/jobs/{job['job_id']}/cancel").json()["status"] == "cancelled"
    with api.stream("GET", f"/v1/jobs/{job['job_id']}/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        text = "".join(events.iter_text())
    frames = [block.split("\n") for block in text.strip().split("\n\n")]
    assert [f[0] for f in frames] == ["event: status", "event: end"]
    assert json.loads(frames[-1][1].removeprefix("data: "))["status"] == "cancelled"


def test_upload_then_edit_and_conversation_tree(api: TestClient) -> None:
    uploaded = api.post("/v1/uploads", files={"file": ("p.png", png(), "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    source = uploaded.json()
    assert source["key"].startswith("uploads/") and (source["width"], source["height"]) == (64, 64)
    assert api.post("/v1/uploads", files={"file": ("p.png", png(), "image/png")}).json() == source
    mask = api.post("/v1/uploads", files={"file": ("m.png", png(colour="white"), "image/png")},
                    data={"field": "mask"}).json()

    first = api.post("/v1/jobs", json={**GOOD, "conversation_id": "chat-1"}).json()
    second = api.post("/v1/jobs", json={"kind": "edit", "prompt": "blue",
                                        "parent_id": first["job_id"]}).json()
    third = api.post("/v1/jobs", json={"kind": "refine", "parent_id": second["job_id"]}).json()
    branch = api.post("/v1/jobs", json={"kind": "edit", "prompt": "green",
                                        "parent_id": first["job_id"]}).json()
    assert [j["status"] for j in (second, third, branch)] == ["waiting"] * 3
    assert second["conversation_id"] == "chat-1"
    edited = api.post("/v1/jobs", json={"kind": "edit", "prompt": "sofa",
                                        "source_image": source["key"], "mask": mask["key"]})
    assert edited.status_code == 201, edited.text
    assert edited.json()["model"] == "edit"

    tree = api.get("/v1/conversations/chat-1").json()
    assert tree["jobs"] == 4 and len(tree["turns"]) == 1
    root = tree["turns"][0]
    assert root["job"]["job_id"] == first["job_id"]
    assert sorted(c["job"]["job_id"] for c in root["children"]) == sorted(
        [second["job_id"], branch["job_id"]])
    deep = next(c for c in root["children"] if c["job"]["job_id"] == second["job_id"])
    assert [c["job"]["job_id"] for c in deep["children"]] == [third["job_id"]]
    own = api.get(f"/v1/conversations/{edited.json()['job_id']}").json()
    assert own["jobs"] == 1


def test_auth_and_rate_limit(settings: Settings) -> None:
    keys = ApiKeys.from_lines(["first-key", f"sha256:{digest('second-key')}"])
    limited = replace(settings, api_rate_per_s=1, api_rate_burst=3)
    with TestClient(create_app(limited, Client(limited), keys)) as api:
        missing = assert_problem(api.get("/v1/jobs/nope"), 401)
        assert api.get("/v1/jobs/nope").headers["www-authenticate"].startswith("Bearer")
        assert "key" in missing["detail"]
        assert_problem(api.get("/v1/jobs/nope", headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(api.get("/v1/jobs/nope", headers={"Authorization": "Basic eDp5"}), 401)
        assert api.get("/openapi.json").status_code == 200
        assert api.get("/docs").status_code == 200
        second = {"Authorization": "Bearer second-key"}
        assert [api.get("/v1/jobs/nope", headers=second).status_code
                for _ in range(3)] == [404] * 3
        limit = api.get("/v1/jobs/nope", headers=second)
        assert_problem(limit, 429)
        assert int(limit.headers["retry-after"]) >= 1
        first = {"Authorization": "Bearer first-key"}
        assert api.get("/v1/jobs/nope", headers=first).status_code == 404  # its own bucket


def test_a_bug_is_a_bare_500_problem(settings: Settings) -> None:
    client = Client(settings)

    def broken(job_id: str) -> Any:
        raise RuntimeError("secret internals")

    client.status = broken  # type: ignore[method-assign]
    with TestClient(create_app(settings, client, ApiKeys()),
                    raise_server_exceptions=False) as api:
        response = api.get("/v1/jobs/x")
    problem = assert_problem(response, 500)
    assert "secret" not in response.text and problem["detail"]


def test_openapi_documents_the_routes(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/image",
                 "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/cancel", "/v1/uploads",
                 "/v1/jobs/{job_id}/manifest", "/v1/conversations/{conversation_id}"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert "prompt" in body["schema"]["properties"]
