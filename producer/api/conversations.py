"""A conversation's turns as a tree, from the job store's index of its jobs."""

from __future__ import annotations

from typing import Any

from common.errors import JobNotFound
from producer.client import Client

MAX_TURNS = 1000


def tree(client: Client, conversation_id: str) -> dict[str, Any]:
    """The conversation's turns nested by parent; ``JobNotFound`` if none is known."""
    ids = client.jobs.conversation_jobs(conversation_id, MAX_TURNS)
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
