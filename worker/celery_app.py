"""The worker's Celery app: ``celery -A worker.celery_app worker -Q zq.turbo`` or ``zq worker``.

Tasks are thin: they hand the job id to ``JobRunner``. The model is loaded once,
after the worker knows its queue and before it consumes a single message, then
warmed up with one tiny render; jobs never load weights.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import signals
from celery.exceptions import Reject, WorkerShutdown

from common.errors import ConfigError, WorkerBroken
from common.job import JobKind, ModelType
from common.queueing import TASK_NAMES, make_celery, model_for_queue
from common.settings import Settings
from common.webhooks import redact_url
from worker.execute import JobRunner
from worker.intake import Intake
from worker.liveness import Liveness, WorkerRegistry
from worker.metrics import WorkerMetrics
from worker.transport import worker_transport_config
from worker.warm_routing import WarmRouting, own_queue

log = logging.getLogger("zq.worker")
EXIT_CANNOT_START = 78  # EX_CONFIG
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: Redis could not be reached at start-up
EXIT_MODEL_CHANGED = 70  # EX_SOFTWARE: the loaded weights changed; a fresh process reloads them
# 75 (EX_TEMPFAIL): a job stopped advancing inside the model; worker.watchdog.EXIT_STALLED.

# Celery's `-A` needs a module-level app; settings are read once, here, for it.
settings = Settings.from_env()
app = make_celery(settings, name="zq-worker")
# Every message passes worker.intake first: one that cannot run is dead-lettered, not fatal.
app.conf.worker_consumer = "worker.consumer:Consumer"
app.conf.update(worker_transport_config(settings.redis_url))


@dataclass
class WorkerRuntime:
    """Everything a worker process holds for its life."""

    model: ModelType
    runner: JobRunner
    registry: WorkerRegistry
    liveness: Liveness
    metrics: WorkerMetrics
    intake: Intake
    routing: WarmRouting


_runtime: WorkerRuntime | None = None
# Set when a job stops the worker on purpose; ``zq worker`` exits with it (else Celery's code).
exit_code = 0


def runtime() -> WorkerRuntime:
    """The started runtime; tasks cannot run before the worker has booted."""
    if _runtime is None:
        raise RuntimeError("worker runtime not started: run this app with `zq worker`"
                           " or `celery -A worker.celery_app worker -Q zq.<model>`")
    return _runtime


def served_model(queues: list[str]) -> ModelType:
    """The one model type a worker serves: ``ZQ_WORKER_MODEL``, else its single queue."""
    named = os.environ.get("ZQ_WORKER_MODEL")
    if named:
        try:
            return ModelType(named)
        except ValueError:
            raise ConfigError(f"ZQ_WORKER_MODEL must be turbo, edit or base: {named!r}") from None
    models = {m for m in (model_for_queue(q) for q in queues) if m is not None}
    if len(models) != 1 or len(queues) != 1:
        raise ConfigError(f"a worker serves exactly one model queue (zq.turbo, zq.edit or "
                          f"zq.base); it was given {sorted(queues)}")
    return models.pop()


@signals.celeryd_after_setup.connect
def _boot(sender: str, instance: Any, **_: Any) -> None:
    """Load and warm the model before the consumer starts fetching messages."""
    global _runtime
    from worker.boot import start_runtime

    queues = sorted(instance.app.amqp.queues.consume_from or {})
    try:
        model = served_model(queues)
        _runtime = start_runtime(settings, model, sender, app)
    except ConfigError as exc:
        log.critical("worker cannot start: %s", exc)
        os._exit(EXIT_CANNOT_START)
    except redis.RedisError as exc:
        log.critical("worker cannot start: Redis at %s: %s", redact_url(settings.redis_url), exc)
        os._exit(EXIT_UNAVAILABLE)
    except Exception:
        # Celery logs and swallows errors raised by signal handlers; a worker that
        # cannot load its model must not go on to consume (and drop) messages.
        log.critical("worker cannot start", exc_info=True)
        os._exit(EXIT_CANNOT_START)
    # Where other workers pass the jobs that need adapters this one holds.
    instance.app.amqp.queues.select_add(own_queue(model, sender))


@signals.worker_ready.connect
def _ready(**_: Any) -> None:
    state = runtime()
    state.registry.update(ready=1)
    state.metrics.ready.labels(state.model.value).set(1)
    state.liveness.ready = True
    state.liveness.write_health()
    log.info("worker ready for %s", runtime().model.value)


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.routing.close()
        _runtime.registry.update(ready=0)
        _runtime.metrics.ready.labels(_runtime.model.value).set(0)
        # Rendered jobs still being stored are finished before the process exits; the
        # liveness thread keeps their leases alive meanwhile.
        if not _runtime.runner.close(settings.job_timeout_s):
            log.error("storing rendered jobs did not finish in time; their leases will "
                      "run out and other workers will render them again")
        _runtime.liveness.stop()


def _run(job_id: str) -> str:
    state = runtime()
    try:
        return state.runner.run(job_id)
    except redis.RedisError as exc:
        # The job record could not be read or claimed: put the message back rather
        # than acknowledge a job that never ran.
        log.warning("Redis error on job %s, requeueing its message: %s", job_id, exc)
        time.sleep(1.0)
        raise Reject(exc, requeue=True) from exc
    except WorkerBroken as exc:
        # The job is back in the queue; this process must not render another one.
        global exit_code
        exit_code = EXIT_MODEL_CHANGED
        log.critical("stopping the worker: %s", exc)
        raise WorkerShutdown(EXIT_MODEL_CHANGED) from exc
    finally:
        _job_ended(state)


def _job_ended(state: WorkerRuntime) -> None:
    """This worker is free again: routing may pass it adapter jobs now."""
    try:
        state.routing.job_ended()
    except redis.RedisError as exc:  # the next heartbeat says it again
        log.warning("could not record this worker as idle: %s", exc)


@app.task(name=TASK_NAMES[JobKind.GENERATE], ignore_result=True)
def generate(job_id: str) -> str:
    """zq.generate: text to image."""
    return _run(job_id)


@app.task(name=TASK_NAMES[JobKind.EDIT], ignore_result=True)
def edit(job_id: str) -> str:
    """zq.edit: image-to-image or masked edit of a parent or source image."""
    return _run(job_id)


@app.task(name=TASK_NAMES[JobKind.REFINE], ignore_result=True)
def refine(job_id: str) -> str:
    """zq.refine: high-quality redraw of a parent or source image."""
    return _run(job_id)

