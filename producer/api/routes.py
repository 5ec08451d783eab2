"""The ``/v1`` routes: jobs, their images, manifests and events, uploads, conversations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from common.errors import InvalidJob, JobFailed
from common.layout import CONTENT_TYPES
from common.storage import LocalStore
from producer.api import conversations
from producer.api.events import job_events
from producer.api.jobs import IDEMPOTENCY_HEADER, JobRequest, parse_body, spec_from_body
from producer.api.problems import ApiProblem
from producer.client import Client

router = APIRouter(prefix="/v1")
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, **_PROBLEM} for code, text in (
        (400, "malformed request"), (401, "missing or unknown API key"),
        (404, "unknown job"), (409, "conflict"), (413, "body too large"),
        (422, "invalid field (named in `field`)"), (429, "rate limited"))}
_INPUT_FIELDS = ("source_image", "mask")


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


@router.post("/jobs", status_code=201, responses=_ERRORS, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": JobRequest.model_json_schema()}}}})
async def submit_job(request: Request) -> JSONResponse:
    """Submit a job. With ``Idempotency-Key`` (the job id) a retry returns the same job (200)."""
    body = parse_body(await request.body())
    key = request.headers.get(IDEMPOTENCY_HEADER)
    record, created = await run_in_threadpool(_submit, _client(request), body, key)
    return JSONResponse(record, status_code=201 if created else 200,
                        headers={"Location": f"/v1/jobs/{record['job_id']}"})


def _submit(client: Client, body: dict[str, Any], key: str | None) -> tuple[dict[str, Any], bool]:
    spec, webhook = spec_from_body(client, body, key)
    new_id = key is None and body.get("job_id") is None  # the id was drawn just now
    # Two replicas racing on one new key may both answer 201; the job is still one job.
    existed = not new_id and client.shards.known(spec.job_id)
    client.submit(spec, webhook, new_id=new_id)
    return client.status(spec.job_id).to_public(), not existed


@router.get("/jobs/{job_id}", responses=_ERRORS)
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """The job's record: status, progress, outcome."""
    return _client(request).status(job_id).to_public()


@router.delete("/jobs/{job_id}", responses=_ERRORS)
@router.post("/jobs/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel a job; a running job stops at its next step. Returns its status now."""
    status = _client(request).cancel(job_id)
    return {"job_id": job_id, "status": status.value}


@router.get("/jobs/{job_id}/image", responses={
    302: {"description": "redirect to a presigned URL (S3)"},
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **_ERRORS},
    response_model=None)
def get_image(job_id: str, request: Request, redirect: bool = True) -> Response:
    """The finished image: a redirect to a presigned URL, or the bytes on local storage.

    ``redirect=false`` streams the bytes through the API whatever the storage, for
    callers that cannot follow a cross-origin redirect with their credentials (a page).
    """
    client = _client(request)
    record = client.status(job_id)
    if record.image is None:
        raise JobFailed(f"job {job_id} has no image ({record.status.value})")
    if isinstance(client.store, LocalStore) or not redirect:
        return Response(client.store.get(record.image),
                        media_type=CONTENT_TYPES[record.spec.output_format],
                        headers={"Cache-Control": "private, max-age=86400"})
    return RedirectResponse(client.store.url(record.image, client.settings.presign_expiry_s),
                            status_code=302)


@router.get("/jobs/{job_id}/manifest", responses=_ERRORS)
def get_manifest(job_id: str, request: Request) -> dict[str, Any]:
    """The finished job's provenance manifest."""
    return _client(request).manifest(job_id)


@router.get("/jobs/{job_id}/events", responses={
    200: {"content": {"text/event-stream": {}}}, **_ERRORS}, response_model=None)
async def job_events_stream(job_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: ``status``, ``progress`` {step, total}, then one ``end``."""
    client = _client(request)
    await run_in_threadpool(client.status, job_id)  # 404 now, not inside the stream
    return StreamingResponse(job_events(client, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/uploads", status_code=201, responses=_ERRORS)
async def upload(request: Request, file: UploadFile = File(...),  # noqa: B008
                 field: str = Form("source_image")) -> dict[str, Any]:
    """Store an input image (``field``: source_image or mask) under its content's key."""
    if field not in _INPUT_FIELDS:
        raise InvalidJob("field", "one of source_image, mask", field)
    client = _client(request)
    limit = client.settings.max_input_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiProblem(413, f"{field}: over {limit} bytes (ZQ_MAX_INPUT_BYTES)",
                         field=field, limit=f"at most {limit} bytes")
    staged = await run_in_threadpool(client.stage, data, field)
    key = await run_in_threadpool(staged.put, client.store)
    width, height = staged.size or (None, None)
    return {"key": key, "field": field, "content_type": staged.content_type,
            "width": width, "height": height}


@router.get("/conversations/{conversation_id}", responses=_ERRORS)
def get_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    """The conversation's turns as a tree: every job submitted in it, by any producer."""
    return conversations.tree(_client(request), conversation_id)
