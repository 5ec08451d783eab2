"""One job's life on a worker: claim, fetch inputs, render, store, finish, release children.

Every way a job can go wrong ends here as a recorded reason; nothing a job does can
kill the worker. The Celery task is a thin wrapper around ``JobRunner.run``.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery import Celery
from PIL import Image, UnidentifiedImageError

from common.errors import (
    InputImageError,
    InvalidJob,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobRejected,
    JobTimedOut,
    ObjectNotFound,
    ParentFailed,
    PoisonJob,
    StorageError,
    WorkerError,
)
from common.job import JobSpec, OutputFormat
from common.jobstore import JobStore
from common.layout import CONTENT_TYPES, image_key, manifest_key
from common.queueing import publish_jobs
from common.settings import Settings
from common.status import JobRecord, JobStatus
from common.storage import ObjectStore
from worker.hooks import HookSet, JobOutcome
from worker.manifest import build_manifest
from worker.results import RenderInputs, RenderResult

log = logging.getLogger("zq.worker")

_PIL_FORMATS = {OutputFormat.PNG: "PNG", OutputFormat.WEBP: "WEBP", OutputFormat.JPEG: "JPEG"}


class JobRenderer(Protocol):
    """What the runner needs from a renderer (the real one, or a fake in unit tests)."""

    def render(self, job: JobSpec, inputs: RenderInputs,
               on_step: Callable[[int, int], bool]) -> RenderResult:
        """Render ``job``; raise ``JobCancelled`` when ``on_step`` returns True."""

    def describe(self) -> dict[str, Any]:
        """The model section of the manifest."""


@dataclass
class CurrentJob:
    """The job a worker is running now; the heartbeat thread renews its lease."""

    job_id: str | None = None
    started: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, job_id: str | None) -> None:
        """Mark ``job_id`` as running (None when idle)."""
        with self.lock:
            self.job_id, self.started = job_id, time.time()

    def get(self) -> str | None:
        """The running job's id, or None."""
        with self.lock:
            return self.job_id


class JobRunner:
    """Runs jobs for one worker process."""

    def __init__(self, settings: Settings, worker_id: str, jobs: JobStore, store: ObjectStore,
                 app: Celery, renderer: JobRenderer, hooks: HookSet | None = None,
                 current: CurrentJob | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.jobs = jobs
        self.store = store
        self.app = app
        self.renderer = renderer
        self.hooks = hooks or HookSet()
        self.current = current or CurrentJob()

    def run(self, job_id: str) -> str:
        """Run the job if this worker can claim it; returns what happened (for logs/tests)."""
        try:
            record = self.jobs.get(job_id)
        except (JobNotFound, InvalidJob) as exc:  # nothing any worker could run: drop it
            log.error("dropping message for job %s: %s", job_id, exc)
            return "unknown"
        spec = record.spec
        claim = self.jobs.claim(spec, self.worker_id, self.settings.lease_ttl_s,
                                self.settings.max_deliveries)
        if claim == "poison":
            error = PoisonJob(
                f"delivered {self.settings.max_deliveries} times without finishing; parked")
            self._fail(spec, error)
            self.hooks.finished(JobOutcome(record, JobStatus.FAILED, error=error))
            return "poison"
        if claim != "claimed":
            log.info("job %s not run here: %s", job_id, claim)
            return claim
        self.current.set(job_id)
        try:
            record = self.jobs.get(job_id)
            self.hooks.started(record)
            outcome = self._run_claimed(record)
            if outcome is None:
                return "requeued"
            self.hooks.finished(outcome)
            return outcome.status.value
        finally:
            self.current.set(None)

    def _run_claimed(self, record: JobRecord) -> JobOutcome | None:
        spec = record.spec
        timings: dict[str, float] = {}
        try:
            started = time.perf_counter()
            inputs, input_keys = self._inputs(spec)
            timings["load_inputs"] = time.perf_counter() - started
            result = self.renderer.render(spec, inputs, self._progress(spec))
            timings.update(result.timings_s)
            image = self._store(record, result, input_keys, timings)
            return JobOutcome(record, JobStatus.SUCCEEDED, timings, None, result.steps_run,
                              image)
        except StorageError as exc:
            self._retry_later(spec, exc)
            return None
        except Exception as exc:
            error, status = _as_failure(exc, spec)
            self._fail(spec, error, status)
            return JobOutcome(record, status, timings, error)

    def _progress(self, spec: JobSpec) -> Callable[[int, int], bool]:
        deadline = time.monotonic() + self.settings.job_timeout_s

        def on_step(done: int, total: int) -> bool:
            if time.monotonic() > deadline:
                raise JobTimedOut(f"timed out after {self.settings.job_timeout_s}s "
                                f"at step {done} of {total}")
            stop = self.jobs.report_progress(spec.job_id, done, total)
            self.hooks.progressed(spec, done, total)
            return stop

        return on_step

    def _inputs(self, spec: JobSpec) -> tuple[RenderInputs, dict[str, str]]:
        keys: dict[str, str] = {}
        if spec.parent_id is not None:
            parent = self.jobs.get(spec.parent_id)
            if parent.image is None:
                raise InputImageError(f"parent {spec.parent_id} has no image "
                                      f"({parent.status.value})")
            keys["parent_image"] = parent.image
        elif spec.source_image is not None:
            keys["source_image"] = spec.source_image
        if spec.mask is not None:
            keys["mask"] = spec.mask
        images = {name: self._image(name, key) for name, key in keys.items()}
        image = images.get("parent_image") or images.get("source_image")
        mask = images.get("mask")
        if mask is not None and image is not None and mask.size != image.size:
            raise InputImageError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
                                  f"{image.size[0]}x{image.size[1]}")
        return RenderInputs(image=image, mask=mask), keys

    def _image(self, name: str, key: str) -> Image.Image:
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            raise InputImageError(f"{name} {key!r} is missing from storage") from None
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputImageError(f"{name} {key!r} is not a readable image: {exc}") from None
        return image

    def _store(self, record: JobRecord, result: RenderResult, input_keys: dict[str, str],
               timings: dict[str, float]) -> str:
        """Write image then manifest, finish the job, release its children; returns the key."""
        spec = record.spec
        started = time.perf_counter()
        buffer = io.BytesIO()
        result.image.save(buffer, format=_PIL_FORMATS[spec.output_format])
        timings["image_encode"] = time.perf_counter() - started
        started = time.perf_counter()
        image = image_key(spec)
        self.store.put(image, buffer.getvalue(), CONTENT_TYPES[spec.output_format])
        timings["upload"] = time.perf_counter() - started
        manifest = build_manifest(record, self.renderer.describe(), result, input_keys,
                                  timings, self.worker_id, image)
        # The manifest is written last: its presence means the image is complete.
        key = manifest_key(spec)
        self.store.put(key, json.dumps(manifest, indent=2).encode(), "application/json")
        width, height = result.image.size
        children = self.jobs.finish(spec, JobStatus.SUCCEEDED, image=image, manifest=key,
                                    width=str(width), height=str(height))
        released = [c for c in children or [] if self.jobs.release(self.jobs.get(c).spec)]
        publish_jobs(self.app, self.jobs, released)
        return image

    def _fail(self, spec: JobSpec, error: JobFailed,
              status: JobStatus = JobStatus.FAILED) -> None:
        log.warning("job %s %s: %s", spec.job_id, status.value, error.reason)
        children = self.jobs.finish(spec, status, error=error.reason, error_code=error.code)
        word = "cancelled" if status is JobStatus.CANCELLED else "failed"
        reason = ParentFailed(f"parent {word}: job {spec.job_id}: {error.reason}")
        self.jobs.fail_descendants(children or [], reason)

    def _retry_later(self, spec: JobSpec, exc: StorageError) -> None:
        """Storage trouble may pass: put the job back; the delivery count bounds retries."""
        log.warning("job %s hit a storage error, requeueing: %s", spec.job_id, exc)
        time.sleep(min(2.0 ** self.jobs.get(spec.job_id).deliveries, 30.0))
        if self.jobs.requeue(spec):
            publish_jobs(self.app, self.jobs, [spec.job_id])


def _as_failure(exc: Exception, spec: JobSpec) -> tuple[JobFailed, JobStatus]:
    """The recorded reason for any exception a job raised."""
    if isinstance(exc, JobCancelled):
        return exc, JobStatus.CANCELLED
    if isinstance(exc, JobFailed):
        return exc, JobStatus.FAILED
    if isinstance(exc, InvalidJob):
        return JobRejected(f"invalid for this worker's model: {exc}"), JobStatus.FAILED
    # A bug or a GPU error must not take the worker down.
    log.error("job %s crashed in the pipeline", spec.job_id, exc_info=exc)
    return WorkerError(f"worker error: {type(exc).__name__}: {exc}"), JobStatus.FAILED
