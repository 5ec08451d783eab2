"""Celery configuration and message publishing, shared by producers and workers.

The configuration follows the known traps of long GPU jobs on Celery + Redis:
late acknowledgement with rejection on a lost worker, no prefetch, a visibility
timeout above the longest job, warm shutdown on SIGTERM, JSON only, events for Flower.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

from celery import Celery
from kombu.entity import Queue

from common.job import JobKind, JobSpec, ModelType
from common.jobstore import JobStore
from common.settings import Settings

TASK_NAMES: dict[JobKind, str] = {kind: f"zq.{kind.value}" for kind in JobKind}
PRIORITY_STEPS = list(range(10))


def queue_name(model: ModelType) -> str:
    """The Celery queue a model type's workers consume."""
    return f"zq.{model.value}"


def model_for_queue(name: str) -> ModelType | None:
    """The model type served by a queue name, or None if it is not one of ours."""
    for model in ModelType:
        if queue_name(model) == name:
            return model
    return None


def broker_priority(priority: int) -> int:
    """Our priority (9 most urgent) as kombu's Redis priority (0 polled first)."""
    return 9 - priority


def _queue(model: ModelType) -> Queue:
    return Queue(queue_name(model), routing_key=queue_name(model))  # type: ignore[no-untyped-call]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The dozen Celery options zimage-queue relies on, and nothing else."""
    transport = {
        # A message not acked within this is redelivered; it must outlast any job.
        "visibility_timeout": settings.visibility_timeout_s,
        "priority_steps": PRIORITY_STEPS,
        "queue_order_strategy": "priority",
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_queues": [_queue(m) for m in ModelType],
        "task_default_queue": queue_name(ModelType.TURBO),
        "task_create_missing_queues": False,
        "task_send_sent_event": settings.task_events,
        "worker_send_task_events": settings.task_events,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "worker_concurrency": 1,
        "worker_pool": "solo",
        # SIGTERM is Celery's warm shutdown: the solo pool finishes the running job, takes
        # no new one and exits. Celery's soft shutdown cannot work on the solo pool (its
        # wait runs inside the signal handler, on the thread running the job), so it is
        # left off; a job cut short by SIGKILL is recovered through its lease.
        "worker_soft_shutdown_timeout": 0.0,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def make_celery(settings: Settings, name: str = "zq") -> Celery:
    """A Celery app configured from settings; producers only send, workers also consume."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class Publisher(Protocol):
    """Where job messages go other than a Celery broker: e.g. a queue in this process."""

    def publish(self, spec: JobSpec, priority: int | None = None) -> None:
        """Send "job X is ready" for ``spec`` (``priority`` overrides the spec's)."""


# What the publishing functions send through: a Celery app, or any ``Publisher``.
Sender: TypeAlias = Celery | Publisher


def publish(app: Sender, spec: JobSpec, priority: int | None = None) -> None:
    """Send the message that says "job X is ready" to its model type's queue.

    The message carries only the job id: the record in Redis holds the spec, and
    images travel as storage keys, never inside messages. ``priority`` overrides the
    spec's (priority aging).
    """
    if not isinstance(app, Celery):
        app.publish(spec, priority)
        return
    queue = queue_name(spec.model)
    app.send_task(
        TASK_NAMES[spec.kind],
        kwargs={"job_id": spec.job_id},
        queue=queue,
        routing_key=queue,
        priority=broker_priority(spec.priority if priority is None else priority),
    )


def publish_jobs(app: Sender, jobs: JobStore, job_ids: list[str],
                 priority: int | None = None) -> None:
    """Publish queued jobs and mark them sent; ``priority`` overrides their own.

    A crash between recording a job and publishing it leaves the job in the
    unpublished set, where a worker's recovery loop finds and publishes it.
    """
    publish_specs(app, jobs, [jobs.get(job_id).spec for job_id in job_ids], priority)


def publish_specs(app: Sender, jobs: JobStore, specs: list[JobSpec],
                  priority: int | None = None) -> None:
    """``publish_jobs`` for specs already in hand (no record read)."""
    for spec in specs:
        publish(app, spec, priority)
        jobs.mark_published(spec)
