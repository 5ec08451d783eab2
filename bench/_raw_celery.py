"""A minimal Celery app with zimage-queue's broker settings: the "raw Celery" side of
``bench/broker_scale.py``.

It takes the transport and worker options of ``common.queueing.celery_config`` (late acks,
rejection on a lost worker, no prefetch, priority steps 0..9 polled in priority order, the
same visibility timeout, the three ``zq.*`` queues, task events, solo pool, JSON only) and
adds what a plain Celery user would have instead of zimage-queue's job records: a Redis
result backend on the broker's Redis, so producers wait with ``AsyncResult.get``. It uses
kombu's stock Redis transport (zq workers use ``worker.transport``'s subclass, which only
changes how a popped item is parsed). No zq code runs in its workers: no job store, no
liveness thread, no registry.

Run by the benchmark as ``celery -A _raw_celery worker -Q zq.turbo --pool=solo ...`` with
``bench/`` on ``PYTHONPATH`` and ``RAW_BENCH_REDIS_URL`` set. A worker marks itself ready in
the hash ``rawbench:worker:{hostname}`` (field ``ready`` = ``"1"``), like zq's registry.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import redis
from celery import Celery, signals

from common.queueing import celery_config
from common.settings import Settings

REDIS_URL = os.environ.get("RAW_BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")
QUEUES = ("zq.turbo", "zq.edit", "zq.base")
QUEUE = QUEUES[0]
TASK = "raw.noop"
READY_KEY = "rawbench:worker:{name}"


def raw_config(redis_url: str) -> dict[str, Any]:
    """zimage-queue's own Celery options, plus the result backend a plain user would have."""
    return {
        **celery_config(replace(Settings(), redis_url=redis_url)),
        "result_backend": redis_url,
        "task_ignore_result": False,
        "result_serializer": "json",
    }


app = Celery("zq-raw-bench", set_as_current=False)
app.conf.update(raw_config(REDIS_URL))


# Seconds each task takes (RAW_BENCH_TASK_S): the benchmark paces it like zq's render, so
# both sides spread the same number of jobs over the same time.
TASK_S = float(os.environ.get("RAW_BENCH_TASK_S", "0"))


@app.task(name=TASK)
def noop(job_id: str) -> float:
    """Take ``TASK_S``; return when it ended (``time.time()``) so producers time the wake-up."""
    del job_id
    if TASK_S:
        time.sleep(TASK_S)
    return time.time()


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    """Say ready in Redis, as a zq worker does in its registry hash."""
    name = os.environ.get("RAW_BENCH_NAME") or getattr(sender, "hostname", "raw")
    redis.Redis.from_url(REDIS_URL).hset(READY_KEY.format(name=name), "ready", "1")
