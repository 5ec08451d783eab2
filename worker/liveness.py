"""The worker's background thread: heartbeat, job lease, and recovery of lost jobs.

Celery's Redis transport gives an unacknowledged message back only after the
visibility timeout, which must exceed the longest job, so it cannot be what
recovers a job from a killed worker. Instead each running job holds a short lease
that this thread renews; a live worker of the same model type re-publishes a
job whose lease ran out (its worker died), and jobs recorded but never published.
A job whose lease is alive is never handed to a second worker.

Those chores scan the whole fleet's state (running jobs, retries, the worker list, the
queue's priority lists), so one worker per model type does them (``ChoresLock``), not
each: every other worker's beat is a few commands, whatever the fleet's size or backlog.

Renewing a lease proves the process lives, not that its job advances: every beat also
asks the hung-step watchdog (``worker.watchdog``), and a worker whose job stopped
advancing gives up instead of renewing its lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, cast

from common.aging import promote_overdue
from common.job import MAX_PRIORITY, JobSpec, ModelType
from common.jobstore import JobStore
from common.queueing import Sender, publish_jobs
from common.scripts import load
from common.status import JobRecord
from worker.execute import CurrentJob
from worker.health import Health, write_health
from worker.hooks import JobOutcome
from worker.warm_routing import WarmRouting
from worker.watchdog import Stall, give_up

log = logging.getLogger("zq.worker")
# Dead workers' ids are dropped from the worker list this often.
PRUNE_INTERVAL_S = 60.0
# The chores lock lives this many beats: longer than one (its holder keeps it, beat after
# beat), and shorter than a lease (3 beats) minus a beat, so a dead holder's successor is
# elected, and beating, before the dead holder's own job's lease runs out.
CHORES_LOCK_BEATS = 1.5


class WorkerRegistry:
    """A worker's own record in Redis: model, readiness, load count, heartbeat."""

    def __init__(self, jobs: JobStore, worker_id: str, model: ModelType, ttl_s: int) -> None:
        self.redis = jobs.redis
        self.key = jobs.worker_key(worker_id)
        self.index = jobs.keys.workers(model)
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.redis.hset(self.key, mapping={"model": model.value, "pid": os.getpid(),
                                           "host": socket.gethostname(), "ready": 0,
                                           "model_loads": 0, "jobs_done": 0,
                                           "started_at": time.time()})
        self.beat()

    def update(self, **fields: str | int | float) -> None:
        """Set fields of the worker's record."""
        self.redis.hset(self.key, mapping=dict(fields))  # type: ignore[arg-type]

    def count(self, field: str) -> None:
        """Add one to a counter field (``model_loads``)."""
        self.redis.hincrby(self.key, field, 1)

    # -- job hooks: the registry counts every job that ended on this worker --------
    def started(self, record: JobRecord) -> None:
        """Nothing to record when a job starts."""

    def progressed(self, spec: JobSpec, done: int, total: int) -> None:
        """Nothing to record per step."""

    def finished(self, outcome: JobOutcome) -> None:
        """Nothing to record: the script that ends a job counts it in ``jobs_done``."""

    def beat(self) -> None:
        """Refresh the heartbeat; the record expires if the worker stops beating."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key, "heartbeat", time.time())
        pipe.expire(self.key, self.ttl_s)
        pipe.sadd(self.index, self.worker_id)
        pipe.execute()


class ChoresLock:
    """Elects the one worker of a model type that does the fleet-wide chores.

    ``{prefix}:chores:{model}`` holds the holder's worker id for ``ttl_s``; the holder
    renews it each beat. When it stops beating, the lock expires and the next worker
    of the model type to beat takes it: chores pause for at most ``ttl_s`` plus a beat.
    """

    def __init__(self, jobs: JobStore, model: ModelType, worker_id: str, ttl_s: float) -> None:
        self.key = jobs.keys.chores(model)
        self.worker_id = worker_id
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self._elect = jobs.redis.register_script(load("chores_elect"))
        self._resign = jobs.redis.register_script(load("chores_resign"))

    def acquire(self) -> bool:
        """Take or renew the lock; whether this worker holds it now (one command)."""
        return bool(self._elect(keys=[self.key], args=[self.worker_id, self.ttl_ms]))

    def release(self) -> None:
        """Give the lock up, if this worker holds it, so another takes it at its next beat."""
        self._resign(keys=[self.key], args=[self.worker_id])


def orphaned_jobs(jobs: JobStore, model: ModelType) -> list[str]:
    """Running jobs of ``model`` whose lease ran out (their worker died): two round trips.

    ``JobStore.orphaned`` asks for each lease in turn; this asks for all of them at once.
    """
    running = sorted(cast(set[str], jobs.redis.smembers(jobs.keys.running(model))))
    pipe = jobs.redis.pipeline(transaction=False)
    for job_id in running:
        pipe.exists(jobs.keys.lease(job_id))
    leased: list[Any] = pipe.execute() if running else []
    return [job_id for job_id, alive in zip(running, leased, strict=True) if not alive]


class Liveness(threading.Thread):
    """Renews the current job's lease and recovers lost jobs, every ``lease_ttl_s / 3``.

    Recovery and the other fleet-wide chores run on one worker of the model type at a
    time, the holder of the ``ChoresLock``. With ``stall_timeout_s``, a rendering job
    without progress for that long ends the worker instead (``worker.watchdog``).
    """

    def __init__(self, jobs: JobStore, app: Sender, model: ModelType, worker_id: str,
                 current: CurrentJob, registry: WorkerRegistry, lease_ttl_s: int,
                 health_file: Path | None = None, max_wait_s: int = 0,
                 stall_timeout_s: int = 0) -> None:
        super().__init__(name="zq-liveness", daemon=True)
        self.jobs = jobs
        self.app = app
        self.model = model
        self.worker_id = worker_id
        self.current = current
        self.registry = registry
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = max(lease_ttl_s / 3.0, 0.5)
        self.health_file = health_file
        self.max_wait_s = max_wait_s
        self.stall_timeout_s = stall_timeout_s
        self.stalled: str | None = None
        self.ready = False
        self.stopping = threading.Event()
        self.next_prune = 0.0
        self.chores = ChoresLock(jobs, model, worker_id, self.interval_s * CHORES_LOCK_BEATS)
        # Set once the model is loaded: adapter routing's record of what this worker holds.
        self.routing: WarmRouting | None = None
        # Read now: a worker giving up on a hung job should not be reading files.
        self._record_stall = load("record_stall")

    def run(self) -> None:
        """Beat until stopped; an error in one beat is logged, never fatal."""
        while not self.stopping.is_set():
            stall = self.current.progress.stalled(self.stall_timeout_s)
            if stall is not None:
                self.give_up(stall)
            self.write_health()
            try:
                self.beat()
            except Exception:
                log.exception("liveness beat failed; trying again")
            self.stopping.wait(self.interval_s)

    def write_health(self) -> None:
        """The local health file ``zq health`` reads (written even when Redis is away)."""
        if self.health_file is None:
            return
        try:
            write_health(self.health_file, Health(
                pid=os.getpid(), model=self.model.value, ready=self.ready,
                heartbeat=time.time(), current_job=self.current.get(),
                interval_s=self.interval_s, stalled=self.stalled))
        except OSError:
            log.exception("cannot write the health file %s", self.health_file)

    def give_up(self, stall: Stall) -> None:
        """The job is stuck in the model: say so and end the process (no lease renewed).

        The health file is written first (local, cannot hang on the network); the worker
        and job records are best effort. The job is not failed: it is left to lease
        recovery, as if this worker had been killed.
        """
        self.stalled, self.ready = stall.reason(), False
        key = self.jobs.job_key(stall.job_id)
        give_up(stall, [
            self.write_health,
            lambda: self.registry.update(ready=0, stalled=stall.reason()),
            lambda: self.jobs.redis.eval(self._record_stall, 1, key, "stalled_on", self.worker_id,
                                         "stall_reason", stall.reason()),
        ])

    def beat(self) -> bool:
        """One round: leases (the rendering job and those being stored), heartbeat, chores.

        The fleet's chores (``recover``) run only if this worker holds the chores lock;
        returns whether it did them. A holder whose chores fail gives the lock up, so
        that another worker, for which they may work, takes over at its next beat.
        """
        for job_id in self.current.held():
            self.jobs.renew_lease(job_id, self.worker_id, self.lease_ttl_s)
        self.registry.beat()
        self.registry.update(current_job=self.current.get() or "")
        if self.routing is not None:
            self.routing.heartbeat()
        if not self.chores.acquire():
            return False
        try:
            self.recover()
        except Exception:
            self.chores.release()
            raise
        return True

    def recover(self) -> list[str]:
        """The fleet's chores: re-publish this model type's lost jobs and jobs due a retry.

        Also publishes stale unpublished jobs, prunes dead workers (once a minute) and
        promotes overdue jobs; ``beat`` calls this on the chores lock's holder only.
        Returns the ids published. A job that lost its worker, or waited out a storage
        outage, had already waited its turn: it goes to the front of the queue.
        """
        recovered = []
        for job_id in orphaned_jobs(self.jobs, self.model):
            if job_id in self.current.held():
                continue
            if self.jobs.requeue(self.jobs.get(job_id).spec):
                log.warning("job %s lost its worker (lease expired); requeued", job_id)
                recovered.append(job_id)
        recovered += self.jobs.due_retries(self.model)
        publish_jobs(self.app, self.jobs, recovered, priority=MAX_PRIORITY)
        if self.routing is not None:
            recovered += self.routing.return_overdue()
        stale = self.jobs.needs_publish(self.model, older_than_s=self.lease_ttl_s)
        publish_jobs(self.app, self.jobs, stale)
        if time.monotonic() >= self.next_prune:
            self.next_prune = time.monotonic() + PRUNE_INTERVAL_S
            gone = self.jobs.prune_workers(self.model)
            for name in gone:
                log.info("worker %s stopped beating long ago; removed from the list", name)
            if self.routing is not None:
                self.routing.forget(gone)
        if self.max_wait_s:
            for job_id in promote_overdue(self.jobs, self.app, self.model, self.max_wait_s):
                log.info("job %s waited over %ss: promoted to the top priority", job_id,
                         self.max_wait_s)
        return recovered + [j for j in stale if j not in recovered]

    def stop(self) -> None:
        """Stop beating (at worker shutdown) and say so in the health file."""
        self.stopping.set()
        self.ready = False
        self.write_health()
