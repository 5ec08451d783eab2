"""One job's life on a worker: claim, fetch inputs, render, store, finish, release children.

The job thread claims and renders; storing (encode, image PUT, manifest PUT, finish,
release children) happens on the finisher thread while the next job renders. Every
way a job can go wrong ends here as a recorded reason; nothing a job does can kill
the worker. The Celery task is a thin wrapper around ``JobRunner.run``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from common.errors import (
    BadInputImage,
    InputImageError,
    InvalidJob,
    JobCancelled,
    JobFailed,
    JobRejected,
    JobTimedOut,
    ObjectNotFound,
    ObjectTooLarge,
    ParentFailed,
    PoisonJob,
    StorageError,
    StorageUnavailable,
    WorkerBroken,
    WorkerError,
)
from common.images import InputImage, InputLimits, load_input, match_mask
from common.job import JobSpec, ModelType
from common.jobstore import JobStore
from common.layout import CONTENT_TYPES, image_key, manifest_key
from common.queueing import Sender, publish, publish_jobs
from common.settings import Settings
from common.status import JobRecord, JobStatus
from common.storage import ObjectStore
from worker.encoding import encode_image
from worker.finisher import Finisher
from worker.hooks import HookSet, JobOutcome
from worker.manifest import build_manifest
from worker.results import RenderInputs, RenderResult
from worker.safety import SafetyGuard
from worker.watchdog import ProgressWatch, hang_at_step, hang_forever

# At most this often a running job's step reaches Redis (and a cancel is noticed).
PROGRESS_INTERVAL_S = 0.25
log = logging.getLogger("zq.worker")

# Storage retries in the finisher, seconds between tries: the rendered image is kept,
# so a blip costs a wait, not a second render. After the last, the job goes back to the
# queue with a retry time, so a longer outage does not hold the worker (or its hand-off).
STORE_RETRY_DELAYS_S = (0.5, 1.0, 2.0)
# Infrastructure retries of a job back off exponentially up to this many seconds apart.
MAX_RETRY_DELAY_S = 30.0
# How long the finisher lets the job thread take the next job before storing the last one
# (the next render usually starts within a few ms; with no next job, this is the delay).
HANDOFF_GRACE_S = 0.02


class JobRenderer(Protocol):
    """What the runner needs from a renderer (the real one, or a fake in unit tests)."""

    def render(self, job: JobSpec, inputs: RenderInputs,
               on_step: Callable[[int, int], bool]) -> RenderResult:
        """Render ``job``; raise ``JobCancelled`` when ``on_step`` returns True."""

    def describe(self) -> dict[str, Any]:
        """The model section of the manifest."""


@dataclass
class CurrentJob:
    """The job a worker renders now and the rendered jobs it is still storing.

    The heartbeat thread renews the lease of every one of them: a job is held from
    its claim until its record is finished, across the hand-off. ``progress`` watches
    the job only while the model renders it (the hung-step watchdog).
    """

    job_id: str | None = None
    started: float = 0.0
    finishing: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set while the job thread runs the model: the finisher starts its work then, not in
    # the few milliseconds the job thread needs (and the GIL) to fetch and claim the next job.
    rendering: threading.Event = field(default_factory=threading.Event)
    progress: ProgressWatch = field(default_factory=ProgressWatch)

    def set(self, job_id: str | None) -> None:
        """Mark ``job_id`` as rendering (None when the job thread is idle)."""
        with self.lock:
            self.job_id, self.started = job_id, time.time()

    def get(self) -> str | None:
        """The rendering job's id, or None."""
        with self.lock:
            return self.job_id

    def hand_off(self, job_id: str) -> None:
        """The rendering job moves to storing; its lease stays held."""
        with self.lock:
            self.finishing.add(job_id)
            if self.job_id == job_id:
                self.job_id, self.started = None, time.time()

    def stored(self, job_id: str) -> None:
        """The job's record is finished: this worker holds it no longer."""
        with self.lock:
            self.finishing.discard(job_id)

    def held(self) -> list[str]:
        """Every job whose lease this worker must keep alive."""
        with self.lock:
            return sorted(self.finishing | ({self.job_id} if self.job_id else set()))


@dataclass
class Rendered:
    """A rendered job on its way to storage."""

    record: JobRecord
    result: RenderResult
    input_keys: dict[str, str]
    timings: dict[str, float]
    handed_off: float = field(default_factory=time.perf_counter)


class JobRunner:
    """Runs jobs for one worker process: renders on the caller's thread, stores on its own."""

    def __init__(self, settings: Settings, worker_id: str, jobs: JobStore, store: ObjectStore,
                 app: Sender, renderer: JobRenderer, hooks: HookSet | None = None,
                 current: CurrentJob | None = None, model: ModelType | None = None,
                 safety: SafetyGuard | None = None) -> None:
        self.settings = settings
        # The model this worker holds: a job of another type is sent on, not run (None:
        # any, for tests that run several types through one runner).
        self.model = model
        self.worker_id = worker_id
        self.jobs = jobs
        self.store = store
        self.app = app
        self.renderer = renderer
        self.hooks = hooks or HookSet()
        self.current = current or CurrentJob()
        # The safety gate (None: off): prompts before rendering, images before storing.
        self.safety = safety
        # Depth 0: no hand-off, the job thread stores each result itself (for comparison).
        self.finisher: Finisher[Rendered] | None = None
        if settings.handoff_depth:
            self.finisher = Finisher(self._finish_handed_off, settings.handoff_depth)
            self.finisher.start()

    def run(self, job_id: str) -> str:
        """Run the job if this worker can claim it; returns what happened (for logs/tests).

        ``handed_off`` means rendered and queued for storage: the job ends on the
        finisher thread. ``WorkerBroken`` is raised after the job was put back.
        """
        try:
            # The claim is the only read: it answers with the record.
            claim = self.jobs.claim_by_id(job_id, self.worker_id, self.settings.lease_ttl_s,
                                          self.settings.max_deliveries, self.model)
        except InvalidJob as exc:  # claimed, but its spec cannot be read: end it
            log.error("job %s: unreadable record, failed: %s", job_id, exc)
            if self.model is not None:
                self.jobs.finish_by_id(job_id, self.model, JobStatus.FAILED,
                                       counted_for=self.worker_id,
                                       error=f"unreadable job record: {exc}",
                                       error_code=JobRejected.code)
            return "unknown"
        if claim.outcome == "unknown":  # nothing any worker could run: drop it
            log.error("dropping message for job %s: it is not known", job_id)
            return "unknown"
        if claim.outcome == "wrong_model" and claim.record is not None:
            log.warning("job %s is a %s job: sent on to its own queue", job_id,
                        claim.record.spec.model.value)
            publish(self.app, claim.record.spec)
            return "wrong_model"
        if claim.outcome == "poison" and claim.record is not None:
            record, spec = claim.record, claim.record.spec
            error = PoisonJob(
                f"delivered {self.settings.max_deliveries} times without finishing; parked")
            self._fail(spec, error)
            self.hooks.finished(JobOutcome(record, JobStatus.FAILED, error=error))
            return "poison"
        if claim.record is None:
            log.info("job %s not run here: %s", job_id, claim.outcome)
            return claim.outcome
        self.current.set(job_id)
        try:
            record = claim.record
            self.hooks.started(record)
            return self._run_claimed(record)
        finally:
            if self.current.get() == job_id:
                self.current.set(None)

    def _run_claimed(self, record: JobRecord) -> str:
        spec = record.spec
        timings: dict[str, float] = {}
        try:
            if self.safety is not None:  # before any GPU time is spent on the job
                self.safety.check_prompt(spec, timings)
            started = time.perf_counter()
            inputs, input_keys = self._inputs(spec)
            timings["load_inputs"] = time.perf_counter() - started
            self.current.rendering.set()
            # Only the model is watched: loading inputs and storing results have their own
            # retries and timeouts, and storage trouble must not count as a delivery.
            self.current.progress.start(spec.job_id, "rendering")
            try:
                result = self.renderer.render(spec, inputs, self._progress(spec))
            finally:
                self.current.progress.stop(spec.job_id)
                self.current.rendering.clear()
        except (StorageError, redis.RedisError) as exc:
            return self._retry_later(record, exc)
        except WorkerBroken:
            log.critical("job %s goes back to the queue: this worker's model changed",
                         spec.job_id)
            self._requeue(spec)
            raise
        except Exception as exc:
            error, status = _as_failure(exc, spec)
            self._fail(spec, error, status)
            self.hooks.finished(JobOutcome(record, status, timings, error))
            return status.value
        timings.update(result.timings_s)
        self.current.hand_off(spec.job_id)
        rendered = Rendered(record, result, input_keys, timings)
        if self.finisher is None:
            self._store_and_finish(rendered)
            return "stored"
        self.finisher.hand_off(rendered)
        return "handed_off"

    def close(self, timeout_s: float) -> bool:
        """Store every rendered job before the worker exits; False if time ran out."""
        return self.finisher is None or self.finisher.close(timeout_s)

    def _finish_handed_off(self, rendered: Rendered) -> None:
        """On the finisher thread: once the next render is under way, store and finish."""
        self.current.rendering.wait(HANDOFF_GRACE_S)
        self._store_and_finish(rendered)

    def _store_and_finish(self, rendered: Rendered) -> None:
        """Store the result and end the job, however it goes."""
        record, spec = rendered.record, rendered.record.spec
        rendered.timings["handoff_wait"] = time.perf_counter() - rendered.handed_off
        # A store within PROGRESS_INTERVAL_S ends the job (recording its last step) before
        # anyone could tell; a slower one says "rendered" meanwhile. Either way, most jobs
        # pay no round trip of their own for the last step.
        steps = rendered.result.steps_run
        last_step = threading.Timer(PROGRESS_INTERVAL_S, self._report_rendered,
                                    (spec.job_id, steps))
        last_step.daemon = True
        last_step.start()
        try:
            if self.safety is not None:
                # Once, before the first write: a blocked job leaves nothing in storage.
                self.safety.check_image(rendered.result.image, spec, rendered.timings)
            for delay in (*STORE_RETRY_DELAYS_S, None):
                try:
                    image = self._store(rendered)
                    break
                except (StorageError, redis.RedisError) as exc:
                    if delay is None:
                        self._retry_later(record, exc)
                        return
                    log.warning("job %s: storing failed, trying again in %ss: %s",
                                spec.job_id, delay, exc)
                    time.sleep(delay)
            self.hooks.finished(JobOutcome(record, JobStatus.SUCCEEDED, rendered.timings, None,
                                           rendered.result.steps_run, image))
        except redis.RedisError as exc:
            # Redis is still away: nothing can be recorded now. The job's lease runs out
            # and the recovery loop requeues it once Redis is back.
            log.error("job %s: Redis unreachable, left to lease recovery: %s", spec.job_id, exc)
        except Exception as exc:
            error, status = _as_failure(exc, spec)
            self._fail(spec, error, status)
            self.hooks.finished(JobOutcome(record, status, rendered.timings, error))
        finally:
            last_step.cancel()
            self.current.stored(spec.job_id)

    def _report_rendered(self, job_id: str, steps: int) -> None:
        """Record that every step is done while the job is still being stored."""
        if not steps:
            return
        try:
            self.jobs.report_progress(job_id, steps, steps)
        except redis.RedisError as exc:
            log.warning("job %s: last step not recorded: %s", job_id, exc)

    def _progress(self, spec: JobSpec) -> Callable[[int, int], bool]:
        deadline = time.monotonic() + self.settings.job_timeout_s
        hang_at = hang_at_step()
        last_report = [time.monotonic()]  # the claim recorded step 0

        def on_step(done: int, total: int) -> bool:
            if done == hang_at:
                hang_forever(spec.job_id, done)
            self.current.progress.mark(f"step {done} of {total}")
            now = time.monotonic()
            if now > deadline:
                raise JobTimedOut(f"timed out after {self.settings.job_timeout_s}s "
                                f"at step {done} of {total}")
            self.hooks.progressed(spec, done, total)
            # Progress (and the cancel check with it) costs Redis a round trip: at most one
            # per PROGRESS_INTERVAL_S however fast the steps. The last step is reported by
            # the storing (``_store_and_finish``), once it takes long enough to matter.
            if done >= total or now - last_report[0] < PROGRESS_INTERVAL_S:
                return False
            last_report[0] = now
            try:
                stop = self.jobs.report_progress(spec.job_id, done, total)
            except redis.RedisError as exc:
                # A Redis blip must not throw away the render: progress and the cancel
                # check resume at the next step; the lease covers a short outage.
                log.warning("job %s: progress not recorded at step %d: %s", spec.job_id,
                            done, exc)
                stop = False
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
        mask_image = None
        if mask is not None:
            if image is None:
                raise InputImageError("a mask needs an image to edit")
            try:
                mask_image = match_mask(image, mask)
            except BadInputImage as exc:
                raise InputImageError(f"mask {keys['mask']!r}: {exc.limit}") from None
        return RenderInputs(image=image.image if image else None, mask=mask_image), keys

    def _image(self, name: str, key: str) -> InputImage:
        """An input through the one image door (bounded, normalised): ``input_invalid``
        for anything the door refuses."""
        try:
            data = self.store.get(key, max_bytes=self.settings.max_input_bytes)
        except ObjectNotFound:
            raise InputImageError(f"{name} {key!r} is missing from storage") from None
        except ObjectTooLarge as exc:
            raise InputImageError(f"{name} {key!r}: at most {exc.limit} bytes "
                                  f"(ZQ_MAX_INPUT_BYTES; got {exc.size})") from None
        try:
            return load_input(data, name, InputLimits.from_settings(self.settings),
                              mask=name == "mask")
        except BadInputImage as exc:
            shown = "" if exc.value is None else f" (got {exc.value})"
            raise InputImageError(f"{name} {key!r}: {exc.limit}{shown}") from None

    def _store(self, rendered: Rendered) -> str:
        """Write image then manifest, finish the job, release its children; returns the key."""
        record, result, timings = rendered.record, rendered.result, rendered.timings
        spec = record.spec
        started = time.perf_counter()
        data = encode_image(result.image, spec.output_format, spec.quality,
                            self.settings.png_compress_level)
        timings["image_encode"] = time.perf_counter() - started
        started = time.perf_counter()
        image = image_key(spec)
        self.store.put(image, data, CONTENT_TYPES[spec.output_format])
        timings["upload"] = time.perf_counter() - started
        manifest = build_manifest(record, self.renderer.describe(), result,
                                  rendered.input_keys, timings, self.worker_id, image)
        # The manifest is written last: its presence means the image is complete.
        key = manifest_key(spec)
        self.store.put(key, json.dumps(manifest, indent=2).encode(), "application/json")
        width, height = result.image.size
        steps = str(result.steps_run)
        ending = self.jobs.finish(spec, JobStatus.SUCCEEDED, counted_for=self.worker_id,
                                  image=image, manifest=key, width=str(width),
                                  height=str(height), step=steps, total_steps=steps)
        if ending is not None:
            pause_after_finish()
            publish_jobs(self.app, self.jobs, ending.released)
        return image

    def _fail(self, spec: JobSpec, error: JobFailed,
              status: JobStatus = JobStatus.FAILED) -> None:
        log.warning("job %s %s: %s", spec.job_id, status.value, error.reason)
        word = "cancelled" if status is JobStatus.CANCELLED else "failed"
        reason = ParentFailed(f"parent {word}: job {spec.job_id}: {error.reason}")
        self.jobs.finish(spec, status, reason.reason, self.worker_id, error=error.reason,
                         error_code=error.code)

    def _requeue(self, spec: JobSpec, why: str = "") -> None:
        """Put a claimed job back to queued and publish it; the delivery count bounds this."""
        if why:
            log.warning("job %s requeued: %s", spec.job_id, why)
        if self.jobs.requeue(spec):
            publish_jobs(self.app, self.jobs, [spec.job_id])

    def _retry_later(self, record: JobRecord, exc: Exception) -> str:
        """Storage or Redis trouble may pass: the job goes back to wait, the worker goes on.

        The job is not run again before its retry time (exponential backoff), and the
        delivery is not counted towards poison. Past the retry budget the job fails with
        ``storage_unavailable``, unless the settings say to wait out the outage.
        """
        spec = record.spec
        error = f"{type(exc).__name__}: {exc}"
        waited = time.time() - (record.infra_since or time.time())
        settings = self.settings
        if waited >= settings.infra_retry_budget_s and settings.infra_outage == "fail":
            failure = StorageUnavailable(
                f"storage unavailable for {waited:.0f}s, past ZQ_INFRA_RETRY_BUDGET_S="
                f"{settings.infra_retry_budget_s} ({record.infra_retries} retries): {error}")
            self._fail(spec, failure)
            self.hooks.finished(JobOutcome(record, JobStatus.FAILED, error=failure))
            return JobStatus.FAILED.value
        delay = min(2.0 ** record.infra_retries, MAX_RETRY_DELAY_S)
        log.warning("job %s: %s; retrying in %.0fs without holding the worker", spec.job_id,
                    error, delay)
        self.jobs.retry_later(spec, self.worker_id, delay, error)
        return "retry_later"


def pause_after_finish() -> None:
    """Test hook: ``ZQ_TEST_PAUSE_AFTER_FINISH_S`` holds a worker between a job's end and
    the publishing of its released children, so a test can kill it there."""
    pause = os.environ.get("ZQ_TEST_PAUSE_AFTER_FINISH_S")
    if pause:
        log.warning("test hook: pausing %ss after finishing a job", pause)
        time.sleep(float(pause))


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
