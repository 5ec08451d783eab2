"""Batch records in Redis: which jobs a batch holds, and noticing, once, that it finished.

A batch is a named set of jobs (the rows of a catalogue manifest, the variants of a
campaign period). Jobs are content-addressed, so one job may belong to several batches
and a finished job is never paid for twice. Each batch keeps the set of its jobs that
have not ended; when the last one ends after the batch was sealed (all rows added),
exactly one caller learns that the batch finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from common.keys import Keys
from common.scripts import load
from common.status import JobStatus

_ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class BatchRow:
    """One manifest row of a batch and the job it became (or why it did not)."""

    line: int
    sku: str
    job_id: str | None
    error: str | None = None


@dataclass(frozen=True)
class BatchProgress:
    """Counts of a batch's distinct jobs that have ended (rows sharing a job count once)."""

    ended: int
    succeeded: int
    failed: int
    cancelled: int


class BatchStore:
    """Batch records beside the job records (same Redis, same key prefix)."""

    def __init__(self, client: redis.Redis, prefix: str = "zq", record_ttl_s: int = 0) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.record_ttl_s = record_ttl_s
        self._add = client.register_script(load("batch_add"))
        self._seal = client.register_script(load("batch_seal"))

    def create(self, batch_id: str, meta: dict[str, Any]) -> bool:
        """Record a batch; False if it existed (a re-run of the same batch)."""
        created = bool(self.redis.hsetnx(self.keys.batch(batch_id), "meta",
                                         json.dumps(meta, sort_keys=True)))
        if created:
            self.redis.hset(self.keys.batch(batch_id), "created_at", time.time())
        return created

    def exists(self, batch_id: str) -> bool:
        """Whether a batch with that id was ever created."""
        return bool(self.redis.exists(self.keys.batch(batch_id)))

    def sealed(self, batch_id: str) -> bool:
        """Whether every row of the batch was added (a run cut short is not sealed)."""
        return self.redis.hget(self.keys.batch(batch_id), "sealed") == "1"

    def meta(self, batch_id: str) -> dict[str, Any]:
        """What the batch was created with (source, defaults, webhook...)."""
        raw = self.redis.hget(self.keys.batch(batch_id), "meta")
        return cast(dict[str, Any], json.loads(cast(str, raw))) if raw else {}

    def add_row(self, batch_id: str, row: BatchRow) -> None:
        """Record a row; a row with a job joins the batch's pending set unless it ended."""
        payload = json.dumps({"line": row.line, "sku": row.sku, "job_id": row.job_id,
                              "error": row.error})
        self.redis.hset(self.keys.batch(batch_id, ":rows"), str(row.line), payload)
        if row.job_id is not None:
            keys = [self.keys.job(row.job_id), self.keys.batch(batch_id, ":pending"),
                    self.keys.job_batches(row.job_id), self.keys.batch(batch_id)]
            self._add(keys=keys, args=[batch_id, row.job_id, self.keys.batch_progress(batch_id)])

    def rows(self, batch_id: str) -> list[BatchRow]:
        """Every recorded row, in manifest order."""
        raw = cast(dict[str, str], self.redis.hgetall(self.keys.batch(batch_id, ":rows")))
        rows = [BatchRow(**json.loads(value)) for value in raw.values()]
        return sorted(rows, key=lambda row: row.line)

    def seal(self, batch_id: str) -> bool:
        """Mark every row added; True if that finished the batch (all its jobs had ended)."""
        keys = [self.keys.batch(batch_id), self.keys.batch(batch_id, ":pending"),
                self.keys.batch(batch_id, ":rows")]
        return bool(self._seal(keys=keys, args=[time.time(), self.record_ttl_s]))

    def progress(self, batch_id: str) -> BatchProgress:
        """How many of the batch's distinct jobs have ended, by status; O(1).

        Kept by the scripts that add rows and end jobs, in the same atomic step; each
        change is also published on :meth:`common.keys.Keys.batch_progress` with the job's id.
        """
        values = cast(list[str | None], self.redis.hmget(
            self.keys.batch(batch_id), ["jobs_ended", *(f"jobs_{s.value}" for s in _ENDED)]))
        ended, succeeded, failed, cancelled = (int(v or 0) for v in values)
        return BatchProgress(ended, succeeded, failed, cancelled)

    def channel(self, batch_id: str) -> str:
        """The pub/sub channel naming each of the batch's jobs as it ends."""
        return self.keys.batch_progress(batch_id)

    def finished_at(self, batch_id: str) -> float | None:
        """When the batch's last job ended, or None while it runs."""
        value = self.redis.hget(self.keys.batch(batch_id), "finished_at")
        return float(cast(str, value)) if value else None
