"""ComfyUI's HTTP routes over the queue: a ComfyUI client submits workflows to zq.

``POST /prompt`` translates an API-format workflow (``producer.comfy.translate``) and
submits its planned jobs; ``/history``, ``/view``, ``/queue`` and ``/upload/image``
answer in ComfyUI's shapes, so scripts and tools written for ComfyUI's API run as is.

Auth: these routes follow the ``/v1`` rule. With API keys configured every request
must send ``Authorization: Bearer <key>`` (most ComfyUI clients can add a header);
without keys ``zq api`` serves loopback only, which is how a stock client is run.
Errors of a workflow are ComfyUI's 400 JSON (``{"error", "node_errors"}``); other
errors are problem+json like the rest of the API.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import uuid
from typing import Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool

from common.errors import InvalidJob, JobNotFound
from common.images import EXTENSIONS as IMAGE_EXTENSIONS
from common.job import ID_PATTERN, JobSpec, new_job
from common.status import JobStatus
from producer.api.comfy_history import (
    OUTPUT_SUBFOLDER,
    ComfyState,
    PromptRecord,
    finished,
    history_entry,
    output_filename,
)
from producer.api.problems import ApiProblem
from producer.client import Client
from producer.comfy import PlannedJob, PlannedMask, WorkflowRejected, object_info, translate
from producer.comfy import errors as err

router = APIRouter(tags=["comfyui"])
IMAGE_LOADERS = ("LoadImage", "LoadImageMask")
UPLOAD_PATHS = ("/upload/image", "/upload/mask")
_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")
_SUBFOLDER = re.compile(r"^[A-Za-z0-9_.\- ]{1,64}(/[A-Za-z0-9_.\- ]{1,64}){0,3}$")
_ANNOTATION = re.compile(r" \[(input|output|temp)\]$")
_CHANNELS = {"red": 0, "green": 1, "blue": 2, "alpha": 3}
_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def _state(request: Request) -> ComfyState:
    return ComfyState(_client(request))


def _rejected(exc: WorkflowRejected) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=400)


# -- prompts -------------------------------------------------------------------
@router.post("/prompt", response_model=None)
async def post_prompt(request: Request) -> JSONResponse:
    """Translate and queue a workflow: ``{"prompt_id", "number", "node_errors": {}}``."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return _rejected(err.invalid_prompt("Invalid prompt", "the body is not JSON"))
    if not isinstance(body, dict) or "prompt" not in body:
        return _rejected(WorkflowRejected(err.error(
            "no_prompt", "No prompt provided", "No prompt provided")))
    try:
        answer = await run_in_threadpool(_queue_prompt, _client(request), body)
    except WorkflowRejected as exc:
        return _rejected(exc)
    return JSONResponse(answer)


def _queue_prompt(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    workflow = body["prompt"]
    plans = translate(workflow)
    state = ComfyState(client)
    inputs = _resolve_inputs(state, workflow, plans)
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else ""
    prompt_id = str(uuid.uuid4())
    specs: list[JobSpec] = []
    for plan in plans:
        fields = plan.job_fields()
        fields["tags"]["comfy_prompt_id"] = prompt_id
        if plan.parent_index is not None:
            fields["parent_id"] = specs[plan.parent_index].job_id
        if plan.source_image is not None:
            fields["source_image"] = inputs[plan.source_image]
        if plan.mask is not None:
            fields["mask"] = _mask_key(client, inputs[plan.mask.image], plan.mask)
        try:
            specs.append(new_job(plan.kind, conversation_id=prompt_id, **fields))
        except InvalidJob as exc:
            raise _node_error(workflow, plans, {plan.sampler_node: [err.unsupported(
                f"{exc.field} - {exc}", {"input_name": exc.field})]}) from None
    for spec in specs:
        client.submit(spec, new_id=True)  # ids drawn above, by new_job
    number = state.next_number()
    state.save(PromptRecord(
        prompt_id=prompt_id, number=number, workflow=workflow, extra_data=extra or {},
        client_id=client_id or "", job_ids=[spec.job_id for spec in specs],
        job_outputs=[list(plan.output_nodes) for plan in plans],
        job_nodes=[plan.sampler_node for plan in plans]))
    return {"prompt_id": prompt_id, "number": number, "node_errors": {}}


def _resolve_inputs(state: ComfyState, workflow: dict[str, Any],
                    plans: list[PlannedJob]) -> dict[str, str]:
    """Storage keys of the upload names the plans use; a 400 naming unknown ones."""
    names = {plan.source_image for plan in plans if plan.source_image}
    names |= {plan.mask.image for plan in plans if plan.mask}
    keys, unknown = {}, []
    for name in sorted(names):
        key = state.upload_key(_ANNOTATION.sub("", name))
        if key is None:
            unknown.append(name)
        else:
            keys[name] = key
    if unknown:
        found: dict[str, list[err.ErrorDict]] = {}
        for node_id, node in workflow.items():
            image = node.get("inputs", {}).get("image")
            if node.get("class_type") in IMAGE_LOADERS and image in unknown:
                found[node_id] = [err.unsupported(f"image - Invalid image file: {image}",
                                                  {"input_name": "image"})]
        raise _node_error(workflow, plans, found)
    return keys


def _node_error(workflow: dict[str, Any], plans: list[PlannedJob],
                found: dict[str, list[err.ErrorDict]]) -> WorkflowRejected:
    class_types = {node_id: str(node.get("class_type", "")) for node_id, node in
                   workflow.items()}
    outputs = sorted({node for plan in plans for node in plan.output_nodes})
    return err.outputs_failed(found, class_types, {node_id: outputs for node_id in found})


def _mask_key(client: Client, source_key: str, mask: PlannedMask) -> str:
    """Cut the planned channel into an 8-bit mask (white = may change) and upload it."""
    with Image.open(io.BytesIO(client.store.get(source_key))) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGBA")
    channel = image.getchannel(_CHANNELS[mask.channel])
    if mask.channel == "alpha":
        channel = ImageOps.invert(channel)
    out = io.BytesIO()
    channel.convert("L").save(out, "PNG")
    return client.upload(out.getvalue(), "mask")


@router.get("/prompt")
def get_prompt(request: Request) -> dict[str, Any]:
    """``{"exec_info": {"queue_remaining": n}}``: prompts not finished yet."""
    return {"exec_info": {"queue_remaining": len(_state(request).active())}}


# -- history and images ----------------------------------------------------------
@router.get("/history")
def get_history(request: Request, max_items: int | None = Query(None, ge=1)
                ) -> dict[str, Any]:
    """The finished prompts, oldest first (the newest ``max_items``)."""
    state = _state(request)
    history = {}
    for prompt_id in state.history_ids(max_items):
        history.update(_entry(state, prompt_id))
    return history


@router.get("/history/{prompt_id}")
def get_history_one(prompt_id: str, request: Request) -> dict[str, Any]:
    """``{prompt_id: entry}`` once the prompt has finished; ``{}`` before or if unknown."""
    return _entry(_state(request), prompt_id)


def _entry(state: ComfyState, prompt_id: str) -> dict[str, Any]:
    record = state.load(prompt_id)
    if record is None:
        return {}
    jobs = state.jobs(record)
    return {prompt_id: history_entry(record, jobs)} if finished(jobs) else {}


@router.post("/history")
def post_history(request: Request, body: dict[str, Any]) -> Response:
    """``{"delete": [ids]}`` or ``{"clear": true}``: forget prompts (jobs stay)."""
    state = _state(request)
    if body.get("clear"):
        state.forget(state.history_ids(None))
    delete = body.get("delete")
    if isinstance(delete, list):
        state.forget([str(p) for p in delete])
    return Response(status_code=200)


@router.get("/view", response_model=None, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
def view(request: Request, filename: str, subfolder: str = "",
         type: str = "output") -> Response:
    """An output image (``{job_id}.png`` in ``zq``) or an upload (``type=input``)."""
    client = _client(request)
    if type == "input":
        name = f"{subfolder}/{filename}" if subfolder else filename
        key = _state(request).upload_key(name)
    else:
        key = _output_key(client, filename, subfolder)
    if key is None:
        raise ApiProblem(404, f"no such image: {filename}")
    media = _MEDIA.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    return Response(client.store.get(key), media_type=media,
                    headers={"Content-Disposition": f'filename="{filename}"'})


def _output_key(client: Client, filename: str, subfolder: str) -> str | None:
    job_id, _, _ = filename.rpartition(".")
    if subfolder != OUTPUT_SUBFOLDER or not ID_PATTERN.fullmatch(job_id):
        return None
    try:
        job = client.status(job_id)
    except JobNotFound:
        return None
    if job.image is None or output_filename(job) != filename:
        return None
    return job.image


# -- uploads -----------------------------------------------------------------------
@router.post("/upload/image")
async def upload_image(request: Request, image: UploadFile = File(...),  # noqa: B008
                       overwrite: str = Form("false"), subfolder: str = Form(""),
                       type: str = Form("input")
                       ) -> dict[str, str]:
    """Store an input image under its name: ``{"name", "subfolder", "type"}``."""
    data = await _read(request, image)
    return await run_in_threadpool(_store_upload, _client(request), data,
                                   image.filename or "", subfolder, overwrite, type)


@router.post("/upload/mask")
async def upload_mask(request: Request, image: UploadFile = File(...),  # noqa: B008
                      original_ref: str = Form(...), overwrite: str = Form("false"),
                      subfolder: str = Form(""), type: str = Form("input")
                      ) -> dict[str, str]:
    """ComfyUI's mask editor: the original upload with this image's alpha as its alpha."""
    data = await _read(request, image)
    client = _client(request)
    try:
        ref = json.loads(original_ref)
        ref_name = str(ref["filename"])
        ref_folder = str(ref.get("subfolder") or "")
    except (ValueError, KeyError, TypeError):
        raise InvalidJob("original_ref", "JSON {filename, subfolder, type}",
                         original_ref[:100]) from None
    original = _state(request).upload_key(f"{ref_folder}/{ref_name}" if ref_folder
                                          else ref_name)
    if original is None:
        raise ApiProblem(404, f"no such upload: {ref_name}")
    composed = await run_in_threadpool(_with_alpha, client, original, data)
    return await run_in_threadpool(_store_upload, client, composed, image.filename or "",
                                   subfolder, overwrite, type)


async def _read(request: Request, image: UploadFile) -> bytes:
    limit = _client(request).settings.max_input_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise ApiProblem(413, f"image: over {limit} bytes (ZQ_MAX_INPUT_BYTES)",
                         field="image", limit=f"at most {limit} bytes")
    return data


def _with_alpha(client: Client, original_key: str, mask_data: bytes) -> bytes:
    client.stage(mask_data, "source_image")  # the image door, before decoding it here
    with Image.open(io.BytesIO(client.store.get(original_key))) as opened:
        base = ImageOps.exif_transpose(opened).convert("RGBA")
    with Image.open(io.BytesIO(mask_data)) as opened:
        alpha = opened.convert("RGBA").getchannel("A").resize(base.size)
    base.putalpha(alpha)
    out = io.BytesIO()
    base.save(out, "PNG")
    return out.getvalue()


def _store_upload(client: Client, data: bytes, filename: str, subfolder: str,
                  overwrite: str, type_: str) -> dict[str, str]:
    if type_ != "input":
        raise InvalidJob("type", "input (uploads go to the input folder)", type_)
    if not _NAME.fullmatch(filename) or filename in (".", ".."):
        raise InvalidJob("image", "a file name without slashes", filename[:100])
    if subfolder and (not _SUBFOLDER.fullmatch(subfolder) or ".." in subfolder.split("/")):
        raise InvalidJob("subfolder", "up to 4 plain folder names", subfolder[:100])
    staged = client.stage(data, "source_image")
    key = staged.put(client.store)
    state = ComfyState(client)
    stem, dot, extension = filename.rpartition(".")
    if not dot:
        stem, extension = filename, IMAGE_EXTENSIONS.get("PNG", "png")
    name, counter = filename, 1
    # As ComfyUI does: without overwrite a taken name gets " (n)" unless it is the same image.
    while overwrite.lower() not in ("true", "1"):
        held = state.upload_key(f"{subfolder}/{name}" if subfolder else name)
        if held is None or held == key:
            break
        name, counter = f"{stem} ({counter}).{extension}", counter + 1
    state.remember_upload(f"{subfolder}/{name}" if subfolder else name, key)
    return {"name": name, "subfolder": subfolder, "type": "input"}


# -- queue ------------------------------------------------------------------------------
@router.get("/queue")
def get_queue(request: Request) -> dict[str, list[Any]]:
    """``{"queue_running": [...], "queue_pending": [...]}``; a prompt runs once a job does."""
    running: list[Any] = []
    pending: list[Any] = []
    for record, jobs in _state(request).active():
        started = any(job is not None and (job.status is JobStatus.RUNNING
                                           or job.status.terminal) for job in jobs)
        (running if started else pending).append(record.queue_item())
    return {"queue_running": running, "queue_pending": pending}


@router.post("/queue")
def post_queue(request: Request, body: dict[str, Any]) -> Response:
    """``{"delete": [prompt ids]}`` cancels those prompts; ``{"clear": true}`` the pending."""
    state = _state(request)
    targets: list[PromptRecord] = []
    if body.get("clear"):
        queue = get_queue(request)["queue_pending"]
        targets += [record for item in queue if (record := state.load(item[1]))]
    delete = body.get("delete")
    if isinstance(delete, list):
        targets += [record for p in delete if (record := state.load(str(p)))]
    for record in targets:
        _cancel(state, record)
    return Response(status_code=200)


@router.post("/interrupt")
async def interrupt(request: Request) -> Response:
    """Cancel the running prompt (or ``{"prompt_id"}``'s); its jobs stop at their next step."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = {}
    wanted = body.get("prompt_id") if isinstance(body, dict) else None
    await run_in_threadpool(_interrupt, _state(request), wanted)
    return Response(status_code=200)


def _interrupt(state: ComfyState, wanted: object) -> None:
    for record, jobs in state.active():
        running = any(job is not None and job.status is JobStatus.RUNNING for job in jobs)
        if record.prompt_id == wanted or (wanted is None and running):
            _cancel(state, record)


def _cancel(state: ComfyState, record: PromptRecord) -> None:
    for job_id in record.job_ids:
        try:
            state.client.cancel(job_id)
        except JobNotFound:
            continue


# -- discovery ----------------------------------------------------------------------------
@router.get("/object_info")
def get_object_info(request: Request) -> dict[str, Any]:
    """The supported node classes, LoadImage listing the uploaded names."""
    return object_info(_state(request).upload_names())


@router.get("/object_info/{node_class}")
def get_object_info_one(node_class: str, request: Request) -> dict[str, Any]:
    """One node class's info, or ``{}``."""
    info = object_info(_state(request).upload_names())
    return {node_class: info[node_class]} if node_class in info else {}


@router.get("/system_stats")
def system_stats() -> dict[str, Any]:
    """ComfyUI's shape; devices are the workers', not this process's, so none are listed."""
    return {"system": {"os": os.name, "ram_total": 0, "ram_free": 0,
                       "comfyui_version": "zq", "python_version": sys.version,
                       "pytorch_version": "", "embedded_python": False,
                       "argv": ["zq", "api"]},
            "devices": []}
