"""Conversations submitted through the API: an index of their jobs and the tree of turns."""

from __future__ import annotations

import time
from typing import Any, cast

from common.errors import JobNotFound
from common.job import JobSpec
from producer.client import Client

MAX_TURNS = 1000


def _key(client: Client, conversation_id: str) -> str:
    return f"{client.settings.key_prefix}:api:conversation:{conversation_id}"


def remember(client: Client, spec: JobSpec) -> None:
    """Index a job under its conversation; the index lives as long as job records do."""
    key = _key(client, spec.conversation_id)
    pipe = client.jobs.redis.pipeline()
    pipe.zadd(key, {spec.job_id: time.time()}, nx=True)
    if client.settings.record_ttl_s:
        pipe.expire(key, client.settings.record_ttl_s)
    pipe.execute()


def tree(client: Client, conversation_id: str) -> dict[str, Any]:
    """The conversation's turns nested by parent; ``JobNotFound`` if none is known."""
    found = cast(list[str], client.jobs.redis.zrange(_key(client, conversation_id),
                                                     0, MAX_TURNS - 1))
    ids = list(found)
    if conversation_id not in ids:
        ids.insert(0, conversation_id)  # a job's own conversation is named after it
    nodes: dict[str, dict[str, Any]] = {}
    for job_id in ids:
        try:
            record = client.status(job_id)
        except JobNotFound:  # expired, or the id is no job at all
            continue
        if record.spec.conversation_id == conversation_id:
            nodes[job_id] = {"job": record.to_public(), "children": []}
    if not nodes:
        raise JobNotFound(f"conversation {conversation_id} is not known")
    roots: list[dict[str, Any]] = []
    for node in nodes.values():
        parent = nodes.get(node["job"]["parent_id"] or "")
        (parent["children"] if parent else roots).append(node)
    return {"conversation_id": conversation_id, "jobs": len(nodes), "turns": roots}
