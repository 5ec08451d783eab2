"""Priority aging: a job that waited too long is promoted, so bulk work is never starved.

Workers take the most urgent waiting message first (strict priority), so a steady
stream of interactive turns could hold catalogue jobs back forever. Every worker's
liveness loop therefore looks at the oldest messages of its queue's lower-priority
lists; a job queued longer than ``max_wait_s`` gets a second message at the top
priority. Whichever message a worker takes first runs the job; the other is dropped
when it is reached, as every duplicate is (the claim in ``JobStore``).
"""

from __future__ import annotations

import time

from celery import Celery

from common.job import MAX_PRIORITY, ModelType
from common.jobstore import JobStore
from common.queueing import publish
from common.queueload import message_job_id, priority_lists

OLDEST_PER_LIST = 20


def promote_overdue(jobs: JobStore, app: Celery, model: ModelType, max_wait_s: float,
                    now: float | None = None) -> list[str]:
    """Publish a top-priority message for each overdue queued job; returns their ids."""
    now = time.time() if now is None else now
    promoted = []
    # The first list is the top priority already; the others are scanned oldest first.
    for name in priority_lists(model)[1:]:
        for raw in reversed(jobs.redis.lrange(name, -OLDEST_PER_LIST, -1)):
            job_id = message_job_id(raw)
            if job_id is None:
                continue
            fields = jobs.redis.hmget(jobs.job_key(job_id), ["status", "queued_at"])
            status, queued_at = fields[0], fields[1]
            if status != "queued" or not queued_at or now - float(queued_at) < max_wait_s:
                continue
            if not jobs.redis.hsetnx(jobs.job_key(job_id), "promoted_at", now):
                continue  # promoted before
            spec = jobs.get(job_id).spec
            publish(app, spec, priority=MAX_PRIORITY)
            promoted.append(job_id)
    return promoted
