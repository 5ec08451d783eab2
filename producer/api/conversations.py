"""A conversation's turns as a tree, from the job store's index of its jobs."""

from __future__ import annotations

from typing import Any

from common.errors import JobNotFound
from producer.client import Client

MAX_TURNS = 1000


def tree(client: Client, conversation_id: str) -> dict[str, Any]:
    """The conversation's turns nested by parent; ``JobNotFound`` if none is known.

    Each shard indexes the turns it holds (a conversation started twice may span
    shards; a turn is always on its parent's), so every shard is asked.
    """
    nodes: dict[str, dict[str, Any]] = {}
    for shard in client.shards:
        ids = shard.jobs.conversation_jobs(conversation_id, MAX_TURNS)
        if conversation_id not in ids:
            # Records from before every job was indexed: a conversation is named after
            # its first job.
            ids.insert(0, conversation_id)
        # One round trip for every turn; an expired id (or one that is no job) reads None.
        for job_id, record in zip(ids, shard.jobs.get_many(ids), strict=True):
            if record is not None and record.spec.conversation_id == conversation_id:
                nodes.setdefault(job_id, {"job": record.to_public(), "children": []})
    if not nodes:
        raise JobNotFound(f"conversation {conversation_id} is not known")
    roots: list[dict[str, Any]] = []
    for node in nodes.values():
        parent = nodes.get(node["job"]["parent_id"] or "")
        (parent["children"] if parent else roots).append(node)
    return {"conversation_id": conversation_id, "jobs": len(nodes), "turns": roots}
