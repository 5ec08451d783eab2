"""A third-party ComfyUI client, used as its README shows, against ``zq api`` and real workers.

The client is ``comfy-api-simplified`` (pinned in the ``dev`` extra): it posts ``/prompt``,
opens ``/ws?clientId=`` afterwards and waits for ``executing`` {node: null} (or a
``status`` with an empty queue), then reads ``/history/{prompt_id}`` and ``/view``; its
``upload_image`` posts ``/upload/image`` into a subfolder, and its example feeds
``subfolder/name`` to a LoadImage node.
"""

from __future__ import annotations

import copy
import io
import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from common.job import ModelType
from tests.conftest import require
from tests.integration.cluster import Cluster
from tests.integration.test_api_server import Api
from tests.unit.comfy_workflows import ARTICLE
from zq.processes import stop

pytestmark = pytest.mark.integration
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Node titles as ComfyUI's "Export (API)" writes them under "_meta"; the client finds
# nodes by title, so the two prompts get titles of their own (as its README advises).
TITLES = {"CheckpointLoaderSimple": "Load Checkpoint", "EmptyLatentImage": "Empty Latent Image",
          "KSampler": "KSampler", "VAEDecode": "VAE Decode", "SaveImage": "Save Image",
          "LoadImage": "input_image", "VAEEncode": "VAE Encode"}


def exported(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow as an API-format export: every node with a ``_meta`` title."""
    graph = copy.deepcopy(workflow)
    for node_id, node in graph.items():
        title = TITLES.get(node["class_type"], node["class_type"])
        if node["class_type"] == "CLIPTextEncode":
            title = "positive" if node_id == "3" else "negative"
        node["_meta"] = {"title": title}
    return graph


def edit() -> dict[str, Any]:
    """The article's graph turned into an image-to-image edit of an uploaded image."""
    graph = copy.deepcopy(ARTICLE)
    del graph["7"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}}
    graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["5"]["inputs"].update(denoise=0.4, latent_image=["12", 0], cfg=1.0)
    return graph


def one_png(results: dict[str, bytes], side: int) -> bytes:
    """The single image the client returned, checked to be a ``side`` x ``side`` PNG."""
    [data] = results.values()
    assert data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (side, side)
    return data


def test_comfy_api_simplified_generates_and_edits(cluster: Cluster, tmp_path: Path) -> None:
    require(find_spec("comfy_api_simplified") is not None,
            "comfy-api-simplified (pip install -e '.[dev]')")
    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    cluster.start_many(ModelType.TURBO, ModelType.EDIT)
    server = Api(cluster, tmp_path / "api.log", {})
    try:
        api = ComfyApiWrapper(f"http://127.0.0.1:{server.port}/")

        # (1) Text to image: the README's flow with a workflow file saved from ComfyUI.
        workflow_file = tmp_path / "workflow_api.json"
        workflow_file.write_text(json.dumps(exported(ARTICLE)))
        wf = ComfyWorkflowWrapper(str(workflow_file))
        wf.set_node_param("Empty Latent Image", "width", 64)
        wf.set_node_param("Empty Latent Image", "height", 64)
        wf.set_node_param("KSampler", "steps", 2)
        wf.set_node_param("positive", "text", "a red fox in snow, photo")
        generated = api.queue_and_wait_images(wf, "Save Image")
        [name] = generated
        assert name.endswith(".png"), name  # from /history, then fetched through /view
        one_png(generated, 64)

        # (2) Image to image: upload_image, then the subfolder/name in LoadImage.
        source = tmp_path / "room.png"
        Image.new("RGB", (64, 64), "orange").save(source, "PNG")
        image_metadata = api.upload_image(str(source))
        assert image_metadata == {"name": "room.png", "subfolder": "default_upload_folder",
                                  "type": "input"}
        listed = api.get_object_info("LoadImage")["LoadImage"]["input"]["required"]["image"][0]
        assert "default_upload_folder/room.png" in listed
        edit_file = tmp_path / "workflow_api_input_image.json"
        edit_file.write_text(json.dumps(exported(edit())))
        wf = ComfyWorkflowWrapper(str(edit_file))
        wf.set_node_param("input_image", "image",
                          f"{image_metadata['subfolder']}/{image_metadata['name']}")
        wf.set_node_param("KSampler", "steps", 2)
        edited = api.queue_and_wait_images(wf, "Save Image")
        assert one_png(edited, 64) != one_png(generated, 64)
    finally:
        stop(server.proc)
