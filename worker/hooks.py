"""The one seam for cross-cutting concerns (metrics, audit log): hooks on a job's life.

A hook that raises is logged and ignored: observing a job must never break it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.errors import JobFailed
from common.job import JobSpec
from common.status import JobRecord, JobStatus

log = logging.getLogger("zq.worker")


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended on this worker, with what the hooks report."""

    record: JobRecord
    status: JobStatus
    timings_s: dict[str, float] = field(default_factory=dict)
    error: JobFailed | None = None
    steps_run: int = 0
    image: str | None = None


class JobHooks(Protocol):
    """Called by the runner at each step of a job's life on this worker."""

    def started(self, record: JobRecord) -> None:
        """The job was claimed and is about to run."""

    def progressed(self, spec: JobSpec, done: int, total: int) -> None:
        """A denoising step finished."""

    def finished(self, outcome: JobOutcome) -> None:
        """The job ended (succeeded, failed or cancelled) on this worker."""


class HookSet:
    """Calls every hook, isolating their failures from the job."""

    def __init__(self, hooks: Sequence[JobHooks] = ()) -> None:
        self.hooks = list(hooks)

    def _each(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:
                log.exception("%s hook %s failed; the job goes on", method, type(hook).__name__)

    def started(self, record: JobRecord) -> None:
        """Tell every hook the job started."""
        self._each("started", record)

    def progressed(self, spec: JobSpec, done: int, total: int) -> None:
        """Tell every hook a step finished."""
        self._each("progressed", spec, done, total)

    def finished(self, outcome: JobOutcome) -> None:
        """Tell every hook the job ended."""
        self._each("finished", outcome)
