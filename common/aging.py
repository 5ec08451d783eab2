"""Priority aging: a job that waited too long is promoted, so bulk work is never starved.

Workers take the most urgent waiting message first (strict priority), so a steady
stream of interactive turns could hold catalogue jobs back forever. The worker doing the
fleet's chores for a model type (one at a time, ``worker.liveness``) therefore looks at
the oldest messages of its queue's lower-priority lists every beat; a job queued longer
than ``max_wait_s`` gets a second message at the top priority. Whichever message a worker
takes first runs the job; the other is dropped when it is reached, as every duplicate is
(the claim in ``JobStore``).

A scan is two round trips to Redis whatever the backlog: the oldest messages of every
list in one, the records they name in the other.
"""

from __future__ import annotations

import time
from typing import Any

from common.job import MAX_PRIORITY, ModelType
from common.jobstore import JobStore
from common.queueing import Sender, publish
from common.queueload import message_job_id, priority_lists

OLDEST_PER_LIST = 20


def promote_overdue(jobs: JobStore, app: Sender, model: ModelType, max_wait_s: float,
                    now: float | None = None) -> list[str]:
    """Publish a top-priority message for each overdue queued job; returns their ids."""
    now = time.time() if now is None else now
    promoted = []
    for job_id in dict.fromkeys(overdue_jobs(jobs, model, max_wait_s, now)):
        # Sent, then marked: whoever sees the mark can count on the message being queued
        # (a crash in between only sends a second, harmless, duplicate next beat).
        publish(app, jobs.get(job_id).spec, priority=MAX_PRIORITY)
        jobs.redis.hset(jobs.job_key(job_id), "promoted_at", now)
        promoted.append(job_id)
    return promoted


def overdue_jobs(jobs: JobStore, model: ModelType, max_wait_s: float, now: float) -> list[str]:
    """Queued jobs not promoted yet, among the oldest messages of each lower-priority list,
    that waited too long.

    List by list, oldest first; a job with two messages in view is named twice.
    """
    waiting = oldest_waiting(jobs, model)
    pipe = jobs.redis.pipeline(transaction=False)
    for job_id in waiting:
        pipe.hmget(jobs.job_key(job_id), ["status", "queued_at", "promoted_at"])
    records: list[Any] = pipe.execute() if waiting else []
    return [job_id for job_id, (status, queued_at, promoted_at)
            in zip(waiting, records, strict=True)
            if status == "queued" and queued_at and not promoted_at
            and now - float(queued_at) >= max_wait_s]


def oldest_waiting(jobs: JobStore, model: ModelType) -> list[str]:
    """The job ids of the ``OLDEST_PER_LIST`` oldest messages of each lower-priority list.

    List by list, oldest first; messages that are not ours are left out.
    """
    pipe = jobs.redis.pipeline(transaction=False)
    # The first list is the top priority already.
    for name in priority_lists(model)[1:]:
        pipe.lrange(name, -OLDEST_PER_LIST, -1)
    job_ids = []
    for messages in pipe.execute():
        # kombu pushes on the left and pops on the right: the oldest message is last.
        for raw in reversed(messages):
            job_id = message_job_id(raw)
            if job_id is not None:
                job_ids.append(job_id)
    return job_ids
