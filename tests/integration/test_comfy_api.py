"""ComfyUI's HTTP routes: shapes and errors in process, then one workflow through a worker."""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import WebSocketDisconnect
from fastapi.testclient import TestClient
from PIL import Image
from websockets.sync.client import connect

from common.job import ModelType
from common.settings import Settings
from common.status import JobStatus
from producer.api.app import create_app
from producer.api.auth import ApiKeys
from producer.client import Client
from tests.integration.cluster import Cluster
from tests.integration.conftest import in_process_api
from tests.integration.test_api_server import Api
from tests.unit.comfy_workflows import ARTICLE, inpaint, masked_edit
from zq.processes import stop

pytestmark = pytest.mark.integration
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def client(settings: Settings) -> Client:
    """The producer client the app uses."""
    return Client(settings)


@pytest.fixture
def api(settings: Settings, client: Client) -> Iterator[TestClient]:
    """The app without keys (loopback use)."""
    yield from in_process_api(settings, client)


def png(side: int = 64, mode: str = "RGB", colour: Any = "red") -> bytes:
    """A small PNG."""
    out = io.BytesIO()
    Image.new(mode, (side, side), colour).save(out, "PNG")
    return out.getvalue()


def small(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow at 64x64 and 2 steps."""
    graph = copy.deepcopy(workflow)
    for node in graph.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    return graph


def upload(api: TestClient, name: str, data: bytes, **form: str) -> dict[str, Any]:
    """``POST /upload/image``; returns the JSON answer."""
    response = api.post("/upload/image", files={"image": (name, data, "image/png")},
                        data=form)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_prompt_queues_jobs_and_reports_in_comfy_shapes(api: TestClient,
                                                        client: Client) -> None:
    answer = api.post("/prompt", json={"prompt": small(ARTICLE), "client_id": "c1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    prompt_id = body["prompt_id"]
    assert api.get("/prompt").json() == {"exec_info": {"queue_remaining": 1}}
    queue = api.get("/queue").json()
    assert queue["queue_running"] == []
    [item] = queue["queue_pending"]
    assert item[:2] == [body["number"], prompt_id] and item[2] == small(ARTICLE)
    assert item[4] == ["9"]
    assert api.get(f"/history/{prompt_id}").json() == {}  # not finished
    assert api.get("/history/nope").json() == {}

    second = api.post("/prompt", json={"prompt": small(ARTICLE)}).json()
    assert second["number"] == body["number"] + 1
    assert api.post("/queue", json={"delete": [prompt_id]}).status_code == 200
    assert api.post("/interrupt", json={"prompt_id": second["prompt_id"]}).status_code == 200
    assert api.get("/prompt").json()["exec_info"]["queue_remaining"] == 0
    assert api.get("/queue").json() == {"queue_running": [], "queue_pending": []}

    entry = api.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["prompt"][:2] == [body["number"], prompt_id] and entry["outputs"] == {}
    status = entry["status"]
    assert (status["status_str"], status["completed"]) == ("error", False)
    assert status["messages"][-1][0] == "execution_interrupted"
    assert status["messages"][-1][1]["node_id"] == "5"
    history = api.get("/history").json()
    assert list(history) == [prompt_id, second["prompt_id"]]
    assert list(api.get("/history", params={"max_items": 1}).json()) == [second["prompt_id"]]
    api.post("/history", json={"delete": [prompt_id]})
    assert api.get(f"/history/{prompt_id}").json() == {}


@pytest.mark.parametrize("body", [
    {"prompt": {}},
    {"prompt": {"1": {"class_type": "Nope", "inputs": {}}}},
    {"prompt": {**ARTICLE, "5": {**ARTICLE["5"], "inputs": {
        **ARTICLE["5"]["inputs"], "steps": 0}}}},
    {"client_id": "x"},
    [1, 2],
])
def test_bad_graphs_are_comfys_400(api: TestClient, body: Any) -> None:
    response = api.post("/prompt", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert set(answer) == {"error", "node_errors"}
    assert {"type", "message", "details", "extra_info"} <= set(answer["error"])


def test_unknown_upload_name_is_a_node_error(api: TestClient) -> None:
    response = api.post("/prompt", json={"prompt": masked_edit()})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(answer["node_errors"]) == {"10", "11"}
    [error] = answer["node_errors"]["10"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: room.png"
    assert answer["node_errors"]["10"]["class_type"] == "LoadImage"
    assert answer["node_errors"]["10"]["dependent_outputs"] == ["9"]


def test_upload_round_trip_and_masked_prompt(api: TestClient, client: Client) -> None:
    room = png(64)
    assert upload(api, "room.png", room) == {"name": "room.png", "subfolder": "",
                                             "type": "input"}
    assert upload(api, "room.png", room)["name"] == "room.png"  # same bytes: same name
    assert upload(api, "room.png", png(64, colour="blue"))["name"] == "room (1).png"
    assert upload(api, "room.png", png(64, colour="green"),
                  overwrite="true")["name"] == "room.png"
    mask = png(64, "RGB", (255, 0, 0))
    assert upload(api, "room-mask.png", mask, subfolder="masks")["subfolder"] == "masks"
    viewed = api.get("/view", params={"filename": "room.png", "type": "input"})
    assert viewed.status_code == 200 and viewed.content[:8] == PNG_MAGIC
    assert viewed.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(viewed.content)) as image:
        assert image.convert("RGB").getpixel((0, 0)) == (0, 128, 0)  # overwritten: green
    for params in ({"filename": "nope.png", "type": "input"},
                   {"filename": "nope.png", "subfolder": "zq"},
                   {"filename": "../x.png", "subfolder": "zq"}):
        assert api.get("/view", params=params).status_code == 404

    names = api.get("/object_info").json()["LoadImage"]["input"]["required"]["image"][0]
    assert names == ["masks/room-mask.png", "room (1).png", "room.png"]
    assert api.get("/object_info/KSampler").json()["KSampler"]["output"] == ["LATENT"]
    assert api.get("/object_info/Nope").json() == {}

    graph = masked_edit()
    graph["11"]["inputs"]["image"] = "masks/room-mask.png"
    answer = api.post("/prompt", json={"prompt": graph})
    assert answer.status_code == 200, answer.text
    history = client.jobs.redis.get(f"{client.settings.key_prefix}:comfy:prompt:"
                                    f"{answer.json()['prompt_id']}")
    [job_id] = json.loads(str(history))["job_ids"]
    spec = client.status(job_id).spec
    assert spec.source_image == client.upload(png(64, colour="green"))
    with Image.open(io.BytesIO(client.store.get(str(spec.mask)))) as cut:
        assert cut.mode == "L" and cut.getpixel((0, 0)) == 255  # the red channel, white


def test_alpha_mask_is_inverted_and_uploads_are_checked(api: TestClient,
                                                        client: Client) -> None:
    cut = png(64, "RGBA", (10, 20, 30, 0))  # transparent: may change
    upload(api, "cut.png", cut)
    answer = api.post("/prompt", json={"prompt": inpaint()})
    assert answer.status_code == 200, answer.text
    record = json.loads(str(client.jobs.redis.get(
        f"{client.settings.key_prefix}:comfy:prompt:{answer.json()['prompt_id']}")))
    spec = client.status(record["job_ids"][0]).spec
    with Image.open(io.BytesIO(client.store.get(str(spec.mask)))) as mask:
        assert mask.getpixel((0, 0)) == 255

    bad = api.post("/upload/image", files={"image": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 422 and bad.json()["field"] == "source_image"
    for form in ({"subfolder": "../up"}, {"type": "output"}):
        response = api.post("/upload/image", files={"image": ("x.png", png(), "image/png")},
                            data=form)
        assert response.status_code == 422, response.text
    slash = api.post("/upload/image", files={"image": ("a/b.png", png(), "image/png")})
    assert slash.status_code in (200, 422)  # a client may strip the folder itself

    edited = api.post("/upload/mask", files={"image": ("m.png", png(64, "RGBA", (0, 0, 0, 0)),
                                                       "image/png")},
                      data={"original_ref": json.dumps({"filename": "cut.png"})})
    assert edited.status_code == 200, edited.text
    assert api.post("/upload/mask", files={"image": ("m.png", png(), "image/png")},
                    data={"original_ref": json.dumps({"filename": "gone.png"})}
                    ).status_code == 404


def test_system_stats_shape(api: TestClient) -> None:
    stats = api.get("/system_stats").json()
    assert stats["system"]["embedded_python"] is False and stats["devices"] == []
    assert {"os", "python_version", "comfyui_version"} <= set(stats["system"])


def test_keys_apply_to_comfy_routes(settings: Settings, client: Client) -> None:
    app = create_app(settings, client, ApiKeys.from_lines(["secret"]))
    with TestClient(app) as locked:
        assert locked.get("/queue").status_code == 401
        assert locked.get("/queue", headers={"Authorization": "Bearer secret"}
                          ).status_code == 200


def test_article_workflow_through_a_real_worker(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start(ModelType.TURBO)
    server = Api(cluster, tmp_path / "api.log", {})
    try:
        # A ComfyUI client opens its WebSocket first, then posts with the same client id.
        socket = connect(f"ws://127.0.0.1:{server.port}/ws?clientId=e2e", open_timeout=30)
        status, _, made = server.request("POST", "/prompt", {"prompt": small(ARTICLE),
                                                             "client_id": "e2e"})
        assert status == 200, made
        prompt_id = json.loads(made)["prompt_id"]
        seen: list[str] = []
        with socket:
            while "execution_success" not in seen:
                message = json.loads(socket.recv(timeout=240))
                if message["data"].get("prompt_id") in (None, prompt_id):
                    seen.append(message["type"])
        assert seen[0] == "status"
        for kind in ("execution_start", "executing", "progress", "executed"):
            assert kind in seen, seen
        deadline = time.monotonic() + 240
        entry: dict[str, Any] = {}
        while time.monotonic() < deadline and not entry:
            status, _, raw = server.request("GET", f"/history/{prompt_id}")
            assert status == 200
            entry = json.loads(raw).get(prompt_id, {})
            time.sleep(0.5)
        assert entry, "the prompt did not finish"
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["status"]["completed"] is True
        [image] = entry["outputs"]["9"]["images"]
        assert image["subfolder"] == "zq" and image["type"] == "output"
        status, headers, data = server.request(
            "GET", f"/view?filename={image['filename']}&subfolder=zq&type=output")
        assert status == 200 and headers["content-type"] == "image/png"
        assert data[:8] == PNG_MAGIC
        with Image.open(io.BytesIO(data)) as result:
            assert result.size == (64, 64)
    finally:
        stop(server.proc)


def test_websocket_follows_the_clients_prompt(api: TestClient, client: Client) -> None:
    with api.websocket_connect("/ws?clientId=c42") as socket:
        first = socket.receive_json()
        assert first == {"type": "status", "data": {"status": {"exec_info": {
            "queue_remaining": 0}}, "sid": "c42"}}
        made = api.post("/prompt", json={"prompt": small(ARTICLE), "client_id": "c42"})
        prompt_id = made.json()["prompt_id"]
        api.post("/prompt", json={"prompt": small(ARTICLE), "client_id": "other"})
        record = json.loads(str(client.jobs.redis.get(
            f"{client.settings.key_prefix}:comfy:prompt:{prompt_id}")))
        spec = client.status(record["job_ids"][0]).spec
        assert client.jobs.claim(spec, "w1", 60, 3).outcome == "claimed"
        client.jobs.report_progress(spec.job_id, 1, 2)
        seen = [m for m in _until(socket, "progress") if m["type"] != "status"]
        assert seen[0]["type"] == "execution_start" and seen[0]["data"]["prompt_id"] == prompt_id
        assert {"type": "executing", "data": {"prompt_id": prompt_id, "node": "5",
                                              "display_node": "5"}} in seen
        assert seen[-1]["data"] == {"prompt_id": prompt_id, "value": 1, "max": 2, "node": "5"}
        key = f"conversations/{spec.conversation_id}/{spec.job_id}/image.png"
        client.store.put(key, png(64), "image/png")
        client.jobs.finish(spec, JobStatus.SUCCEEDED, image=key)
        seen = _until(socket, "execution_success")
        seen.append(socket.receive_json())
        types = [m["type"] for m in seen if m["type"] != "status"]
        assert types[-3:] == ["executed", "executing", "execution_success"], types
        assert seen[-4]["data"]["output"]["images"] == [
            {"filename": f"{spec.job_id}.png", "subfolder": "zq", "type": "output"}]
        assert seen[-3]["data"]["node"] is None
        assert seen[-1]["type"] == "status"
        assert seen[-1]["data"]["status"]["exec_info"]["queue_remaining"] == 1  # "other"'s
    viewed = api.get("/view", params={"filename": f"{spec.job_id}.png", "subfolder": "zq"})
    assert viewed.status_code == 200 and viewed.content == png(64)


def test_every_client_hears_when_the_queue_length_changes(api: TestClient) -> None:
    # Some clients post first and listen after: if their prompt already ended, they wait for
    # queue_remaining to reach 0, which ComfyUI announces to every client.
    with api.websocket_connect("/ws?clientId=listener") as socket:
        assert socket.receive_json()["data"]["status"]["exec_info"]["queue_remaining"] == 0
        made = api.post("/prompt", json={"prompt": small(ARTICLE), "client_id": "someone"})
        assert made.status_code == 200
        update = socket.receive_json()  # within one queue check, a few seconds
        assert update == {"type": "status", "data": {"status": {"exec_info": {
            "queue_remaining": 1}}, "sid": "listener"}}
        cancelled = api.post("/queue", json={"clear": True})
        assert cancelled.status_code == 200
        update = socket.receive_json()
        assert update["data"]["status"]["exec_info"]["queue_remaining"] == 0


def test_websocket_needs_a_key_when_keys_are_set(settings: Settings, client: Client) -> None:
    with TestClient(create_app(settings, client, ApiKeys.from_lines(["secret"]))) as locked:
        with pytest.raises(WebSocketDisconnect) as closed, locked.websocket_connect("/ws"):
            pass
        assert closed.value.code == 1008
        with locked.websocket_connect("/ws", headers={"Authorization": "Bearer secret"}) as ok:
            assert ok.receive_json()["type"] == "status"


def _until(socket: Any, wanted: str) -> list[dict[str, Any]]:
    """Messages received up to and including the first of type ``wanted``."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != wanted:
        seen.append(socket.receive_json())
    return seen
