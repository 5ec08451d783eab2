"""How much work each model type has: what autoscaling and alerting should follow.

Reads the broker as kombu lays it out on Redis: a queue is a list, plus one list per
priority step (``<queue>\\x06\\x16<n>``); a message being worked on has left the list
and sits in the ``unacked`` hash until it is acknowledged. So LLEN alone reads 0 while
every GPU is busy: load is waiting + reserved (which includes running).

A sharded fleet (``ZQ_REDIS_SHARDS``) has one broker per shard: each is read on its own
and ``fleet_loads`` adds them up.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from common.job import ModelType
from common.keys import Keys
from common.queueing import PRIORITY_STEPS, queue_name

KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_UNACKED = "unacked"


@dataclass(frozen=True)
class QueueLoad:
    """One model type's queue, read at one moment."""

    model: ModelType
    waiting: int
    reserved: int
    running: int
    oldest_waiting_s: float
    workers: int
    ready_workers: int

    @property
    def load(self) -> int:
        """Jobs that need a worker now: waiting plus those held by a worker."""
        return self.waiting + max(self.reserved, self.running)


def priority_lists(model: ModelType) -> list[str]:
    """Every Redis list holding waiting messages of the model's queue."""
    queue = queue_name(model)
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}"
            for step in PRIORITY_STEPS]


def read_loads(client: redis.Redis, prefix: str = "zq",
               now: float | None = None) -> list[QueueLoad]:
    """The load of every model type's queue."""
    now = time.time() if now is None else now
    reserved = _reserved_by_queue(client)
    keys = Keys(prefix)
    loads = []
    for model in ModelType:
        lists = priority_lists(model)
        pipe = client.pipeline(transaction=False)
        for name in lists:
            pipe.llen(name)
        for name in lists:
            pipe.lindex(name, -1)  # kombu pushes left and pops right: the oldest is last
        pipe.scard(keys.running(model))
        pipe.smembers(keys.workers(model))
        results = pipe.execute()
        lengths, tails = results[: len(lists)], results[len(lists): 2 * len(lists)]
        running, worker_ids = results[-2], results[-1]
        workers, ready = _workers(client, keys, worker_ids)
        loads.append(QueueLoad(
            model=model, waiting=sum(int(n) for n in lengths),
            reserved=reserved.get(queue_name(model), 0), running=int(running),
            oldest_waiting_s=_oldest_age(client, keys, tails, now),
            workers=workers, ready_workers=ready))
    return loads


@dataclass(frozen=True)
class FleetLoad(QueueLoad):
    """One model type's queues on several shards, added up.

    Its ``load`` is the sum of each shard's, not recomputed from the sums: one shard's
    reserved messages and another's running jobs are different jobs.
    """

    summed_load: int = 0

    @property
    def load(self) -> int:
        """Jobs that need a worker now, on every shard."""
        return self.summed_load


def fleet_loads(per_shard: Sequence[Sequence[QueueLoad]]) -> list[FleetLoad]:
    """Each model type's load over several shards: counts add up, the oldest wait is the max.

    Models come out in ``ModelType`` order; one missing from a shard's reading counts 0.
    """
    totals = []
    for model in ModelType:
        loads = [load for reading in per_shard for load in reading if load.model is model]
        totals.append(FleetLoad(
            model=model, waiting=sum(load.waiting for load in loads),
            reserved=sum(load.reserved for load in loads),
            running=sum(load.running for load in loads),
            oldest_waiting_s=max((load.oldest_waiting_s for load in loads), default=0.0),
            workers=sum(load.workers for load in loads),
            ready_workers=sum(load.ready_workers for load in loads),
            summed_load=sum(load.load for load in loads)))
    return totals


def _reserved_by_queue(client: redis.Redis) -> dict[str, int]:
    counts: dict[str, int] = {}
    for raw in cast(list[Any], client.hvals(KOMBU_UNACKED)):
        try:
            routing_key = str(json.loads(raw)[2])
        except (ValueError, IndexError, TypeError):
            continue
        counts[routing_key] = counts.get(routing_key, 0) + 1
    return counts


def _oldest_age(client: redis.Redis, keys: Keys, tails: list[Any], now: float) -> float:
    oldest = now
    for raw in tails:
        job_id = message_job_id(raw)
        if job_id is None:
            continue
        queued_at = client.hget(keys.job(job_id), "queued_at")
        if queued_at:
            oldest = min(oldest, float(queued_at))
    return max(now - oldest, 0.0)


def message_job_id(raw: Any) -> str | None:
    """The job id inside a Celery message, or None for anything else."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _ = json.loads(body)
        job_id = kwargs.get("job_id") or (args[0] if args else None)
        return str(job_id) if job_id else None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None  # not one of ours: a message a worker will dead-letter


def _workers(client: redis.Redis, keys: Keys, worker_ids: Any) -> tuple[int, int]:
    alive = ready = 0
    for worker_id in worker_ids:
        name = worker_id.decode() if isinstance(worker_id, bytes) else str(worker_id)
        flag = client.hget(keys.worker(name), "ready")
        if flag is None:
            continue  # its record expired: the worker stopped beating
        alive += 1
        ready += int(flag in ("1", b"1"))
    return alive, ready
