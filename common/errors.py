"""One exception tree for zimage-queue.

The type of an error says who made it and whether trying again can help:
``InvalidJob`` is the submitter's mistake and is refused before anything is queued;
``JobFailed`` subclasses are the final reason recorded on a job; ``TransientError``
marks trouble (a storage hiccup) that a retry may cure.
"""

from __future__ import annotations


class ZqError(Exception):
    """Root of every error zimage-queue raises on purpose."""


class InvalidJob(ZqError, ValueError):
    """A job spec breaks a limit; raised at submit, before anything is queued.

    ``field`` names the offending field and ``limit`` states the rule it broke,
    so a caller (or a batch report) can point at the exact cause.
    """

    def __init__(self, field: str, limit: str, value: object = None) -> None:
        self.field = field
        self.limit = limit
        self.value = value
        shown = "" if value is None else f" (got {_short(value)})"
        super().__init__(f"{field}: {limit}{shown}")


class BadInputImage(InvalidJob):
    """An input image (source, parent or mask) is unreadable, disguised or too large.

    At the client it is an ``InvalidJob`` like any other (nothing is uploaded); the
    worker records it as ``InputImageError`` (``input_invalid``).
    """


class JobConflict(ZqError):
    """A job id was submitted again with a different spec; ids are idempotency keys."""


class JobNotFound(ZqError, LookupError):
    """No job with that id is known to the queue."""


class UnknownParent(InvalidJob, JobNotFound):
    """A job names a parent the queue does not know: the submitter's mistake, field named."""

    def __init__(self, parent_id: object) -> None:
        super().__init__("parent_id", "no job with this id is known", parent_id)


class InvalidManifest(ZqError, ValueError):
    """A batch manifest cannot be read as a whole (missing file, encoding, columns).

    Problems with single rows are not this: they are reported per row and the other
    rows still go in.
    """


class StorageError(ZqError):
    """The object store failed in a way that is not about a missing object."""


class ObjectNotFound(StorageError, LookupError):
    """A storage key that should exist does not."""


class ObjectTooLarge(ZqError):
    """A stored object is larger than the caller accepts; its body was not read."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        self.key, self.size, self.limit = key, size, limit
        super().__init__(f"{key!r} is {size} bytes, over the limit of {limit}")


class JobFailed(ZqError):
    """A job ended without an image; the message is the recorded reason.

    ``code`` is a short stable identifier (``parent_failed``, ``input_missing`` ...)
    for programs; the message is for people.
    """

    code = "failed"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InputImageError(JobFailed):
    """A parent image, source image or mask is missing, unreadable or the wrong size."""

    code = "input_invalid"


class ParentFailed(JobFailed):
    """The job's parent failed or was cancelled, so the job cannot run."""

    code = "parent_failed"


class JobCancelled(JobFailed):
    """The job was cancelled by a producer (while queued or at its next step)."""

    code = "cancelled"


class PoisonJob(JobFailed):
    """The job was delivered too often (it kept killing its workers) and is parked."""

    code = "poison"


class JobRejected(JobFailed):
    """The worker refused the job as invalid for its loaded model (e.g. the size rule)."""

    code = "invalid"


class JobTimedOut(JobFailed):
    """The job ran past the worker's job timeout and was stopped at a step boundary."""

    code = "timeout"


class StorageUnavailable(JobFailed):
    """Storage (or Redis) stayed unreachable past the job's retry budget."""

    code = "storage_unavailable"


class WorkerError(JobFailed):
    """The pipeline raised something unexpected (a bug, a GPU error); the worker lives on."""

    code = "worker_error"


class UnsafeContent(JobFailed):
    """A safety gate blocked the job: its prompt or its image scored as unsafe.

    Nothing of the job was stored. Not retried: the same job scores the same again.
    ``stage`` is ``prompt`` or ``image``; ``detail`` (which blocklist entry matched, say)
    is for the operator's audit trail, not for the message a submitter reads.
    """

    code = "unsafe"

    def __init__(self, stage: str, label: str, score: float, threshold: float,
                 detail: str = "") -> None:
        self.stage, self.label, self.score, self.threshold = stage, label, score, threshold
        self.detail = detail
        super().__init__(f"blocked by the {stage} safety gate: {label!r} scored {score:.3f}, "
                         f"at or above the threshold {threshold:.3f}")


class SafetyCheckFailed(JobFailed):
    """The safety gate itself failed on this job; the job fails closed (nothing stored)."""

    code = "safety_error"


class AdapterFailed(JobFailed):
    """A LoRA adapter the job names cannot be fetched or does not fit the model.

    Not retried: the file the job was pinned to stays what it is.
    """

    code = "adapter_failed"


class WorkerBroken(ZqError):
    """The worker's own state is wrong (its loaded weights changed dtype or size).

    Not the job's fault: the job goes back to the queue and the worker stops, so a
    fresh process loads the model again.
    """


class ConfigError(ZqError):
    """Settings are invalid, or a worker was started with options it cannot serve."""


class TransientError(ZqError):
    """Trouble that may pass (a storage or broker hiccup): the job is retried."""


class ServiceUnavailable(TransientError):
    """Redis cannot be reached, so going on is pointless; running the same command again
    later finishes what was started (submission is idempotent)."""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
