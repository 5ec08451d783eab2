"""Job statuses and the record a producer reads back for a job."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from common.job import JobSpec


class JobStatus(StrEnum):
    """Where a job is in its life. ``TERMINAL`` statuses never change again."""

    WAITING = "waiting"  # submitted; its parent has not finished yet
    QUEUED = "queued"  # a message is (or is about to be) in its model's queue
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class JobRecord:
    """What the queue knows about one job: its spec, lineage, progress and outcome."""

    spec: JobSpec
    status: JobStatus
    root_id: str
    turn: int
    created_at: float
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    deliveries: int = 0
    worker: str | None = None
    image: str | None = None
    manifest: str | None = None
    error: str | None = None
    error_code: str | None = None
    cancel_requested: bool = False
    width: int | None = None
    height: int | None = None
    # Infrastructure retries (storage or Redis trouble): how many, since when, the last
    # error and the time before which the job will not run again.
    infra_retries: int = 0
    infra_since: float | None = None
    infra_error: str | None = None
    not_before: float | None = None

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> JobRecord:
        """Decode the Redis hash a job is stored in."""
        import json

        def opt_float(name: str) -> float | None:
            value = fields.get(name)
            return float(value) if value else None

        spec = JobSpec.from_dict(json.loads(fields["spec"]))
        return cls(
            spec=spec,
            status=JobStatus(fields["status"]),
            root_id=fields["root_id"],
            turn=int(fields["turn"]),
            created_at=float(fields["created_at"]),
            queued_at=opt_float("queued_at"),
            started_at=opt_float("started_at"),
            finished_at=opt_float("finished_at"),
            step=int(fields.get("step") or 0),
            total_steps=int(fields.get("total_steps") or 0),
            deliveries=int(fields.get("deliveries") or 0),
            worker=fields.get("worker") or None,
            image=fields.get("image") or None,
            manifest=fields.get("manifest") or None,
            error=fields.get("error") or None,
            error_code=fields.get("error_code") or None,
            cancel_requested=fields.get("cancel") == "1",
            width=int(fields["width"]) if fields.get("width") else spec.width,
            height=int(fields["height"]) if fields.get("height") else spec.height,
            infra_retries=int(fields.get("infra_retries") or 0),
            infra_since=opt_float("infra_since"),
            infra_error=fields.get("infra_error") or None,
            not_before=opt_float("not_before"),
        )

    def to_public(self) -> dict[str, Any]:
        """The JSON a producer prints for a job (``zq status --json``)."""
        spec = self.spec
        return {
            "job_id": spec.job_id,
            "status": self.status.value,
            "model": spec.model.value,
            "kind": spec.kind.value,
            "prompt": spec.prompt,
            "steps": spec.steps,
            "guidance": spec.guidance,
            "strength": spec.strength,
            "source_image": spec.source_image,
            "mask": spec.mask,
            "parent_id": spec.parent_id,
            "conversation_id": spec.conversation_id,
            "root_id": self.root_id,
            "turn": self.turn,
            "progress": {"step": self.step, "total": self.total_steps},
            "image": self.image,
            "manifest": self.manifest,
            "error": self.error,
            "error_code": self.error_code,
            "seed": spec.seed,
            "width": self.width,
            "height": self.height,
            "created_at": self.created_at,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "infra_retries": self.infra_retries,
            "infra_error": self.infra_error,
            "not_before": self.not_before,
            "adapters": [adapter.to_dict() for adapter in spec.adapters],
        }
