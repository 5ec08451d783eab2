"""ComfyUI workflows through a real ``zq api`` and real workers: ``/ws``, ``/history``, ``/view``.

Each test follows one prompt the way a ComfyUI client does: it opens ``/ws?clientId=``
first, posts the workflow with that client id, reads the socket to ``execution_success``,
then reads ``/history/{prompt_id}`` and fetches the image with ``/view``.
"""

from __future__ import annotations

import copy
import http.client
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps
from websockets.sync.client import connect

from common.job import JobKind, ModelType
from common.status import JobRecord, JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster
from tests.integration.test_api_server import Api
from tests.unit.comfy_workflows import TEMPLATE, Workflow, masked_edit
from zq.demo import left_third_mask
from zq.processes import stop

pytestmark = pytest.mark.integration
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIDE = 64
STEPS = 2
Message = dict[str, Any]
ENDINGS = ("execution_success", "execution_error", "execution_interrupted")


@pytest.fixture
def server(cluster: Cluster, tmp_path: Path) -> Iterator[Api]:
    """``zq api`` without keys, on loopback, as a stock ComfyUI client reaches it."""
    api = Api(cluster, tmp_path / "api.log", {})
    yield api
    stop(api.proc)


def tiny(workflow: Workflow) -> Workflow:
    """The workflow at 64x64 (where it makes empty latents) and 2 sampler steps."""
    graph = copy.deepcopy(workflow)
    for node in graph.values():
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            node["inputs"].update(width=SIDE, height=SIDE)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = STEPS
    return graph


def noise_png(side: int = SIDE) -> bytes:
    """A PNG of RGB noise (a source with detail everywhere)."""
    out = io.BytesIO()
    Image.effect_noise((side, side), 64).convert("RGB").save(out, "PNG")
    return out.getvalue()


def upload(server: Api, path: str, name: str, data: bytes,
           form: dict[str, str] | None = None) -> dict[str, Any]:
    """A multipart ``POST /upload/image`` or ``/upload/mask``; returns the JSON answer."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
             f"{value}\r\n".encode() for key, value in (form or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'.encode()
                 + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", path, body=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    status, raw = response.status, response.read()
    connection.close()
    assert status == 200, raw
    answer: dict[str, Any] = json.loads(raw)
    return answer


def follow(server: Api, workflow: Workflow, client_id: str) -> tuple[str, list[Message]]:
    """Post ``workflow`` as ``client_id`` with its socket open; the prompt's messages.

    Returns the prompt id and every message about it, ``status`` ones left out, up to and
    including the one that ends it.
    """
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}",
                 open_timeout=30) as socket:
        first = json.loads(socket.recv(timeout=30))
        assert first["type"] == "status" and first["data"]["sid"] == client_id, first
        status, _, made = server.request("POST", "/prompt", {"prompt": workflow,
                                                             "client_id": client_id})
        assert status == 200, made
        answer = json.loads(made)
        assert answer["node_errors"] == {}, answer
        prompt_id: str = answer["prompt_id"]
        seen: list[Message] = []
        while not seen or seen[-1]["type"] not in ENDINGS:
            message = json.loads(socket.recv(timeout=120))
            if message["type"] == "status":
                continue
            assert message["data"]["prompt_id"] == prompt_id, message
            seen.append(message)
    return prompt_id, seen


def check_messages(seen: list[Message], sampler: str, output: str, steps: int
                   ) -> dict[str, str]:
    """Assert ComfyUI's message sequence for one sampler shown by one output node.

    Returns the image the ``executed`` message names.
    """
    types = [m["type"] for m in seen]
    assert types[:2] == ["execution_start", "execution_cached"], types
    assert seen[2]["type"] == "executing", types
    assert seen[2]["data"]["node"] == seen[2]["data"]["display_node"] == sampler
    progress = [m["data"] for m in seen[3:-4]]
    assert progress and types[3:-4] == ["progress"] * len(progress), types
    values = [p["value"] for p in progress]
    assert values == sorted(values) and values[-1] == steps, progress
    assert {(p["max"], p["node"]) for p in progress} == {(steps, sampler)}, progress
    assert types[-4:] == ["executing", "executed", "executing", "execution_success"], types
    assert seen[-4]["data"]["node"] == output
    executed = seen[-3]["data"]
    assert (executed["node"], executed["display_node"]) == (output, output)
    [image] = executed["output"]["images"]
    assert seen[-2]["data"]["node"] is None
    image_out: dict[str, str] = image
    return image_out


def history_image(server: Api, prompt_id: str, output: str) -> dict[str, str]:
    """The one image ``/history/{prompt_id}`` shows on ``output``, the prompt a success."""
    status, _, raw = server.request("GET", f"/history/{prompt_id}")
    assert status == 200
    entry = json.loads(raw)[prompt_id]  # finished: the socket said so
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start",
                                                          "execution_success"]
    assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == [output]
    assert list(entry["outputs"]) == [output]
    [image] = entry["outputs"][output]["images"]
    assert image["subfolder"] == "zq" and image["type"] == "output"
    assert image["filename"].endswith(".png")
    found: dict[str, str] = image
    return found


def view(server: Api, image: dict[str, str]) -> bytes:
    """``GET /view`` of a history image; asserts a PNG came back."""
    status, headers, data = server.request(
        "GET", f"/view?filename={image['filename']}&subfolder={image['subfolder']}"
               f"&type={image['type']}")
    assert status == 200 and headers["content-type"] == "image/png"
    assert data[:8] == PNG_MAGIC
    return data


def finished_job(server: Api, client: Client, prompt_id: str, seen: list[Message],
                 sampler: str, steps: int) -> tuple[JobRecord, bytes]:
    """Check the messages, history and /view of a prompt; its succeeded job and image bytes."""
    image = check_messages(seen, sampler=sampler, output="9", steps=steps)
    assert history_image(server, prompt_id, "9") == image
    data = view(server, image)
    with Image.open(io.BytesIO(data)) as result:
        assert result.format == "PNG" and result.size == (SIDE, SIDE)
    record = the_job(client, image)
    assert record.status is JobStatus.SUCCEEDED
    return record, data


def the_job(client: Client, image: dict[str, str]) -> JobRecord:
    """The job whose image ``/view`` shows as ``image`` (``{job_id}.png``)."""
    return client.status(image["filename"].removesuffix(".png"))


def test_zimage_template_through_a_real_worker(cluster: Cluster, server: Api,
                                               client: Client) -> None:
    """ComfyUI's own Z-Image text-to-image template, shrunk, on a real turbo worker."""
    worker = cluster.start(ModelType.TURBO)
    prompt_id, seen = follow(server, tiny(TEMPLATE), "template-client")

    record, data = finished_job(server, client, prompt_id, seen, sampler="3", steps=STEPS)
    assert client.store.get(str(record.image)) == data
    spec = record.spec
    assert (spec.kind, spec.model) == (JobKind.GENERATE, ModelType.TURBO)
    # cfg 1 is no guidance; ConditioningZeroOut is an empty negative prompt.
    assert (spec.prompt, spec.negative_prompt, spec.guidance) == ("a red fox", "", 0.0)
    assert (spec.seed, spec.steps, spec.width, spec.height) == (42, STEPS, SIDE, SIDE)
    assert spec.tags["comfy_prompt_id"] == prompt_id
    assert (spec.tags["comfy_sampler_name"], spec.tags["comfy_scheduler"]) == (
        "res_multistep", "simple")
    manifest = client.manifest(spec.job_id)
    assert manifest["worker"] == worker.name and manifest["model"]["type"] == "turbo"
    assert manifest["steps_run"] == STEPS
    status, _, queue = server.request("GET", "/prompt")
    assert (status, json.loads(queue)) == (200, {"exec_info": {"queue_remaining": 0}})


@pytest.mark.parametrize("route", ["/upload/image", "/upload/mask"])
def test_masked_edit_of_an_upload_through_a_real_worker(
        cluster: Cluster, server: Api, client: Client, route: str) -> None:
    """LoadImage, a mask, VAEEncode, SetLatentNoiseMask at denoise 0.4, on a real worker.

    ``/upload/image``: the mask is its own upload read by LoadImageMask's red channel.
    ``/upload/mask``: ComfyUI's mask editor; the painted (transparent) part of the
    composed upload may change, through LoadImage's MASK output.
    """
    worker = cluster.start(ModelType.EDIT)
    source = noise_png()
    assert upload(server, "/upload/image", "room.png", source) == {
        "name": "room.png", "subfolder": "", "type": "input"}
    graph = tiny(masked_edit())
    white = left_third_mask(SIDE)  # white: may change
    if route == "/upload/image":
        with Image.open(io.BytesIO(white)) as mask:
            red = Image.merge("RGB", (mask, Image.new("L", mask.size, 0),
                                      Image.new("L", mask.size, 0)))
        out = io.BytesIO()
        red.save(out, "PNG")
        made = upload(server, "/upload/image", "room-mask.png", out.getvalue(),
                      {"subfolder": "masks"})
        graph["11"]["inputs"]["image"] = f"{made['subfolder']}/{made['name']}"
    else:
        with Image.open(io.BytesIO(white)) as mask:
            painted = Image.new("RGBA", mask.size, (0, 0, 0, 255))
            painted.putalpha(ImageOps.invert(mask))  # painted: transparent
        out = io.BytesIO()
        painted.save(out, "PNG")
        made = upload(server, "/upload/mask", "clipspace-mask.png", out.getvalue(), {
            "original_ref": json.dumps({"filename": "room.png", "subfolder": "",
                                        "type": "input"}), "subfolder": "clipspace"})
        graph["10"]["inputs"]["image"] = f"{made['subfolder']}/{made['name']} [input]"
        del graph["11"]
        graph["13"]["inputs"]["mask"] = ["10", 1]

    prompt_id, seen = follow(server, graph, f"edit-client-{route.rsplit('/', 1)[-1]}")

    # ComfyUI runs 2 steps of a schedule stretched to 2 / 0.4 = 5: the job asks for 5 steps
    # at strength 0.4, and samples the last 2 of them.
    sampled = int(5 * 0.4)
    record, _ = finished_job(server, client, prompt_id, seen, sampler="5", steps=sampled)
    spec = record.spec
    assert (spec.kind, spec.model) == (JobKind.EDIT, ModelType.EDIT)
    assert (spec.strength, spec.steps, spec.guidance) == (0.4, 5, 0.0)
    assert spec.parent_id is None and spec.width is None and spec.height is None
    assert spec.tags["comfy_mask"] == "13"
    # The job edits the uploaded PNG's pixels...
    with Image.open(io.BytesIO(client.store.get(str(spec.source_image)))) as stored, \
            Image.open(io.BytesIO(source)) as original:
        assert stored.convert("RGB").tobytes() == original.tobytes()
    # ...under the mask the client drew: white (may change) on the left third only.
    assert spec.mask is not None
    with Image.open(io.BytesIO(client.store.get(spec.mask))) as cut, \
            Image.open(io.BytesIO(white)) as wanted:
        assert cut.mode == "L" and cut.tobytes() == wanted.tobytes()
    # No pixel check outside the mask: the tiny models' random VAE does not keep pixels
    # (the kept region is kept in latent space; test_render.py checks that on the latents).
    manifest = client.manifest(spec.job_id)
    assert manifest["worker"] == worker.name and manifest["model"]["type"] == "edit"
    assert manifest["lineage"]["inputs"] == {"source_image": spec.source_image,
                                             "mask": spec.mask}
    assert manifest["steps_run"] == sampled
