"""The producer's Python client: submit jobs, follow them, fetch results, cancel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from common.adapter_registry import AdapterRegistry
from common.audit import audit_event
from common.errors import InvalidJob, JobFailed, JobNotFound, UnknownParent
from common.images import CONTENT_TYPES as IMAGE_CONTENT_TYPES
from common.images import EXTENSIONS as IMAGE_EXTENSIONS
from common.images import InputLimits, check_byte_size, check_mask_size, load_input
from common.job import KEY_PATTERN, JobKind, JobSpec, new_job
from common.jobstore import JobStore
from common.layout import upload_key
from common.push import FALLBACK_POLL_S, Subscription, ended_record, job_channel
from common.queueing import publish_specs
from common.settings import Settings
from common.shards import Shard, Shards
from common.status import JobRecord, JobStatus
from common.storage import ObjectStore, open_store
from common.webhook_policy import WebhookPolicy

ImageInput = str | Path | bytes
"""A local file path, raw image bytes, or (as a ``str`` not naming a file) a storage key."""

@dataclass(frozen=True)
class StagedInput:
    """An input image, checked and named by its content, not stored until ``put``."""

    key: str
    data: bytes | None = None  # None: already in storage under ``key``
    content_type: str = ""
    # (width, height) of a checked local image, upright; None for a storage key.
    size: tuple[int, int] | None = None

    def put(self, store: ObjectStore) -> str:
        """Store the bytes unless the key already holds them; returns the key."""
        if self.data is not None and not store.exists(self.key):
            store.put(self.key, self.data, self.content_type)
        return self.key


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: its id and the client that can follow it."""

    job_id: str
    client: Client

    def status(self) -> JobRecord:
        """The job's current record."""
        return self.client.status(self.job_id)

    def wait(self, timeout_s: float = 600.0) -> JobRecord:
        """Block until the job ends; see ``Client.wait``."""
        return self.client.wait(self.job_id, timeout_s)

    def result(self, timeout_s: float = 600.0) -> bytes:
        """Wait for the job and return its image bytes; see ``Client.result``."""
        return self.client.result(self.job_id, timeout_s)


class Client:
    """Talks to the queue (Redis) and the object store; never to a worker directly.

    With several shards (``ZQ_REDIS_SHARDS``) each job goes where ``common.shards`` routes
    it and is followed there; ``jobs`` and ``app`` are the home (first) shard's.
    """

    def __init__(self, settings: Settings, jobs: JobStore | None = None,
                 store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.shards = Shards.from_settings(settings, home=jobs)
        self.jobs = self.shards.home.jobs
        self.app = self.shards.home.app
        self.store = store or open_store(settings)
        self.adapters = AdapterRegistry(self.store)
        self._waiting = threading.local()  # each thread's kept pub/sub connections

    @classmethod
    def from_env(cls) -> Client:
        """A client configured from ``ZQ_*`` environment variables."""
        return cls(Settings.from_env())

    # -- submitting ----------------------------------------------------------
    def submit(self, spec: JobSpec, webhook: str | None = None, *,
               shard: Shard | None = None, new_id: bool = False) -> JobHandle:
        """Record and enqueue a built spec. Submitting the same spec again is a no-op.

        A queued job whose message was never sent (the submitter crashed in between)
        is published on resubmission. ``webhook`` is called once when the job ends; it
        must resolve to public addresses unless ``settings.webhook_allow`` allows it.
        ``shard`` overrides the routing (a batch's rows live on the batch's shard);
        ``new_id`` says the caller made ``spec.job_id`` just now (``new_job`` without one),
        which spares asking every shard whether it holds that id already.
        """
        return self._submit(spec, webhook, (), shard, new_id)

    def _submit(self, spec: JobSpec, webhook: str | None, inputs: Iterable[StagedInput],
                shard: Shard | None = None, new_id: bool = False) -> JobHandle:
        """``submit``, storing the spec's staged input images once all else is checked."""
        if not isinstance(spec, JobSpec):
            raise InvalidJob("spec", "a JobSpec (build one with new_job)", type(spec).__name__)
        if webhook is not None:
            WebhookPolicy(self.settings.webhook_allow).vet(webhook)
        # Each adapter named pinned to the file its name means now (or refused).
        spec = self.adapters.pin(spec)
        try:
            target = shard or self.shards.for_new(spec, new_id)
        except JobNotFound:  # the only id routing must find is the parent's
            raise UnknownParent(spec.parent_id) from None
        for staged in inputs:
            staged.put(self.store)
        jobs = target.jobs
        try:
            outcome = jobs.submit(spec)
        except JobNotFound:  # the only id submit looks up is the parent's
            raise UnknownParent(spec.parent_id) from None
        self.shards.remember(spec.job_id, target)
        if outcome.created:
            audit_event("submitted", spec, status=outcome.status.value,
                        priority=spec.priority, tags=spec.tags)
        if webhook is not None:
            # Set before the message goes out, so the job cannot end without it.
            jobs.set_webhook(spec.job_id, webhook)
            if outcome.status.terminal:  # e.g. its parent had already failed
                jobs.notify_ended(spec.job_id)
        if outcome.unpublished:
            publish_specs(target.app, jobs, [spec])
        return JobHandle(spec.job_id, self)

    def generate(self, prompt: str, webhook: str | None = None, **options: Any) -> JobHandle:
        """Text to image (turbo unless ``model`` says otherwise). Returns at once."""
        return self.submit(new_job(JobKind.GENERATE, prompt=prompt, **options), webhook,
                           new_id=options.get("job_id") is None)

    def edit(self, prompt: str, parent: str | None = None, image: ImageInput | None = None,
             mask: ImageInput | None = None, webhook: str | None = None,
             **options: Any) -> JobHandle:
        """Change a parent job's image or a source image; ``mask`` white = may change."""
        new_id = options.get("job_id") is None
        spec, inputs = self._child_spec(JobKind.EDIT, prompt, parent, image, mask, options)
        return self._submit(spec, webhook, inputs, new_id=new_id)

    def refine(self, parent: str | None = None, prompt: str | None = None,
               image: ImageInput | None = None, webhook: str | None = None,
               **options: Any) -> JobHandle:
        """Redraw at high quality on the base model; the prompt defaults to the parent's."""
        new_id = options.get("job_id") is None
        spec, inputs = self._child_spec(JobKind.REFINE, prompt, parent, image, None, options)
        return self._submit(spec, webhook, inputs, new_id=new_id)

    def _child_spec(self, kind: JobKind, prompt: str | None, parent: str | None,
                    image: ImageInput | None, mask: ImageInput | None,
                    options: dict[str, Any]) -> tuple[JobSpec, list[StagedInput]]:
        """The checked spec and its input images, staged but not stored yet."""
        if parent is not None:
            try:
                parent_spec = self.status(parent).spec
            except JobNotFound:
                raise UnknownParent(parent) from None
            options.setdefault("conversation_id", parent_spec.conversation_id)
            if not prompt:
                prompt = parent_spec.prompt
        inputs = {name: self.stage(value, name)
                  for name, value in (("source_image", image), ("mask", mask))
                  if value is not None}
        options.update({name: staged.key for name, staged in inputs.items()})
        source, mask_input = inputs.get("source_image"), inputs.get("mask")
        if source and mask_input and source.size and mask_input.size:
            check_mask_size(source.size, mask_input.size)
        # Nothing is stored until the whole spec (and webhook) is checked: a refused job
        # leaves no orphan object behind.
        spec = new_job(kind, prompt=prompt or "", parent_id=parent, **options)
        return spec, list(inputs.values())

    def upload(self, image: ImageInput, field: str = "source_image") -> str:
        """Store a local image under a content-addressed key and return the key.

        A ``str`` that is not an existing file is taken as a storage key and must exist.
        """
        return self.stage(image, field).put(self.store)

    def stage(self, image: ImageInput, field: str = "source_image") -> StagedInput:
        """Check an input image and name its content-addressed key; stores nothing yet.

        Raises ``InvalidJob`` naming ``field`` for anything that is not a readable image
        file, image bytes or an existing storage key.
        """
        if isinstance(image, bytearray | memoryview):
            image = bytes(image)
        if not isinstance(image, str | Path | bytes):
            raise InvalidJob(field, "a file path, image bytes or a storage key",
                             type(image).__name__)
        if isinstance(image, str) and _path_kind(image) != "file":
            if _path_kind(image) == "other":
                raise InvalidJob(field, "not a regular file", image)
            if not KEY_PATTERN.fullmatch(image) or ".." in image or not self.store.exists(image):
                raise InvalidJob(field, "no such file or storage key", image)
            return StagedInput(image)
        limits = InputLimits.from_settings(self.settings)
        data = image if isinstance(image, bytes) else _read_file(Path(image), field, limits)
        # The worker's own door: a file that passes here renders there.
        checked = load_input(data, field, limits, mask=field == "mask")
        key = upload_key(hashlib.sha256(data).hexdigest(), IMAGE_EXTENSIONS[checked.format])
        return StagedInput(key, data, IMAGE_CONTENT_TYPES[checked.format], checked.source_size)

    # -- following -------------------------------------------------------------
    def status(self, job_id: str) -> JobRecord:
        """The job's record now (``JobNotFound`` if unknown)."""
        return self.shards.holding(job_id).jobs.get(job_id)

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of ``job_ids`` (None: unknown or expired); one round trip per shard."""
        groups, _ = self.shards.grouped(job_ids)
        found: dict[str, JobRecord] = {}
        for shard, ids in groups:
            for job_id, record in zip(ids, shard.jobs.get_many(ids), strict=True):
                if record is not None:
                    found[job_id] = record
        return [found.get(job_id) for job_id in job_ids]

    def wait(self, job_id: str, timeout_s: float = 600.0,
             poll_s: float = FALLBACK_POLL_S) -> JobRecord:
        """Block until the job ends and return its record.

        Woken by the job store's publish when the job ends; ``poll_s`` is only the
        fallback re-read interval, in case that message was lost. Raises ``TimeoutError``
        naming its last status, ``JobNotFound`` for an unknown id.
        """
        return self.wait_all([job_id], timeout_s, poll_s)[0]

    def wait_all(self, jobs: Iterable[str | JobHandle], timeout_s: float = 600.0,
                 poll_s: float = FALLBACK_POLL_S) -> list[JobRecord]:
        """Block until every job ends; their records, in the order given.

        One pub/sub connection per shard subscribed to all their channels, however many
        jobs: the calling thread's, kept (unsubscribed) for its next wait. ``timeout_s``
        bounds the whole wait: ``TimeoutError`` names the first job (in the order
        given, per shard) that has not ended.
        """
        ids = [job.job_id if isinstance(job, JobHandle) else job for job in jobs]
        deadline = time.monotonic() + timeout_s
        groups, unknown = self.shards.grouped(ids)
        if unknown:
            raise JobNotFound(f"job {unknown[0]} is not known")
        ended: dict[str, JobRecord] = {}
        for shard, group in groups:
            # One shard after the other: all must end, so the wait is as long as the latest.
            ended.update(self._wait_on(shard, group, deadline, timeout_s, poll_s))
        return [ended[job_id] for job_id in ids]

    def _wait_on(self, shard: Shard, ids: list[str], deadline: float, timeout_s: float,
                 poll_s: float) -> dict[str, JobRecord]:
        """``wait_all`` for jobs of one shard: their ended records by id."""
        channels = {job_channel(shard.jobs.prefix, job_id): job_id for job_id in ids}
        ended: dict[str, JobRecord] = {}
        latest: dict[str, JobRecord] = {}
        with self._subscribed(shard, list(channels)) as subscription:
            # Read after subscribing: a job that ended before is seen here, one that ends
            # after is published to us.
            stale, last_read, final = list(dict.fromkeys(ids)), time.monotonic(), False
            while True:
                for record in self._read(shard, stale):
                    (ended if record.status.terminal else latest)[record.spec.job_id] = record
                pending = [job_id for job_id in dict.fromkeys(ids) if job_id not in ended]
                if not pending:
                    return ended
                if final:
                    first = pending[0]
                    raise TimeoutError(
                        f"job {first} still {latest[first].status.value} after {timeout_s}s")
                now = time.monotonic()
                if now >= deadline:
                    stale, final = pending, True  # the last word is a fresh read
                    continue
                if now - last_read >= poll_s:
                    stale, last_read = pending, now
                    continue
                messages = subscription.wait(min(deadline, last_read + poll_s) - now)
                if messages is None:  # the connection dropped: anything may have ended
                    stale, last_read = pending, time.monotonic()
                else:
                    named = self._take_ended(messages, channels, ended)
                    stale = [job_id for job_id in pending if job_id in named]

    @staticmethod
    def _take_ended(messages: list[tuple[str, str]], channels: dict[str, str],
                    ended: dict[str, JobRecord]) -> list[str]:
        """Records that came with their messages go to ``ended``; the ids to read back."""
        named = []
        for channel, data in messages:
            job_id = channels.get(channel)
            if job_id is None:
                continue  # a channel of an earlier wait on this connection
            fields = ended_record(data)
            try:
                record = JobRecord.from_hash(fields) if fields else None
            except (ValueError, KeyError):
                record = None
            if record is not None and record.status.terminal:
                ended[job_id] = record
            else:
                named.append(job_id)
        return named

    @contextlib.contextmanager
    def _subscribed(self, shard: Shard, channels: list[str]) -> Iterator[Subscription]:
        """This thread's kept pub/sub connection to ``shard``, subscribed until exit."""
        kept: dict[int, Subscription] | None = getattr(self._waiting, "subscriptions", None)
        if kept is None:
            kept = self._waiting.subscriptions = {}
        subscription = kept.get(shard.index)
        if subscription is None:
            # One per thread (pub/sub connections are not thread-safe); dropped with it.
            subscription = Subscription(shard.jobs.redis, [])
            kept[shard.index] = subscription
        subscription.watch(channels)
        try:
            yield subscription
        except BaseException:
            subscription.close()  # interrupted mid-read: the connection's state is unknown
            raise
        else:
            try:
                subscription.watch([])
            except redis.RedisError:
                subscription.close()

    @staticmethod
    def _read(shard: Shard, job_ids: list[str]) -> list[JobRecord]:
        """The records of ``job_ids`` in one round trip; ``JobNotFound`` for an unknown id."""
        records = []
        for job_id, record in zip(job_ids, shard.jobs.get_many(job_ids), strict=True):
            if record is None:
                raise JobNotFound(f"job {job_id} is not known")
            records.append(record)
        return records

    def result(self, job_id: str, timeout_s: float = 600.0) -> bytes:
        """The finished image's bytes; raises ``JobFailed`` with the reason otherwise."""
        record = self.wait(job_id, timeout_s)
        if record.status is not JobStatus.SUCCEEDED or record.image is None:
            raise JobFailed(f"job {job_id} {record.status.value}: {record.error}")
        return self.store.get(record.image)

    def url(self, job_id: str) -> str:
        """A presigned URL for the finished image (a ``file://`` URL on local storage)."""
        record = self.status(job_id)
        if record.image is None:
            raise JobFailed(f"job {job_id} has no image ({record.status.value})")
        return self.store.url(record.image, self.settings.presign_expiry_s)

    def manifest(self, job_id: str) -> dict[str, Any]:
        """The finished job's provenance manifest."""
        record = self.status(job_id)
        if record.manifest is None:
            raise JobFailed(f"job {job_id} has no manifest ({record.status.value})")
        manifest: dict[str, Any] = json.loads(self.store.get(record.manifest))
        return manifest

    def cancel(self, job_id: str, *, shard: Shard | None = None) -> JobStatus:
        """Cancel a job; returns its status now (a running job stops at its next step).

        Children waiting on a job cancelled before it ran fail with "parent cancelled".
        ``shard`` names where the job is when the caller knows (a batch's rows).
        """
        jobs = (shard or self.shards.holding(job_id)).jobs
        found, _ = jobs.cancel(job_id)
        record = jobs.get(job_id)
        audit_event("cancel_requested", record.spec, found=found.value)
        return record.status


def _read_file(path: Path, field: str, limits: InputLimits) -> bytes:
    try:
        check_byte_size(path.stat().st_size, field, limits)  # before reading it all
        return path.read_bytes()
    except OSError as exc:
        raise InvalidJob(field, f"cannot read file: {exc.strerror}", str(path)) from None
    except ValueError:  # a NUL in the path
        raise InvalidJob(field, "cannot read file: not a valid path", str(path)) from None


def _path_kind(text: str) -> str | None:
    """``file``, ``other`` (a directory, a device...) or None when nothing is there."""
    try:
        path = Path(text)
        if path.is_file():
            return "file"
        return "other" if path.exists() else None
    except (OSError, ValueError):  # too long for a path, or a NUL in it: not a file
        return None
