"""Bulk catalogue editing: a manifest becomes one batch of content-addressed jobs.

Job ids derive from what a row asks for (prompt, input image bytes, mask, size, seed,
settings), so re-running the same command after an interruption submits nothing that
is done or queued, and the same edit in another batch reuses the finished image.
Bulk jobs default to a low priority so interactive turns overtake them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis

from common.batches import BatchRow, BatchStore
from common.errors import InvalidJob, JobNotFound, ServiceUnavailable
from common.job import JobKind, JobSpec, new_job
from common.push import Subscription, webhook_wake_channel
from common.shards import Shard
from common.status import TERMINAL, JobStatus
from producer.client import Client, StagedInput
from producer.manifest import ManifestRow, ReadOptions, RowError, read_manifest

BULK_PRIORITY = 2
_TERMINAL_VALUES = frozenset(status.value for status in TERMINAL)
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
# Errors that mean Redis is gone: every further row would fail the same way.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)


@dataclass(frozen=True)
class Submission:
    """What submitting a manifest did."""

    batch_id: str
    jobs: int
    errors: list[RowError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RowResult:
    """One line of the results manifest."""

    line: int
    sku: str
    job_id: str | None
    status: str
    image: str | None = None
    url: str | None = None
    error: str | None = None


def batch_id_for(manifest: Path, defaults: dict[str, Any],
                 reading: dict[str, Any] | None = None) -> str:
    """The same manifest with the same defaults (and way of reading it) is the same batch."""
    digest = hashlib.sha256(manifest.read_bytes())
    digest.update(json.dumps(defaults, sort_keys=True).encode())
    if reading:  # only when given, so batches read the default way keep their ids
        digest.update(json.dumps(reading, sort_keys=True).encode())
    return f"batch-{digest.hexdigest()[:24]}"


class Batches:
    """Submits, follows and cancels batches through a ``Client``.

    A batch and all its rows' jobs live on one shard (``common.shards``): its progress
    and its one "finished" are that Redis's atomic steps.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def shard(self, batch_id: str) -> Shard:
        """The shard holding the batch (where a new one goes, if it is not known)."""
        return self.client.shards.for_batch(batch_id)

    def store(self, batch_id: str) -> BatchStore:
        """The batch records of the batch's shard."""
        return self.shard(batch_id).jobs.batches

    def submit(self, manifest: Path, defaults: dict[str, Any], webhook: str | None = None,
               batch_id: str | None = None, options: ReadOptions | None = None) -> Submission:
        """Upload inputs, submit every good row, record the bad ones with their reason.

        The file is read whole first, so a problem with it (``InvalidManifest``) records
        nothing. Anything wrong with one row makes that row an error and the others go
        in; the batch is always sealed. Only Redis going away stops it part-way
        (``ServiceUnavailable``): the same call again then finishes the batch.
        """
        options = options or ReadOptions()
        required = ("sku",) if defaults.get("prompt") else ("sku", "prompt")
        read = read_manifest(manifest, options, required)
        batch_id = batch_id or batch_id_for(manifest, defaults, options.describe())
        meta = {"source": manifest.name, "defaults": defaults, "webhook": webhook,
                **({"reading": options.describe()} if options.describe() else {})}
        if webhook:
            from common.webhook_policy import WebhookPolicy

            WebhookPolicy(self.client.settings.webhook_allow).vet(webhook)
        errors: list[RowError] = []
        jobs = 0
        try:
            shard = self.shard(batch_id)
            store = shard.jobs.batches
            store.create(batch_id, meta)
            for row in read.rows:
                done = self._submit_row(row, defaults, manifest.parent, shard)
                if isinstance(done, RowError):
                    errors.append(done)
                    store.add_row(batch_id, BatchRow(done.line, done.sku, None, done.reason))
                else:
                    store.add_row(batch_id, BatchRow(done.line, done.sku, done.job_id))
                    jobs += 1
            if store.seal(batch_id):
                finished(shard, batch_id)
        except UNREACHABLE as exc:
            raise ServiceUnavailable(
                f"Redis unreachable after {jobs + len(errors)} of {len(read.rows)} rows of "
                f"batch {batch_id} ({exc}); run the same command again to finish it") from None
        return Submission(batch_id, jobs, errors, read.notes)

    def _submit_row(self, row: ManifestRow | RowError, defaults: dict[str, Any],
                    base: Path, shard: Shard) -> BatchRow | RowError:
        """Submit one row; whatever goes wrong with it, short of Redis, is its row error."""
        if isinstance(row, RowError):
            return row
        sku = str(row.fields["sku"])
        try:
            spec = self.row_spec(row, defaults, base)
            self.client.submit(spec, shard=shard)
        except UNREACHABLE:
            raise
        except InvalidJob as exc:
            return RowError(row.line, sku, str(exc), exc.field)
        except Exception as exc:  # a bug or a surprise: still only this row's problem
            return RowError(row.line, sku, f"row: {type(exc).__name__}: {exc}")
        return BatchRow(row.line, sku, spec.job_id)

    def row_spec(self, row: ManifestRow, defaults: dict[str, Any], base: Path) -> JobSpec:
        """The job a row asks for, with an id derived from its content."""
        fields = {**defaults, **row.fields}
        sku = str(fields.pop("sku"))
        image, mask = fields.pop("image", None), fields.pop("mask", None)
        staged = {name: self._input(value, name, base)
                  for name, value in (("image", image), ("mask", mask)) if value}
        source = staged["image"].key if "image" in staged else None
        mask_key = staged["mask"].key if "mask" in staged else None
        fields.setdefault("priority", BULK_PRIORITY)
        content = json.dumps({**fields, "source": source, "mask": mask_key}, sort_keys=True)
        digest = hashlib.sha256(content.encode()).hexdigest()
        # The seed too derives from the content, so a re-run asks for the same image.
        fields.setdefault("seed", int(digest[:8], 16) % 2**31)
        job_id = f"b-{digest[:32]}"
        kind = JobKind.EDIT if source else JobKind.GENERATE
        spec = new_job(kind, job_id=job_id, conversation_id=job_id, source_image=source,
                       mask=mask_key, tags={"sku": sku}, **fields)
        # Stored only once the whole spec is valid: a refused row leaves no orphan object.
        for name, input_ in staged.items():
            _stored(name, input_, self.client)
        return spec

    def _input(self, value: str, name: str, base: Path) -> StagedInput:
        """Check a row's image or mask (a URL, a path beside the manifest, or a storage key)."""
        try:
            if value.startswith(("http://", "https://")):
                return self.client.stage(_download(value, name), name)
            local = base / value  # relative paths are relative to the manifest
            return self.client.stage(local if _exists(local) else value, name)
        except InvalidJob:
            raise
        except Exception as exc:  # storage trouble, a decoder's surprise: name the field
            raise InvalidJob(name, f"cannot use it: {type(exc).__name__}: {exc}", value) from exc

    def results(self, batch_id: str) -> list[RowResult]:
        """Every row with its job's status now, and a presigned URL for each image."""
        return [dataclasses.replace(r, url=self.client.store.url(
                    r.image, self.client.settings.presign_expiry_s))
                if r.image and r.status == JobStatus.SUCCEEDED.value else r
                for r in self.results_light(batch_id)]

    def counts(self, batch_id: str) -> Counter[str]:
        """How many rows are in each status (``invalid`` for rows that never became jobs)."""
        return Counter(result.status for result in self.results_light(batch_id))

    def results_light(self, batch_id: str) -> list[RowResult]:
        """Like ``results`` without presigning URLs (cheap enough to poll)."""
        jobs = self.shard(batch_id).jobs
        if not jobs.batches.exists(batch_id):
            raise JobNotFound(f"batch {batch_id} is not known")
        rows = jobs.batches.rows(batch_id)
        pipe = jobs.redis.pipeline(transaction=False)
        for row in rows:
            pipe.hmget(jobs.job_key(row.job_id or "-"), ["status", "image", "error"])
        out = []
        for row, (status, image, error) in zip(rows, pipe.execute(), strict=True):
            if row.job_id is None:
                out.append(RowResult(row.line, row.sku, None, "invalid", error=row.error))
            else:
                out.append(RowResult(row.line, row.sku, row.job_id, status or "unknown",
                                     image, None, error))
        return out

    def cancel(self, batch_id: str) -> int:
        """Cancel every job of the batch that has not ended; returns how many."""
        cancelled = 0
        shard = self.shard(batch_id)
        for result in self.results_light(batch_id):
            if result.job_id and result.status in {"waiting", "queued", "running"}:
                self.client.cancel(result.job_id, shard=shard)
                cancelled += 1
        return cancelled


class BatchWatch:
    """A batch's rows kept current by its pub/sub channel: O(changes) per update.

    Every row is read once, when opened (after subscribing, so no end falls between);
    then each ``update`` reads only the jobs the channel named, plus an O(1) look at the
    batch's counters that catches a lost message. Every ``sweep_s`` the jobs that have
    not ended are read again, which keeps queued/running current (those changes are not
    published) and is the fallback should the counters be missing (older batches).
    """

    def __init__(self, batches: Batches, batch_id: str, sweep_s: float = 5.0) -> None:
        self.batches = batches
        self.batch_id = batch_id
        self.sweep_s = sweep_s
        self.jobs = batches.shard(batch_id).jobs
        self.subscription = Subscription(self.jobs.redis, [self.jobs.batches.channel(batch_id)])
        self.results: list[RowResult] = []
        self.counts: Counter[str] = Counter()
        self._rows_of: dict[str, list[int]] = {}
        self._ended: set[str] = set()
        self._last_sweep = 0.0

    def __enter__(self) -> BatchWatch:
        self.subscription.open()
        try:
            self._load()
        except BaseException:
            self.subscription.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.subscription.close()

    def _load(self) -> None:
        self.results = self.batches.results_light(self.batch_id)
        self.counts = Counter(result.status for result in self.results)
        self._rows_of, self._ended = {}, set()
        for index, result in enumerate(self.results):
            if result.job_id is not None:
                self._rows_of.setdefault(result.job_id, []).append(index)
                if result.status in _TERMINAL_VALUES:
                    self._ended.add(result.job_id)
        self._last_sweep = time.monotonic()

    def update(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for jobs of the batch to end; apply what changed."""
        messages = self.subscription.wait(timeout_s)
        if messages is None:  # the connection dropped: ends may have gone unheard
            self._sweep()
            return
        progress = self.jobs.batches.progress(self.batch_id)
        # An end counted before the read above was published before it too: collect it.
        messages += self.subscription.wait(0.0) or []
        self._read({job_id for _, job_id in messages})
        if (progress.ended > len(self._ended)
                or time.monotonic() - self._last_sweep >= self.sweep_s):
            self._sweep()

    def _sweep(self) -> None:
        self._last_sweep = time.monotonic()
        self._read(set(self._rows_of) - self._ended)

    def _read(self, job_ids: set[str]) -> None:
        """Re-read the rows of ``job_ids`` (one round trip) and adjust the counts."""
        named = sorted(job_id for job_id in job_ids if job_id in self._rows_of)
        if not named:
            return
        jobs = self.jobs
        pipe = jobs.redis.pipeline(transaction=False)
        for job_id in named:
            pipe.hmget(jobs.job_key(job_id), ["status", "image", "error"])
        for job_id, (status, image, error) in zip(named, pipe.execute(), strict=True):
            if status in _TERMINAL_VALUES:
                self._ended.add(job_id)
            for index in self._rows_of[job_id]:
                old = self.results[index]
                self.counts[old.status] -= 1
                if not self.counts[old.status]:
                    del self.counts[old.status]
                self.results[index] = dataclasses.replace(
                    old, status=status or "unknown", image=image, error=error)
                self.counts[status or "unknown"] += 1


def finished(shard: Shard, batch_id: str) -> None:
    """Settle a batch that sealing found finished: queue its webhook, wake the dispatcher."""
    shard.jobs.batch_finished(batch_id)
    # Owed outside the ending script, which is what wakes the dispatcher otherwise.
    shard.jobs.redis.publish(webhook_wake_channel(shard.jobs.prefix), batch_id)


def write_results(results: list[RowResult], path: Path) -> None:
    """The results manifest: JSONL for ``.jsonl``, CSV otherwise."""
    columns = ("line", "sku", "job_id", "status", "image", "url", "error")
    rows = [{c: getattr(r, c) for c in columns} for r in results]
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _stored(name: str, staged: StagedInput, client: Client) -> None:
    try:
        staged.put(client.store)
    except Exception as exc:
        raise InvalidJob(name, f"cannot store it: {exc}") from exc


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # too long for a path, or a NUL in it
        return False


def _download(url: str, name: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data: bytes = response.read(MAX_DOWNLOAD_BYTES + 1)
    except OSError as exc:
        raise InvalidJob(name, f"cannot download: {exc}", url) from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise InvalidJob(name, f"at most {MAX_DOWNLOAD_BYTES} bytes", url)
    return data
