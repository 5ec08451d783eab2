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
from common.errors import InvalidJob, JobConflict, JobNotFound
from common.job import JobSpec, ModelType
from common.status import TERMINAL, JobRecord, JobStatus
from common.webhooks import WebhookOutbox, validate_webhook_url

# Sorted: a set's order follows PYTHONHASHSEED, and a script whose text differed per
# process would be loaded (and kept) by Redis once per process.
_TERMINAL_LUA = "{" + ", ".join(f"['{name}']=true"
                                for name in sorted(s.value for s in TERMINAL)) + "}"

# KEYS: job, parent job, parent's children set, unpublished set, conversation index
# ARGV: spec json, now, job id, root id, turn, conversation index ttl s (0: none), model
# Returns {outcome, status, '1' if the job's message is owed (in the unpublished set)}.
_SUBMIT = f"""
local terminal = {_TERMINAL_LUA}
local existing = redis.call('HGET', KEYS[1], 'spec')
if existing then
  if existing ~= ARGV[1] then return {{'conflict', ''}} end
  local owed = redis.call('ZSCORE', KEYS[4], ARGV[3]) and '1' or '0'
  return {{'exists', redis.call('HGET', KEYS[1], 'status'), owed}}
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
local fields = {{'spec', ARGV[1], 'status', status, 'created_at', ARGV[2], 'root_id', ARGV[4],
                'turn', ARGV[5], 'deliveries', 0, 'model', ARGV[7]}}
if status == 'queued' then
  table.insert(fields, 'queued_at')
  table.insert(fields, ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
elseif status == 'failed' then
  for _, v in ipairs({{'error', reason, 'error_code', 'parent_failed', 'finished_at', ARGV[2]}}) do
    table.insert(fields, v)
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[3])
if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[5], ARGV[6]) end
return {{'created', status, status == 'queued' and '1' or '0'}}
"""

# KEYS: job, lease. ARGV: worker id, lease ttl s, max deliveries, now, job id, prefix,
# the claiming worker's model ('' = any).
# Claims by id alone (a worker reads nothing first): the record comes back with the
# outcomes that need it. A job put back for a later retry (``not_before``) is not taken
# early: the retry schedule publishes it again when it is due.
_CLAIM = f"""
local terminal = {_TERMINAL_LUA}
local found = redis.call('HMGET', KEYS[1], 'status', 'not_before', 'model')
local status, not_before, model = found[1], found[2], found[3]
if not status then return {{'unknown'}} end
if terminal[status] then return {{'done'}} end
if not model then  -- a record from before the model had its own field
  model = cjson.decode(redis.call('HGET', KEYS[1], 'spec')).model
end
if ARGV[7] ~= '' and model ~= ARGV[7] then
  return {{'wrong_model', unpack(redis.call('HGETALL', KEYS[1]))}}
end
if status == 'waiting' then return {{'waiting'}} end
if status == 'running' and redis.call('EXISTS', KEYS[2]) == 1 then return {{'busy'}} end
if status == 'queued' and tonumber(not_before or '0') > tonumber(ARGV[4]) then
  return {{'later'}}
end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[3]) then
  return {{'poison', unpack(redis.call('HGETALL', KEYS[1]))}}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[4],
           'step', 0)
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', ARGV[6] .. ':running:' .. model, ARGV[5])
return {{'claimed', unpack(redis.call('HGETALL', KEYS[1]))}}
"""

# Lua shared by every script that ends a job: a job's end, the release or failure of
# the children waiting on it, its batches' bookkeeping, the webhooks it owes and the
# expiry of its record happen in one script, so no crash can leave half of them done.
# Expects locals: prefix, now, ttl (seconds, 0 keeps records).
_ENDING_LIB = """
local terminal = """ + _TERMINAL_LUA + """
local function job_key(id) return prefix .. ':job:' .. id end

local function owe_webhook(kind, id, url)
  local record = prefix .. ':webhook:' .. kind .. ':' .. id
  if redis.call('EXISTS', record) == 1 then return end
  local member = kind .. ':' .. id
  redis.call('HSET', record, 'kind', kind, 'id', id, 'url', url,
             'delivery_id', string.sub(redis.sha1hex(member .. ':' .. now), 1, 32),
             'status', 'pending', 'attempts', 0, 'created_at', now, 'next_attempt_at', now)
  redis.call('ZADD', prefix .. ':webhooks:due', now, member)
  redis.call('PUBLISH', prefix .. ':webhooks:wake', member)
end

local function expire(key)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end

local function settle_batches(id)
  local index = prefix .. ':jobbatches:' .. id
  local batches = redis.call('SMEMBERS', index)
  if #batches == 0 then return end  -- most jobs belong to no batch
  local status = redis.call('HGET', job_key(id), 'status') or 'unknown'
  for _, batch in ipairs(batches) do
    local key = prefix .. ':batch:' .. batch
    -- Counted once per job (the SREM says whether this end is news), so a follower
    -- checks the batch in O(1) and reads only the jobs named on the channel.
    if redis.call('SREM', key .. ':pending', id) == 1 then
      redis.call('HINCRBY', key, 'jobs_ended', 1)
      redis.call('HINCRBY', key, 'jobs_' .. status, 1)
      redis.call('PUBLISH', prefix .. ':batch-progress:' .. batch, id)
    end
    if redis.call('HGET', key, 'sealed') == '1' and redis.call('SCARD', key .. ':pending') == 0
        and redis.call('HSETNX', key, 'finished_at', now) == 1 then
      local ok, meta = pcall(cjson.decode, redis.call('HGET', key, 'meta') or 'null')
      if ok and type(meta) == 'table' and type(meta.webhook) == 'string'
          and meta.webhook ~= '' then
        local kind = meta.webhook_kind
        if type(kind) ~= 'string' or kind == '' then kind = 'batch' end
        owe_webhook(kind, batch, meta.webhook)
      end
      expire(key)
      expire(key .. ':rows')
      expire(key .. ':pending')
    end
  end
  expire(index)
end

-- The record of ``id`` has just become terminal.
local function ended(id)
  settle_batches(id)
  local found = redis.call('HMGET', job_key(id), 'webhook', 'status')
  if found[1] then owe_webhook('job', id, found[1]) end
  expire(job_key(id))
  redis.call('PUBLISH', prefix .. ':ended:' .. id, found[2] or '')
end

-- Waiting children of a job that succeeded go to queued, into their model's unpublished
-- set: whoever ended the job publishes them, or the recovery loop does if it died first.
local function release_children(id)
  local released = {}
  local key = prefix .. ':children:' .. id
  local children = redis.call('SMEMBERS', key)
  for _, child in ipairs(children) do
    local child_key = job_key(child)
    if redis.call('HGET', child_key, 'status') == 'waiting' then
      local spec = cjson.decode(redis.call('HGET', child_key, 'spec'))
      redis.call('HSET', child_key, 'status', 'queued', 'queued_at', now)
      redis.call('ZADD', prefix .. ':unpublished:' .. spec.model, now, child)
      table.insert(released, child)
    end
  end
  if #children > 0 then redis.call('DEL', key) end
  return released
end

-- Every waiting descendant of a job that did not succeed fails with ``reason``.
local function fail_descendants(id, reason)
  local failed = {}
  local pending = {id}
  while #pending > 0 do
    local key = prefix .. ':children:' .. table.remove(pending)
    for _, child in ipairs(redis.call('SMEMBERS', key)) do
      local status = redis.call('HGET', job_key(child), 'status')
      if status and not terminal[status] then
        redis.call('HSET', job_key(child), 'status', 'failed', 'finished_at', now,
                   'error', reason, 'error_code', 'parent_failed')
        table.insert(failed, child)
        table.insert(pending, child)
        ended(child)
      end
    end
    redis.call('DEL', key)
  end
  return failed
end
"""

# KEYS: job, lease, running set, the ending worker's record ('' = none)
# ARGV: prefix, status, now, ttl, job id, reason for failed descendants, then field/value pairs
# Returns {released children, failed descendants}, or false if the job had already ended.
_FINISH = """
local prefix, now, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
""" + _ENDING_LIB + """
local found = redis.call('HMGET', KEYS[1], 'status', 'not_before')
local status = found[1]
if not status or terminal[status] then return false end
local fields = {'status', ARGV[2], 'finished_at', now}
for i = 7, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(fields))
if found[2] then redis.call('HDEL', KEYS[1], 'not_before') end
if KEYS[4] ~= '' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'jobs_done', 1)  -- here, not a round trip of its own
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[5])
local released, failed = {}, {}
if ARGV[2] == 'succeeded' then
  released = release_children(ARGV[5])
else
  failed = fail_descendants(ARGV[5], ARGV[6])
end
ended(ARGV[5])
return {released, failed}
"""

# KEYS: job. ARGV: prefix, unused, now, ttl, job id. Settles batches and webhooks of a job
# that has ended (a webhook set, or a batch joined, after the end).
_NOTIFY = """
local prefix, now, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
""" + _ENDING_LIB + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not terminal[status] then return 0 end
ended(ARGV[5])
return 1
"""

# KEYS: job, unpublished set. ARGV: now, job id
# A job whose worker died goes back to the queue; ``not_before`` of an earlier retry is spent.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[1], 'worker', '')
redis.call('HDEL', KEYS[1], 'not_before')
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: job, lease, running set, retry schedule
# ARGV: worker id, now, not before, error, job id
# Infrastructure trouble (storage, Redis) is not the job's fault: the job goes back to
# queued with a time before which it is not run, and the delivery its claim counted is
# given back, so only deliveries that killed a worker count towards poison.
_RETRY_LATER = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
end
redis.call('HINCRBY', KEYS[1], 'infra_retries', 1)
redis.call('HSETNX', KEYS[1], 'infra_since', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[2], 'worker', '',
           'not_before', ARGV[3], 'infra_error', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[5])
return 1
"""

# KEYS: retry schedule, unpublished set. ARGV: now
# Moves jobs whose retry is due to the unpublished set (to be published) and returns them.
_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[1], id)
end
return due
"""

# KEYS: job, unpublished set, retry schedule
# ARGV: prefix, unused, now, ttl, job id
# Returns {status found, failed descendants...}. Queued and waiting jobs end here, their
# waiting descendants failed with them; running jobs get a flag their worker checks at
# every step.
_CANCEL = """
local prefix, now, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
""" + _ENDING_LIB + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown'} end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return {status}
end
if terminal[status] then return {status} end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now,
           'error', 'cancelled by request', 'error_code', 'cancelled')
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[5])
local result = fail_descendants(ARGV[5], 'parent cancelled')
ended(ARGV[5])
table.insert(result, 1, status)
return result
"""


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
        # Terminal records (jobs, finished batches, settled webhooks) expire after this.
        self.record_ttl_s = record_ttl_s
        self._submit = client.register_script(_SUBMIT)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._notify = client.register_script(_NOTIFY)
        self._requeue = client.register_script(_REQUEUE)
        self._retry_later = client.register_script(_RETRY_LATER)
        self._due = client.register_script(_DUE)
        self._cancel = client.register_script(_CANCEL)
        self.batches = BatchStore(client, prefix, record_ttl_s)
        self.outbox = WebhookOutbox(client, prefix, record_ttl_s)

    @classmethod
    def from_url(cls, url: str, prefix: str = "zq", record_ttl_s: int = 0) -> JobStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``)."""
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix, record_ttl_s)

    # -- keys ---------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        """The hash holding one job's record."""
        return f"{self.prefix}:job:{job_id}"

    def worker_key(self, worker_id: str) -> str:
        """The hash holding one worker's registry record."""
        return f"{self.prefix}:worker:{worker_id}"

    def _lease_key(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def _children_key(self, job_id: str) -> str:
        return f"{self.prefix}:children:{job_id}"

    def _running_key(self, model: ModelType) -> str:
        return f"{self.prefix}:running:{model.value}"

    def _unpublished_key(self, model: ModelType) -> str:
        return f"{self.prefix}:unpublished:{model.value}"

    def _retry_key(self, model: ModelType) -> str:
        return f"{self.prefix}:retry:{model.value}"

    def _conversation_key(self, conversation_id: str) -> str:
        return f"{self.prefix}:conversation:{conversation_id}"

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
            self._children_key(spec.parent_id) if spec.parent_id else "",
            self._unpublished_key(spec.model),
            self._conversation_key(spec.conversation_id),
        ]
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        # The index outlives the records it names (their TTL starts when they end);
        # readers skip the ids whose records are gone.
        index_ttl_s = 2 * self.record_ttl_s
        args: list[str | float | int] = [spec_json, time.time(), spec.job_id, root_id, turn,
                                         index_ttl_s, spec.model.value]
        outcome, status, *owed = cast(list[str], self._submit(keys=keys, args=args))
        if outcome == "conflict":
            raise JobConflict(f"job {spec.job_id} exists with a different spec")
        if outcome == "no_parent":
            raise JobNotFound(f"parent job {spec.parent_id} is not known")
        return SubmitOutcome(JobStatus(status), created=outcome == "created",
                             unpublished=owed == ["1"])

    def conversation_jobs(self, conversation_id: str, limit: int) -> list[str]:
        """The ids of up to ``limit`` jobs submitted in a conversation, oldest first."""
        ids = cast(list[str], self.redis.zrange(self._conversation_key(conversation_id),
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
        """Cancel a job. Returns the status it had and the descendants failed with it.

        Queued and waiting jobs end at once (their message is dropped when a worker
        sees it) and their waiting descendants fail, in one step; a running job is
        flagged and stops at its next step.
        """
        job = self.get(job_id)
        keys = [self.job_key(job_id), self._unpublished_key(job.spec.model),
                self._retry_key(job.spec.model)]
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
        keys = [self.job_key(job_id), self._lease_key(job_id)]
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
        self.redis.set(self._lease_key(job_id), worker_id, ex=lease_ttl_s)

    def report_progress(self, job_id: str, step: int, total: int) -> bool:
        """Record the step reached; returns whether a cancel was requested."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.job_key(job_id), mapping={"step": step, "total_steps": total})
        pipe.hget(self.job_key(job_id), "cancel")
        cancel_flag: object = pipe.execute()[1]
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
        keys = [self.job_key(job_id), self._lease_key(job_id), self._running_key(model),
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
        keys = [self.job_key(spec.job_id), self._lease_key(spec.job_id),
                self._running_key(spec.model), self._retry_key(spec.model)]
        args: list[str | float] = [worker_id, now, now + delay_s, error[:500], spec.job_id]
        return bool(self._retry_later(keys=keys, args=args))

    def due_retries(self, model: ModelType) -> list[str]:
        """Jobs of ``model`` whose retry time has come; they are moved to be published."""
        keys = [self._retry_key(model), self._unpublished_key(model)]
        return sorted(cast(list[str], self._due(keys=keys, args=[time.time()])))

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

    def prune_workers(self, model: ModelType) -> list[str]:
        """Drop workers of ``model`` whose record expired (they stopped beating)."""
        index = f"{self.prefix}:workers:{model.value}"
        names = sorted(cast(set[str], self.redis.smembers(index)))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.worker_key(name))
        dead = [name for name, alive in zip(names, pipe.execute(), strict=True) if not alive]
        if dead:
            self.redis.srem(index, *dead)
        return dead
