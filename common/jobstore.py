"""Job records in Redis: the one source of truth for a job's status and lineage.

Every transition that two processes could race on is a Lua script, so it is atomic:
a child submitted while its parent finishes is either released by the parent or sees
the parent's outcome itself, never neither. Celery messages only say "job X is ready";
a worker claims the job here before running it, which is what makes a duplicate
message (a redelivery, a recovery re-publish) harmless.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import redis

from common.batches import BatchStore
from common.errors import JobConflict, JobNotFound, ParentFailed
from common.job import JobSpec, ModelType
from common.status import TERMINAL, JobRecord, JobStatus
from common.webhooks import WebhookOutbox, validate_webhook_url

_TERMINAL_LUA = "{" + ", ".join(f"['{s.value}']=true" for s in TERMINAL) + "}"

# KEYS: job, parent job, parent's children set, unpublished set
# ARGV: spec json, now, job id, root id, turn
_SUBMIT = f"""
local terminal = {_TERMINAL_LUA}
local existing = redis.call('HGET', KEYS[1], 'spec')
if existing then
  if existing ~= ARGV[1] then return {{'conflict', ''}} end
  return {{'exists', redis.call('HGET', KEYS[1], 'status')}}
end
local status = 'queued'
local reason = ''
if KEYS[2] ~= '' then
  local parent = redis.call('HGET', KEYS[2], 'status')
  if not parent then return {{'no_parent', ''}} end
  if parent == 'failed' or parent == 'cancelled' then
    status = 'failed'
    reason = 'parent ' .. parent
  elseif not terminal[parent] then
    status = 'waiting'
    redis.call('SADD', KEYS[3], ARGV[3])
  end
end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'status', status, 'created_at', ARGV[2],
           'root_id', ARGV[4], 'turn', ARGV[5], 'deliveries', 0)
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'queued_at', ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
elseif status == 'failed' then
  redis.call('HSET', KEYS[1], 'error', reason, 'error_code', 'parent_failed',
             'finished_at', ARGV[2])
end
return {{'created', status}}
"""

# KEYS: job, lease, running set. ARGV: worker id, lease ttl s, max deliveries, now, job id
_CLAIM = f"""
local terminal = {_TERMINAL_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {{'unknown'}} end
if terminal[status] then return {{'done'}} end
if status == 'waiting' then return {{'waiting'}} end
if status == 'running' and redis.call('EXISTS', KEYS[2]) == 1 then return {{'busy'}} end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[3]) then return {{'poison'}} end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[4],
           'step', 0)
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[5])
return {{'claimed', unpack(redis.call('HGETALL', KEYS[1]))}}
"""

# KEYS: job, lease, running set, children set, unpublished set
# ARGV: status, now, then field/value pairs to set
# Returns the waiting children; on success they are moved to queued first.
_FINISH = f"""
local terminal = {_TERMINAL_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status or terminal[status] then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], string.match(KEYS[1], '[^:]+$'))
local children = redis.call('SMEMBERS', KEYS[4])
redis.call('DEL', KEYS[4])
return children
"""

# KEYS: job, unpublished set. ARGV: now, job id
_RELEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'waiting' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: job, unpublished set. ARGV: now, job id
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[1], 'worker', '')
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: job, children set, unpublished set. ARGV: now, job id
# Returns {status found, children...}. Queued and waiting jobs end here, with their
# waiting children returned to be failed; running jobs get a flag their worker
# checks at every step.
_CANCEL = f"""
local terminal = {_TERMINAL_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {{'unknown'}} end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return {{status}}
end
if terminal[status] then return {{status}} end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1],
           'error', 'cancelled by request', 'error_code', 'cancelled')
redis.call('ZREM', KEYS[3], ARGV[2])
local result = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
table.insert(result, 1, status)
return result
"""


@dataclass(frozen=True)
class Claim:
    """What a claim did: ``outcome`` says ``claimed`` or why not; ``record`` once claimed."""

    outcome: str
    record: JobRecord | None = None


@dataclass(frozen=True)
class SubmitOutcome:
    """What submitting a job did: ``created`` is False when the id was already known."""

    status: JobStatus
    created: bool


class JobStore:
    """Reads and changes job records; shared by producers and workers."""

    def __init__(self, client: redis.Redis, prefix: str = "zq") -> None:
        self.redis = client
        self.prefix = prefix
        self._submit = client.register_script(_SUBMIT)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._requeue = client.register_script(_REQUEUE)
        self._cancel = client.register_script(_CANCEL)
        self.batches = BatchStore(client, prefix)
        self.outbox = WebhookOutbox(client, prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str = "zq") -> JobStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``)."""
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix)

    # -- keys ---------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        """The hash holding one job's record."""
        return f"{self.prefix}:job:{job_id}"

    def _lease_key(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def _children_key(self, job_id: str) -> str:
        return f"{self.prefix}:children:{job_id}"

    def _running_key(self, model: ModelType) -> str:
        return f"{self.prefix}:running:{model.value}"

    def _unpublished_key(self, model: ModelType) -> str:
        return f"{self.prefix}:unpublished:{model.value}"

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
            self._children_key(spec.parent_id) if spec.parent_id else "",
            self._unpublished_key(spec.model),
        ]
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        args: list[str | float | int] = [spec_json, time.time(), spec.job_id, root_id, turn]
        outcome, status = cast(list[str], self._submit(keys=keys, args=args))
        if outcome == "conflict":
            raise JobConflict(f"job {spec.job_id} exists with a different spec")
        if outcome == "no_parent":
            raise JobNotFound(f"parent job {spec.parent_id} is not known")
        return SubmitOutcome(JobStatus(status), created=outcome == "created")

    def get(self, job_id: str) -> JobRecord:
        """The job's record; ``JobNotFound`` if the id is unknown."""
        fields = cast(dict[str, str], self.redis.hgetall(self.job_key(job_id)))
        if not fields or "spec" not in fields:
            raise JobNotFound(f"job {job_id} is not known")
        return JobRecord.from_hash(fields)

    def needs_publish(self, model: ModelType, older_than_s: float = 0.0) -> list[str]:
        """Queued jobs whose message may not have been sent (oldest first)."""
        cutoff = time.time() - older_than_s
        ids = self.redis.zrangebyscore(self._unpublished_key(model), "-inf", cutoff)
        return cast(list[str], ids)

    def is_unpublished(self, spec: JobSpec) -> bool:
        """Whether the job is queued but its message may not have been sent."""
        return self.redis.zscore(self._unpublished_key(spec.model), spec.job_id) is not None

    def mark_published(self, spec: JobSpec) -> None:
        """Note that the job's queue message was sent."""
        self.redis.zrem(self._unpublished_key(spec.model), spec.job_id)

    def cancel(self, job_id: str) -> tuple[JobStatus, list[str]]:
        """Cancel a job. Returns the status it had and, if it ended now, its waiting children.

        Queued and waiting jobs end at once (their message is dropped when a worker
        sees it); a running job is flagged and stops at its next step.
        """
        job = self.get(job_id)
        keys = [self.job_key(job_id), self._children_key(job_id),
                self._unpublished_key(job.spec.model)]
        found, *children = cast(list[str], self._cancel(keys=keys, args=[time.time(), job_id]))
        if found == "unknown":
            raise JobNotFound(f"job {job_id} is not known")
        status = JobStatus(found)
        if not status.terminal and status is not JobStatus.RUNNING:
            self._ended(job_id)
        return status, sorted(children)

    def set_webhook(self, job_id: str, url: str) -> None:
        """Call ``url`` when the job ends (once; delivered by ``zq webhooks``)."""
        self.redis.hset(self.job_key(job_id), "webhook", validate_webhook_url(url))

    def notify_ended(self, job_id: str) -> None:
        """Settle batches and webhooks of a job that is already terminal."""
        self._ended(job_id)

    def _ended(self, job_id: str) -> None:
        """A job reached a terminal status: settle its batches, queue due webhooks.

        Runs on workers too: a few Redis calls, never an HTTP request.
        """
        for batch_id in self.batches.job_ended(job_id):
            self.batch_finished(batch_id)
        url = self.redis.hget(self.job_key(job_id), "webhook")
        if url:
            self.outbox.enqueue("job", job_id, cast(str, url))

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

        The other outcomes are ``done``, ``waiting``, ``busy``, ``poison`` and ``unknown``.
        """
        keys = [self.job_key(spec.job_id), self._lease_key(spec.job_id),
                self._running_key(spec.model)]
        args: list[str | float | int] = [worker_id, lease_ttl_s, max_deliveries, time.time(),
                                         spec.job_id]
        outcome, *flat = cast(list[str], self._claim(keys=keys, args=args))
        if not flat:
            return Claim(outcome)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return Claim(outcome, JobRecord.from_hash(fields))

    def renew_lease(self, job_id: str, worker_id: str, lease_ttl_s: int) -> None:
        """Keep the lease alive while the job runs (a heartbeat thread calls this)."""
        self.redis.set(self._lease_key(job_id), worker_id, ex=lease_ttl_s)

    def report_progress(self, job_id: str, step: int, total: int) -> bool:
        """Record the step reached; returns whether a cancel was requested."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.job_key(job_id), mapping={"step": step, "total_steps": total})
        pipe.hget(self.job_key(job_id), "cancel")
        cancel_flag: object = pipe.execute()[1]
        return cancel_flag == "1"

    def finish(self, spec: JobSpec, status: JobStatus, **fields: str) -> list[str] | None:
        """End the job with a terminal status; None if it had already ended.

        Returns the children that were waiting on it: released to the queue on
        success (publish them), to be failed otherwise.
        """
        keys = [self.job_key(spec.job_id), self._lease_key(spec.job_id),
                self._running_key(spec.model), self._children_key(spec.job_id),
                self._unpublished_key(spec.model)]
        args: list[str | float] = [status.value, time.time()]
        for name, value in fields.items():
            args += [name, value]
        children = self._finish(keys=keys, args=args)
        if children is None:
            return None
        self._ended(spec.job_id)
        return sorted(cast(list[str], children))

    def release(self, spec: JobSpec) -> bool:
        """Move a waiting child to queued (its parent succeeded); publish it next."""
        keys = [self.job_key(spec.job_id), self._unpublished_key(spec.model)]
        return bool(self._release(keys=keys, args=[time.time(), spec.job_id]))

    def orphaned(self, model: ModelType) -> Iterator[str]:
        """Running jobs of ``model`` whose worker stopped renewing the lease (it died)."""
        for job_id in cast(set[str], self.redis.smembers(self._running_key(model))):
            if not self.redis.exists(self._lease_key(job_id)):
                yield job_id

    def requeue(self, spec: JobSpec) -> bool:
        """Put an orphaned running job back to queued; publish it next."""
        self.redis.srem(self._running_key(spec.model), spec.job_id)
        keys = [self.job_key(spec.job_id), self._unpublished_key(spec.model)]
        return bool(self._requeue(keys=keys, args=[time.time(), spec.job_id]))

    def fail_descendants(self, children: list[str], reason: ParentFailed) -> list[str]:
        """Fail every waiting descendant with the parent's reason; returns their ids."""
        failed: list[str] = []
        pending = list(children)
        while pending:
            child = self.get(pending.pop())
            grandchildren = self.finish(child.spec, JobStatus.FAILED, error=reason.reason,
                                        error_code=reason.code)
            if grandchildren is not None:
                failed.append(child.spec.job_id)
                pending.extend(grandchildren)
        return failed
