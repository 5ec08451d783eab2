"""A job request body (JSON) to a checked spec, through the same ``new_job`` door as the CLI."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from common.errors import InvalidJob, JobNotFound, UnknownParent
from common.job import ID_PATTERN, KEY_PATTERN, JobSpec, new_job
from producer.api.problems import ApiProblem
from producer.client import Client

IDEMPOTENCY_HEADER = "Idempotency-Key"


class JobRequest(BaseModel):
    """The body of ``POST /v1/jobs``: documentation only; ``new_job`` does the checking."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "generate"
    prompt: str | None = None
    negative_prompt: str | None = None
    model: str | None = "auto"
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    strength: float | None = None
    parent_id: str | None = None
    source_image: str | None = None
    mask: str | None = None
    conversation_id: str | None = None
    job_id: str | None = None
    tags: dict[str, str] | None = None
    priority: int | None = None
    output_format: str | None = "png"
    quality: int | None = None
    webhook: str | None = None


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a body; 400 if it is not JSON, 422 if not an object."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        raise ApiProblem(400, "the body is not valid JSON", field="body",
                         limit="a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidJob("body", "must be a JSON object", type(body).__name__)
    return body


def spec_from_body(client: Client, body: dict[str, Any],
                   idempotency_key: str | None) -> tuple[JobSpec, str | None]:
    """The checked spec and webhook; raises ``InvalidJob`` naming the field."""
    fields = dict(body)
    kind = fields.pop("kind", "generate")
    if not isinstance(kind, str):
        raise InvalidJob("kind", "one of generate, edit, refine", kind)
    webhook = fields.pop("webhook", None)
    if not isinstance(fields.get("model", ""), str | None):  # new_job reads [] as "auto"
        raise InvalidJob("model", "one of auto, turbo, edit, base", fields["model"])
    if webhook is not None and not isinstance(webhook, str):
        raise InvalidJob("webhook", "an https or http URL", webhook)
    if idempotency_key is not None:
        _apply_idempotency_key(fields, idempotency_key)
    if isinstance(fields.get("job_id"), str) and fields.get("seed") is None:
        # A drawn seed would make every retry a different spec (409): derive it instead.
        fields["seed"] = _seed_for(fields["job_id"])
    parent = fields.get("parent_id")
    if parent is not None:
        _inherit_from_parent(client, fields, kind, parent)
    for name in ("source_image", "mask"):
        if fields.get(name) is not None:
            _check_stored(client, name, fields[name])
    return new_job(kind, **fields), webhook


def _seed_for(job_id: str) -> int:
    """A seed fixed by the job id, so a retried request is the same spec."""
    return int(hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) % 2**31


def _apply_idempotency_key(fields: dict[str, Any], key: str) -> None:
    if not ID_PATTERN.fullmatch(key):
        raise InvalidJob(IDEMPOTENCY_HEADER,
                         "1-100 characters of letters, digits, '_', '.', '-'", key)
    if fields.get("job_id") not in (None, key):
        raise InvalidJob("job_id", f"must equal the {IDEMPOTENCY_HEADER} header when both "
                         "are given", fields["job_id"])
    fields["job_id"] = key


def _inherit_from_parent(client: Client, fields: dict[str, Any], kind: str,
                         parent: object) -> None:
    if not isinstance(parent, str) or not ID_PATTERN.fullmatch(parent):
        raise InvalidJob("parent_id", "1-100 characters of letters, digits, '_', '.', '-'",
                         parent)
    try:
        parent_spec = client.status(parent).spec
    except JobNotFound:
        raise UnknownParent(parent) from None
    if fields.get("conversation_id") is None:
        fields["conversation_id"] = parent_spec.conversation_id
    if kind == "refine" and not fields.get("prompt"):
        fields["prompt"] = parent_spec.prompt


def _check_stored(client: Client, name: str, key: object) -> None:
    """Inputs are storage keys only (``POST /v1/uploads``): never a path on this server."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key) or ".." in key:
        raise InvalidJob(name, "a storage key from POST /v1/uploads", key)
    if not client.store.exists(key):
        raise InvalidJob(name, "no such storage key (upload it with POST /v1/uploads)", key)
