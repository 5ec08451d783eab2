"""Server-Sent Events for one job: progress and status changes until it ends.

Pushed, not polled: the stream subscribes to the job's ``progress`` and ``ended``
channels and reads the record when one speaks (a running job publishes its step at
most every 250 ms). A slow re-read covers what pub/sub does not say (queued to running
before the first step) and a lost message; any replica can serve any job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from producer.client import Client

FALLBACK_S = 2.0
KEEPALIVE_S = 15.0


def frame(event: str, data: dict[str, Any]) -> str:
    """One SSE frame."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(client: Client, job_id: str,
                     fallback_s: float | None = None) -> AsyncIterator[str]:
    """``status`` on every change, ``progress`` on every step recorded, a final ``end``.

    ``fallback_s``: the re-read interval when nothing is published (``FALLBACK_S``).
    """
    fallback_s = FALLBACK_S if fallback_s is None else fallback_s
    shard = await run_in_threadpool(client.shards.holding, job_id)
    keys = shard.jobs.keys
    # The stream's own connection to the job's shard (a subscribed one serves nothing
    # else), made in the event loop that serves the stream.
    listener = aioredis.Redis.from_url(shard.url, decode_responses=True)
    pubsub: Any = listener.pubsub()
    try:
        await pubsub.subscribe(keys.progress(job_id), keys.ended(job_id))
    except redis.RedisError:
        pubsub = None  # Redis refuses a subscription: read on the timer instead
    try:
        async for chunk in _follow(client, job_id, pubsub, fallback_s):
            yield chunk
    finally:
        if pubsub is not None:
            await pubsub.aclose()
        await listener.aclose()


async def _follow(client: Client, job_id: str, pubsub: Any,
                  fallback_s: float) -> AsyncIterator[str]:
    status, progress, quiet_since = None, None, time.monotonic()
    while True:
        # Read after subscribing: whatever happened before is in the record.
        record = (await run_in_threadpool(client.status, job_id)).to_public()
        if record["status"] != status:
            status = record["status"]
            yield frame("status", {"job_id": job_id, "status": status})
            quiet_since = time.monotonic()
        if record["progress"] != progress and record["progress"]["total"]:
            progress = record["progress"]
            yield frame("progress", {"job_id": job_id, **record["progress"]})
            quiet_since = time.monotonic()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            yield frame("end", record)
            return
        if time.monotonic() - quiet_since > KEEPALIVE_S:  # proxies drop silent streams
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await _next_news(pubsub, fallback_s)


async def _next_news(pubsub: Any, fallback_s: float) -> None:
    """Until a message on the job's channels, or ``fallback_s``, whichever comes first."""
    if pubsub is None:
        await asyncio.sleep(fallback_s)
        return
    deadline = time.monotonic() + fallback_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None:
                return
    except redis.RedisError:
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))  # read on the timer
