"""Job records in Redis: the one source of truth for a job's status and lineage.

Every transition that two processes could race on is a Lua script, so it is atomic:
a child submitted while its parent finishes is either released by the parent or sees
the parent's outcome itself, never neither. Celery messages only say "job X is ready";
a worker claims the job here before running it, which is what makes a duplicate
message (a redelivery, a recovery re-publish) harmless.

The scripts are the files of ``common/lua/`` (loaded by :mod:`common.scripts`); every key
is built by :mod:`common.keys`, whose docstring maps them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import redis

from common.batches import BatchStore
from common.errors import InvalidJob, JobConflict, JobNotFound
from common.job import JobSpec, ModelType
from common.keys import Keys
from common.scripts import load
from common.status import JobRecord, JobStatus
from common.webhooks import WebhookOutbox, validate_webhook_url


@dataclass(frozen=True)
class Claim:
    """What a claim did: ``outcome`` says ``claimed`` or why not; ``record`` once claimed."""

    outcome: str
    record: JobRecord | None = None


@dataclass(frozen=True)
class Ending:
    """What ending a job changed: children released to the queue, descendants failed."""

    released: list[str]
    failed: list[str]


@dataclass(frozen=True)
class SubmitOutcome:
    """What submitting a job did: ``created`` is False when the id was already known."""

    status: JobStatus
    created: bool
    # The job's message is owed: queued and not yet published (or not known to be).
    unpublished: bool = False


class JobStore:
    """Reads and changes job records; shared by producers and workers."""

    def __init__(self, client: redis.Redis, prefix: str = "zq", record_ttl_s: int = 0) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        # Terminal records (jobs, finished batches, settled webhooks) expire after this.
        self.record_ttl_s = record_ttl_s
        self._submit = client.register_script(load("submit"))
        self._claim = client.register_script(load("claim"))
        self._finish = client.register_script(load("finish"))
        self._notify = client.register_script(load("notify"))
        self._requeue = client.register_script(load("requeue"))
        self._retry_later = client.register_script(load("retry_later"))
        self._due = client.register_script(load("due"))
        self._cancel = client.register_script(load("cancel"))
        self.batches = BatchStore(client, prefix, record_ttl_s)
        self.outbox = WebhookOutbox(client, prefix, record_ttl_s)

    @classmethod
    def from_url(cls, url: str, prefix: str = "zq", record_ttl_s: int = 0) -> JobStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``)."""
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix, record_ttl_s)

    # -- keys ---------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        """The hash holding one job's record."""
        return self.keys.job(job_id)

    def worker_key(self, worker_id: str) -> str:
        """The hash holding one worker's registry record."""
        return self.keys.worker(worker_id)

    def _ending_args(self, job_id: str) -> list[str | float | int]:
        return [self.prefix, "", time.time(), self.record_ttl_s, job_id]

    # -- producer side ------------------------------------------------------
    def submit(self, spec: JobSpec) -> SubmitOutcome:
        """Record a new job, or find the identical one submitted before.

        Raises ``JobConflict`` for a known id with another spec and ``JobNotFound`` for
        an unknown parent. A child of an unfinished parent is recorded as waiting.
        """
        root_id, turn = spec.job_id, 0
        if spec.parent_id is not None:
            parent = self.get(spec.parent_id)
            root_id, turn = parent.root_id, parent.turn + 1
        keys = [
            self.job_key(spec.job_id),
            self.job_key(spec.parent_id) if spec.parent_id else "",
            self.keys.children(spec.parent_id) if spec.parent_id else "",
            self.keys.unpublished(spec.model),
            self.keys.conversation(spec.conversation_id),
        ]
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        # The index outlives the records it names (their TTL starts when they end);
        # readers skip the ids whose records are gone.
        index_ttl_s = 2 * self.record_ttl_s
        adapters = " ".join(a.sha256 for a in spec.adapters if a.sha256)
        args: list[str | float | int] = [spec_json, time.time(), spec.job_id, root_id, turn,
                                         index_ttl_s, spec.model.value, adapters]
        outcome, status, *owed = cast(list[str], self._submit(keys=keys, args=args))
        if outcome == "conflict":
            raise JobConflict(f"job {spec.job_id} exists with a different spec")
        if outcome == "no_parent":
            raise JobNotFound(f"parent job {spec.parent_id} is not known")
        return SubmitOutcome(JobStatus(status), created=outcome == "created",
                             unpublished=owed == ["1"])

    def conversation_jobs(self, conversation_id: str, limit: int) -> list[str]:
        """The ids of up to ``limit`` jobs submitted in a conversation, oldest first."""
        ids = cast(list[str], self.redis.zrange(self.keys.conversation(conversation_id),
                                                0, limit - 1))
        return list(ids)

    def model_of(self, job_id: str) -> ModelType:
        """The job's model type, reading one field; ``JobNotFound`` if the id is unknown."""
        model = cast(str | None, self.redis.hget(self.job_key(job_id), "model"))
        if model is None:  # unknown, or a record from before the field existed
            return self.get(job_id).spec.model
        return ModelType(model)

    def get(self, job_id: str) -> JobRecord:
        """The job's record; ``JobNotFound`` if the id is unknown."""
        fields = cast(dict[str, str], self.redis.hgetall(self.job_key(job_id)))
        if not fields or "spec" not in fields:
            raise JobNotFound(f"job {job_id} is not known")
        return JobRecord.from_hash(fields)

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of ``job_ids`` in one round trip; None where an id is unknown."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.job_key(job_id))
        found = cast(list[dict[str, str]], pipe.execute())
        return [JobRecord.from_hash(fields) if fields and "spec" in fields else None
                for fields in found]

    def needs_publish(self, model: ModelType, older_than_s: float = 0.0) -> list[str]:
        """Queued jobs whose message may not have been sent (oldest first)."""
        cutoff = time.time() - older_than_s
        ids = self.redis.zrangebyscore(self.keys.unpublished(model), "-inf", cutoff)
        return cast(list[str], ids)

    def is_unpublished(self, spec: JobSpec) -> bool:
        """Whether the job is queued but its message may not have been sent."""
        return self.redis.zscore(self.keys.unpublished(spec.model), spec.job_id) is not None

    def mark_published(self, spec: JobSpec) -> None:
        """Note that the job's queue message was sent."""
        self.redis.zrem(self.keys.unpublished(spec.model), spec.job_id)

    def cancel(self, job_id: str) -> tuple[JobStatus, list[str]]:
        """Cancel a job. Returns the status it had and the descendants failed with it.

        Queued and waiting jobs end at once (their message is dropped when a worker
        sees it) and their waiting descendants fail, in one step; a running job is
        flagged and stops at its next step.
        """
        job = self.get(job_id)
        keys = [self.job_key(job_id), self.keys.unpublished(job.spec.model),
                self.keys.retry(job.spec.model)]
        found, *failed = cast(list[str], self._cancel(keys=keys, args=self._ending_args(job_id)))
        if found == "unknown":
            raise JobNotFound(f"job {job_id} is not known")
        return JobStatus(found), sorted(failed)

    def set_webhook(self, job_id: str, url: str) -> None:
        """Call ``url`` when the job ends (once; delivered by ``zq webhooks``)."""
        self.redis.hset(self.job_key(job_id), "webhook", validate_webhook_url(url))

    def notify_ended(self, job_id: str) -> None:
        """Settle batches and webhooks of a job that is already terminal.

        Runs on workers too: one script, never an HTTP request.
        """
        self._notify(keys=[self.job_key(job_id)], args=self._ending_args(job_id))

    def batch_finished(self, batch_id: str) -> None:
        """Queue the batch's webhook, if it named one."""
        meta = self.batches.meta(batch_id)
        if meta.get("webhook"):
            kind = str(meta.get("webhook_kind") or "batch")
            self.outbox.enqueue(kind, batch_id, str(meta["webhook"]))

    # -- worker side ----------------------------------------------------------
    def claim(self, spec: JobSpec, worker_id: str, lease_ttl_s: int, max_deliveries: int
              ) -> Claim:
        """Try to take the job: ``claimed`` with the record as claimed, or why not.

        The other outcomes are ``done``, ``waiting``, ``busy``, ``later`` (a retry that is
        not due yet), ``poison`` (with the record) and ``unknown``.
        """
        return self.claim_by_id(spec.job_id, worker_id, lease_ttl_s, max_deliveries,
                                spec.model)

    def claim_by_id(self, job_id: str, worker_id: str, lease_ttl_s: int, max_deliveries: int,
                    model: ModelType | None = None) -> Claim:
        """``claim`` in one round trip from the id a message carries, reading nothing first.

        With ``model``, a job of another model type is not taken: ``wrong_model``, with
        the record (so the caller can send it on to its own queue).
        """
        keys = [self.job_key(job_id), self.keys.lease(job_id)]
        args: list[str | float | int] = [worker_id, lease_ttl_s, max_deliveries, time.time(),
                                         job_id, self.prefix, model.value if model else ""]
        outcome, *flat = cast(list[str], self._claim(keys=keys, args=args))
        if not flat:
            return Claim(outcome)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        try:
            return Claim(outcome, JobRecord.from_hash(fields))
        except (ValueError, KeyError, TypeError) as exc:  # InvalidJob is a ValueError
            raise InvalidJob("spec", f"a readable job record ({exc})") from None

    def renew_lease(self, job_id: str, worker_id: str, lease_ttl_s: int) -> None:
        """Keep the lease alive while the job runs (a heartbeat thread calls this)."""
        self.redis.set(self.keys.lease(job_id), worker_id, ex=lease_ttl_s)

    def report_progress(self, job_id: str, step: int, total: int) -> bool:
        """Record the step reached; returns whether a cancel was requested."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.job_key(job_id), mapping={"step": step, "total_steps": total})
        # Same round trip; with nobody following the job it costs Redis a lookup.
        pipe.publish(self.keys.progress(job_id), f"{step}/{total}")
        pipe.hget(self.job_key(job_id), "cancel")
        cancel_flag: object = pipe.execute()[2]
        return cancel_flag == "1"

    def finish(self, spec: JobSpec, status: JobStatus, descendants_error: str = "",
               counted_for: str = "", **fields: str) -> Ending | None:
        """End the job with a terminal status; None if it had already ended.

        One atomic step: the record, the lease, the children waiting on the job
        (queued on success, failed with ``descendants_error`` otherwise, down the whole
        tree), the batches holding them, the webhooks they owe and the records' expiry.
        Released children are in the unpublished set: publish them next (if this
        process dies first, the recovery loop does).
        """
        return self.finish_by_id(spec.job_id, spec.model, status, descendants_error,
                                 counted_for, **fields)

    def finish_by_id(self, job_id: str, model: ModelType, status: JobStatus,
                     descendants_error: str = "", counted_for: str = "",
                     **fields: str) -> Ending | None:
        """``finish`` without the spec (a record whose spec cannot be read).

        ``counted_for``: the worker whose registry record counts the job in ``jobs_done``.
        """
        keys = [self.job_key(job_id), self.keys.lease(job_id), self.keys.running(model),
                self.worker_key(counted_for) if counted_for else ""]
        args = self._ending_args(job_id)
        args[1] = status.value
        args.append(descendants_error or f"parent {status.value}: job {job_id}")
        for name, value in fields.items():
            args += [name, value]
        ending = self._finish(keys=keys, args=args)
        if ending is None:
            return None
        released, failed = cast(list[list[str]], ending)
        return Ending(sorted(released), sorted(failed))

    def retry_later(self, spec: JobSpec, worker_id: str, delay_s: float, error: str) -> bool:
        """Put a job this worker holds back to queued, not to run for ``delay_s``.

        For infrastructure trouble (storage, Redis): the delivery is not counted
        towards poison. False if the job is no longer this worker's.
        """
        now = time.time()
        keys = [self.job_key(spec.job_id), self.keys.lease(spec.job_id),
                self.keys.running(spec.model), self.keys.retry(spec.model)]
        args: list[str | float] = [worker_id, now, now + delay_s, error[:500], spec.job_id]
        return bool(self._retry_later(keys=keys, args=args))

    def due_retries(self, model: ModelType) -> list[str]:
        """Jobs of ``model`` whose retry time has come; they are moved to be published."""
        keys = [self.keys.retry(model), self.keys.unpublished(model)]
        return sorted(cast(list[str], self._due(keys=keys, args=[time.time()])))

    def orphaned(self, model: ModelType) -> Iterator[str]:
        """Running jobs of ``model`` whose worker stopped renewing the lease (it died)."""
        for job_id in cast(set[str], self.redis.smembers(self.keys.running(model))):
            if not self.redis.exists(self.keys.lease(job_id)):
                yield job_id

    def requeue(self, spec: JobSpec) -> bool:
        """Put an orphaned running job back to queued; publish it next."""
        self.redis.srem(self.keys.running(spec.model), spec.job_id)
        keys = [self.job_key(spec.job_id), self.keys.unpublished(spec.model)]
        return bool(self._requeue(keys=keys, args=[time.time(), spec.job_id]))

    def prune_workers(self, model: ModelType) -> list[str]:
        """Drop workers of ``model`` whose record expired (they stopped beating)."""
        index = self.keys.workers(model)
        names = sorted(cast(set[str], self.redis.smembers(index)))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.worker_key(name))
        dead = [name for name, alive in zip(names, pipe.execute(), strict=True) if not alive]
        if dead:
            self.redis.srem(index, *dead)
        return dead
