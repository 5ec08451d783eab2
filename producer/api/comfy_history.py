"""What the ComfyUI routes remember in Redis: uploads by name, prompts and their jobs.

Keys, under the settings' key prefix (built by :mod:`common.keys`):

* ``{prefix}:comfy:upload:{name}`` -> the storage key of an image uploaded as ``name``
  (``subfolder/file`` or ``file``, as ComfyUI lists its input folder); the set
  ``{prefix}:comfy:uploads`` lists the names.
* ``{prefix}:comfy:prompt:{prompt_id}`` -> a JSON ``PromptRecord``; the sorted set
  ``{prefix}:comfy:prompts`` orders prompts by number, ``{prefix}:comfy:active`` holds
  those not yet seen finished, ``{prefix}:comfy:client:{client_id}`` those a client
  sent (for its WebSocket), and ``{prefix}:comfy:number`` counts them.

Prompt records expire with job records (``ZQ_RECORD_TTL_S``); the indexes are pruned
of expired ids as they are read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from common.job import ID_PATTERN
from common.keys import Keys
from common.status import JobRecord, JobStatus
from producer.client import Client

OUTPUT_SUBFOLDER = "zq"
MAX_HISTORY = 1000


@dataclass(frozen=True)
class PromptRecord:
    """One submitted workflow: its number, its jobs (one per plan) and where they show."""

    prompt_id: str
    number: int
    workflow: dict[str, Any]
    extra_data: dict[str, Any]
    client_id: str
    job_ids: list[str]
    # The output node ids showing each job's image (empty for an intermediate pass).
    job_outputs: list[list[str]]
    # The sampler node and its class per job, named when a job fails.
    job_nodes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def output_nodes(self) -> list[str]:
        """Every output node id, once each, in plan order."""
        seen: dict[str, None] = {}
        for nodes in self.job_outputs:
            seen.update(dict.fromkeys(nodes))
        return list(seen)

    def queue_item(self) -> list[Any]:
        """ComfyUI's queue entry: [number, prompt_id, workflow, extra_data, outputs]."""
        return [self.number, self.prompt_id, self.workflow, self.extra_data, self.output_nodes]


class ComfyState:
    """Reads and writes the ComfyUI routes' Redis keys for one client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.redis = client.jobs.redis
        self.keys = Keys(client.settings.key_prefix)
        self.ttl_s = client.settings.record_ttl_s

    # -- uploads -------------------------------------------------------------
    def upload_key(self, name: str) -> str | None:
        """The storage key uploaded as ``name``, or None."""
        found = self.redis.get(self.keys.comfy_upload(name))
        return cast(str | None, found)

    def remember_upload(self, name: str, key: str) -> None:
        """Name an uploaded storage key; uploads are kept until overwritten."""
        pipe = self.redis.pipeline()
        pipe.set(self.keys.comfy_upload(name), key)
        pipe.sadd(self.keys.comfy_uploads, name)
        pipe.execute()

    def upload_names(self) -> list[str]:
        """Every uploaded name, sorted."""
        return sorted(cast(set[str], self.redis.smembers(self.keys.comfy_uploads)))

    # -- prompts -------------------------------------------------------------
    def next_number(self) -> int:
        """The next prompt number (ComfyUI's queue position)."""
        return int(self.redis.incr(self.keys.comfy_number))

    def save(self, record: PromptRecord) -> None:
        """Record a submitted prompt and index it as active."""
        key = self.keys.comfy_prompt(record.prompt_id)
        pipe = self.redis.pipeline()
        pipe.set(key, json.dumps(asdict(record)), ex=self.ttl_s or None)
        pipe.zadd(self.keys.comfy_prompts, {record.prompt_id: record.number})
        pipe.zadd(self.keys.comfy_active, {record.prompt_id: record.number})
        if ID_PATTERN.fullmatch(record.client_id):
            by_client = self.keys.comfy_client(record.client_id)
            pipe.zadd(by_client, {record.prompt_id: record.number})
            pipe.zremrangebyrank(by_client, 0, -MAX_HISTORY - 1)
            if self.ttl_s:
                pipe.expire(by_client, self.ttl_s)
        pipe.execute()

    def number(self) -> int:
        """The number of the latest prompt (0 before any)."""
        return int(cast(str | None, self.redis.get(self.keys.comfy_number)) or 0)

    def client_prompts(self, client_id: str, after: int) -> list[tuple[str, int]]:
        """(prompt id, number) of the client's prompts numbered above ``after``."""
        found = self.redis.zrangebyscore(self.keys.comfy_client(client_id),
                                         f"({after}", "+inf", withscores=True)
        return [(prompt_id, int(score)) for prompt_id, score in
                cast(list[tuple[str, float]], found)]

    def load(self, prompt_id: str) -> PromptRecord | None:
        """The prompt's record, or None if unknown or expired."""
        raw = self.redis.get(self.keys.comfy_prompt(prompt_id))
        if not raw:
            return None
        return PromptRecord(**json.loads(cast(str, raw)))

    def forget(self, prompt_ids: list[str]) -> None:
        """Drop prompts from the history (their jobs are untouched)."""
        if not prompt_ids:
            return
        pipe = self.redis.pipeline()
        pipe.zrem(self.keys.comfy_prompts, *prompt_ids)
        pipe.zrem(self.keys.comfy_active, *prompt_ids)
        pipe.delete(*(self.keys.comfy_prompt(p) for p in prompt_ids))
        pipe.execute()

    def jobs(self, record: PromptRecord) -> list[JobRecord | None]:
        """The prompt's job records in plan order (None: expired)."""
        return self.client.records(record.job_ids)

    def active(self) -> list[tuple[PromptRecord, list[JobRecord | None]]]:
        """Unfinished prompts by number, with their jobs; finished ones leave the index."""
        ids = cast(list[str], self.redis.zrange(self.keys.comfy_active, 0, -1))
        result, done = [], []
        for prompt_id in ids:
            record = self.load(prompt_id)
            jobs = self.jobs(record) if record else []
            if record is None or finished(jobs):
                done.append(prompt_id)
            else:
                result.append((record, jobs))
        if done:
            self.redis.zrem(self.keys.comfy_active, *done)
        return result

    def history_ids(self, max_items: int | None) -> list[str]:
        """The newest prompt ids (at most ``max_items``), oldest first."""
        count = min(max_items or MAX_HISTORY, MAX_HISTORY)
        ids = cast(list[str], self.redis.zrange(self.keys.comfy_prompts, -count, -1))
        return ids


def finished(jobs: list[JobRecord | None]) -> bool:
    """Whether every job of a prompt has ended (an expired job has)."""
    return all(job is None or job.status.terminal for job in jobs)


def output_filename(job: JobRecord) -> str:
    """The file name a finished job's image is shown under: ``{job_id}.{ext}``."""
    extension = (job.image or "x.png").rsplit(".", 1)[-1]
    return f"{job.spec.job_id}.{extension}"


def history_entry(record: PromptRecord, jobs: list[JobRecord | None]) -> dict[str, Any]:
    """ComfyUI's history entry of a finished prompt."""
    outputs: dict[str, dict[str, list[dict[str, str]]]] = {}
    for job, nodes in zip(jobs, record.job_outputs, strict=True):
        if job is None or job.status is not JobStatus.SUCCEEDED or job.image is None:
            continue
        for node_id in nodes:
            outputs.setdefault(node_id, {"images": []})["images"].append(
                {"filename": output_filename(job), "subfolder": OUTPUT_SUBFOLDER,
                 "type": "output"})
    started = min((job.started_at or job.created_at for job in jobs if job), default=0.0)
    ended = max((job.finished_at or 0.0 for job in jobs if job), default=0.0)
    base = {"prompt_id": record.prompt_id}
    messages: list[list[Any]] = [["execution_start", {**base, "timestamp": _ms(started)}]]
    failed = next(((i, job) for i, job in enumerate(jobs)
                   if job is None or job.status is not JobStatus.SUCCEEDED), None)
    if failed is None:
        messages.append(["execution_success", {**base, "timestamp": _ms(ended)}])
    else:
        index, job = failed
        node_id = record.job_nodes[index] if index < len(record.job_nodes) else ""
        node = {**base, "node_id": node_id,
                "node_type": record.workflow.get(node_id, {}).get("class_type", ""),
                "executed": [], "timestamp": _ms(ended)}
        if job is not None and job.status is JobStatus.CANCELLED:
            messages.append(["execution_interrupted", node])
        else:
            reason = job.error if job is not None else "the job's record has expired"
            messages.append(["execution_error", {
                **node, "exception_message": reason or "failed",
                "exception_type": (job.error_code if job else None) or "JobFailed",
                "traceback": [], "current_inputs": {}, "current_outputs": {}}])
    return {
        "prompt": [record.number, record.prompt_id, record.workflow, record.extra_data,
                   record.output_nodes],
        "outputs": outputs,
        "status": {"status_str": "success" if failed is None else "error",
                   "completed": failed is None, "messages": messages},
        "meta": {node_id: {"node_id": node_id, "display_node": node_id}
                 for node_id in outputs},
    }


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
