"""The worker's audit hook: started, progress milestones, and how each job ended."""

from __future__ import annotations

from common.audit import audit_event
from common.errors import UnsafeContent
from common.job import JobSpec
from common.status import JobRecord
from worker.hooks import JobOutcome

MILESTONES = (25, 50, 75)


class AuditHooks:
    """Writes the worker's part of the audit trail."""

    def __init__(self, worker_id: str, model_source: str, revision: str) -> None:
        self.worker_id = worker_id
        self.model_source = model_source
        self.revision = revision
        self._reached: dict[str, int] = {}

    def started(self, record: JobRecord) -> None:
        """Log the claim: which worker, which model revision, which delivery."""
        audit_event("started", record.spec, worker=self.worker_id,
                    model_source=self.model_source, revision=self.revision,
                    deliveries=record.deliveries, root_id=record.root_id, turn=record.turn)

    def progressed(self, spec: JobSpec, done: int, total: int) -> None:
        """Log each milestone (25, 50, 75 %) once."""
        percent = 100 * done // max(total, 1)
        reached = self._reached.get(spec.job_id, 0)
        for milestone in MILESTONES:
            if reached < milestone <= percent:
                audit_event("progress", spec, percent=milestone, step=done, total=total)
                reached = milestone
        self._reached[spec.job_id] = reached

    def finished(self, outcome: JobOutcome) -> None:
        """Log the end, with the reason and the phase timings."""
        spec = outcome.record.spec
        self._reached.pop(spec.job_id, None)
        error = outcome.error
        if isinstance(error, UnsafeContent):
            audit_event("blocked", spec, worker=self.worker_id, stage=error.stage,
                        label=error.label, score=round(error.score, 6),
                        threshold=error.threshold, detail=error.detail or None)
        audit_event(outcome.status.value, spec, worker=self.worker_id, revision=self.revision,
                    image=outcome.image, error=error.reason if error else None,
                    error_code=error.code if error else None,
                    timings_s={k: round(v, 6) for k, v in outcome.timings_s.items()},
                    steps_run=outcome.steps_run)
