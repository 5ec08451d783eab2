"""Server-Sent Events for one job: progress and status changes until it ends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from producer.client import Client

POLL_S = 0.3
KEEPALIVE_S = 15.0


def frame(event: str, data: dict[str, Any]) -> str:
    """One SSE frame."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(client: Client, job_id: str, poll_s: float = POLL_S) -> AsyncIterator[str]:
    """``status`` on every change, ``progress`` on every step, a final ``end``.

    The record is polled (no pub/sub), so any replica can serve any job; the thread
    is held only for each read, not for the life of the stream.
    """
    status, progress, quiet_since = None, None, time.monotonic()
    while True:
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
        await asyncio.sleep(poll_s)
