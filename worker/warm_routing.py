"""Adapter jobs go to workers that already hold their adapters: a soft affinity.

Every worker of a model type consumes the one shared queue, so a job naming a brand's
LoRA adapter lands on whichever worker is free first, which may have to fetch and load
the file while another worker holding it sits idle. Here, when a worker receives such a
job and lacks one of its adapters, it looks for an idle live worker that holds them all
and, if there is one, passes the job to that worker's own queue (``zq.{model}.to.{id}``)
instead of running it. The rules that keep the queue's guarantees:

* a job is passed at most once (its record says to whom), and only while it is queued;
  the pick and the record are one script (``pass_job.lua``), so two workers never pass
  two jobs to the same idle peer, and the peer leaves the idle set as it is picked;
* the passed message is published before the received one is acknowledged: a crash in
  between leaves two messages for one job, and the claim runs it once;
* a peer that has not taken the job within ``ZQ_ADAPTER_PASS_S`` (it got busy, or died)
  does not hold it up: the chores put it back on the shared queue (``pass_due.lua``),
  where the first free worker runs it, loading the adapter if it must. No job waits on
  one worker, and a job whose adapters nobody holds is never passed at all.

What workers hold lives in Redis: a set per adapter file of the workers holding it, and a
set of the idle ones among them, refreshed after each job and each heartbeat. A worker
that holds no adapter writes nothing, so fleets without adapters pay nothing for this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import redis
from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.message import Message

from common.job import ModelType
from common.jobstore import JobStore
from common.queueing import publish_jobs, queue_name
from common.scripts import load

log = logging.getLogger("zq.worker")


class HeldAdapters(Protocol):
    """What routing needs of the worker's adapters: the checksums of those loaded now."""

    def resident_sha256s(self) -> frozenset[str]:
        """The sha256 of each adapter file loaded now."""


def own_queue_name(model: ModelType, worker_id: str) -> str:
    """The queue only ``worker_id`` consumes, where jobs passed to it arrive."""
    return f"{queue_name(model)}.to.{worker_id}"


def own_queue(model: ModelType, worker_id: str) -> Queue:
    """``own_queue_name`` as a kombu queue on its own direct exchange."""
    name = own_queue_name(model, worker_id)
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Route:
    """Where a received job goes: its model type and, if it is to be passed, the worker
    to pass it to."""

    model: ModelType
    peer: str | None = None


class WarmRouting:
    """One worker's side of adapter affinity: what it holds, where its jobs go.

    The job thread routes messages and says when a job ended; the heartbeat thread says
    again what the job thread last wrote (``heartbeat``). A lock keeps the two from
    interleaving, so a beat never puts a rendering worker back in the idle set.
    """

    def __init__(self, jobs: JobStore, model: ModelType, worker_id: str,
                 adapters: HeldAdapters | None, app: Celery, pass_s: int,
                 on_pass: Callable[[str], None] = lambda way: None) -> None:
        self.jobs = jobs
        self.model = model
        self.worker_id = worker_id
        self.adapters = adapters
        self.app = app
        self.pass_s = pass_s
        self.on_pass = on_pass
        self.keys = jobs.keys
        self._pass = jobs.redis.register_script(load("pass_job"))
        self._pass_due = jobs.redis.register_script(load("pass_due"))
        self._lock = threading.Lock()
        # What this worker last wrote to Redis, so that dropping an adapter is undone there.
        self._published: frozenset[str] = frozenset()
        self._busy = False
        self._closed = False

    def held(self) -> frozenset[str]:
        """The checksums of the adapters this worker holds now (read on the job thread,
        which alone loads and evicts them)."""
        return self.adapters.resident_sha256s() if self.adapters is not None else frozenset()

    def route(self, job_id: str) -> Route:
        """Where the job of a received message runs.

        One round trip, as reading the job's model alone would be, for every job a worker
        runs (a worker holding adapters also leaves the idle set in it); a second one, the
        pick (``pass_job.lua``), only for a job naming adapters this worker lacks.
        """
        with self._lock:
            held = self.held()
            pipe = self.jobs.redis.pipeline(transaction=False)
            pipe.hmget(self.jobs.job_key(job_id), "model", "status", "adapters", "passed_to")
            if held:
                pipe.srem(self.keys.idle(self.model), self.worker_id)
            fields = pipe.execute()[0]
            self._busy = True  # until the job ends, or it is passed on
        try:
            route = self._decide(job_id, fields, held)
        except BaseException:
            self._idle_again()
            raise
        if route.model is not self.model:
            self._idle_again()  # forwarded to its own model's queue: nothing runs here
        return route

    def _decide(self, job_id: str, fields: list[str | None], held: frozenset[str]) -> Route:
        model_name, status, adapters, passed_to = fields
        if model_name is None:
            return Route(self.jobs.model_of(job_id))  # JobNotFound for an unknown id
        model = ModelType(model_name)
        if model is not self.model:
            return Route(model)
        if (self.pass_s and status == "queued" and adapters and passed_to is None
                and not set(adapters.split()) <= held):
            now = time.time()
            peer = self._pass(keys=[self.jobs.job_key(job_id)],
                              args=[model.value, self.worker_id, self.keys.prefix, now,
                                    now + self.pass_s, job_id])
            if peer:
                return Route(model, str(peer))
        return Route(model)

    def _idle_again(self) -> None:
        with self._lock:
            self._busy = False  # the next heartbeat puts it back in the idle set

    def pass_on(self, message: Message, task: str, job_id: str, peer: str) -> None:
        """Send the job to ``peer``'s own queue, at the priority it was received with.

        Raises what publishing raises; the caller then runs the job itself (the record
        says it was passed, so nobody passes it again, and the chores drop the entry).
        """
        properties = message.properties if isinstance(message.properties, dict) else {}
        priority = properties.get("priority")
        self.app.send_task(task, kwargs={"job_id": job_id}, queue=own_queue(self.model, peer),
                           priority=priority if isinstance(priority, int) else None)
        self.on_pass("sent")
        log.info("job %s needs adapters this worker lacks: passed to %s, which holds them",
                 job_id, peer)
        self.job_ended()  # it runs nothing: idle again, if it holds adapters

    def job_ended(self) -> None:
        """The worker renders nothing now: say what it holds, and that it is idle."""
        with self._lock:
            self._busy = False
            self._write(self.held())

    def heartbeat(self) -> None:
        """Say again what the job thread last said (lost if Redis restarted empty)."""
        with self._lock:
            self._write(self._published)

    def _write(self, held: frozenset[str]) -> None:
        """What this worker holds, and whether it is idle, in one round trip; none for a
        worker that holds no adapter and never did."""
        if self._closed or (not held and not self._published):
            return
        pipe = self.jobs.redis.pipeline(transaction=False)
        for sha256 in self._published - held:
            pipe.srem(self.keys.warm(self.model, sha256), self.worker_id)
        for sha256 in held:
            pipe.sadd(self.keys.warm(self.model, sha256), self.worker_id)
        if held and not self._busy:
            pipe.sadd(self.keys.idle(self.model), self.worker_id)
        else:
            pipe.srem(self.keys.idle(self.model), self.worker_id)
        pipe.execute()
        self._published = held

    def close(self) -> None:
        """At shutdown: hold nothing, idle nowhere, from now on (best effort; a dead
        worker's entries are dropped by the next pick that meets them)."""
        with self._lock:
            self._closed = True
            pipe = self.jobs.redis.pipeline(transaction=False)
            for sha256 in self._published:
                pipe.srem(self.keys.warm(self.model, sha256), self.worker_id)
            pipe.srem(self.keys.idle(self.model), self.worker_id)
            try:
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not withdraw this worker's adapters from routing: %s", exc)


    def return_overdue(self) -> list[str]:
        """A chore: jobs passed to a worker that has not taken them in time go back to the
        shared queue; returns their ids."""
        keys = self.keys
        back = cast(list[str], self._pass_due(keys=[keys.passed(self.model),
                                                     keys.unpublished(self.model)],
                                              args=[time.time(), keys.prefix]))
        if back:
            publish_jobs(self.app, self.jobs, back)
            for job_id in back:
                self.on_pass("returned")
                log.warning("job %s was passed to a worker that did not take it in time: "
                            "back on the shared queue", job_id)
        return back

    def forget(self, worker_ids: list[str]) -> None:
        """A chore: drop the own queues of workers that are gone (whatever was passed to
        them is put back by ``return_overdue``)."""
        if not worker_ids:
            return
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            for worker_id in worker_ids:
                name = own_queue_name(self.model, worker_id)
                # kombu's queue_delete forgets only bindings this process declared; its Redis
                # channel's own _delete drops the binding and every priority list of the queue.
                channel._delete(name, name, name, "")
