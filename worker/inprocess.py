"""Jobs run in this process, without a broker: a message queue in memory and a drain loop.

The real ``JobRunner``, job store scripts and object store, with the Celery broker swapped
for ``LocalQueue`` (a ``common.queueing.Publisher``): the life of a job (claim, render,
store, finish, children released and published, failures passed down) runs in
milliseconds, for tests and tools that need no worker process.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from common.job import JobSpec, ModelType
from worker.execute import JobRunner


class LocalQueue:
    """Messages kept in memory, taken most urgent first and in order within a priority,
    as a worker takes them from its queue."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str, ModelType]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()  # the runner's storing thread publishes too
        self.sent: list[tuple[str, int]] = []  # every (job id, priority) ever published

    def publish(self, spec: JobSpec, priority: int | None = None) -> None:
        """Queue "job X is ready" (``priority`` overrides the spec's)."""
        level = spec.priority if priority is None else priority
        with self._lock:
            heapq.heappush(self._heap, (-level, next(self._order), spec.job_id, spec.model))
            self.sent.append((spec.job_id, level))

    def take(self) -> str | None:
        """The next job id to run, or None when nothing is queued."""
        with self._lock:
            return heapq.heappop(self._heap)[2] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


def drain(runner: JobRunner, queue: LocalQueue, timeout_s: float = 60.0
          ) -> list[tuple[str, str]]:
    """Run queued messages until none is left, the stored ones included.

    Returns (job id, what ``JobRunner.run`` said) in the order they ran. A job handed off
    to the runner's storing thread releases its children when it is stored, so the
    loop waits for those before it calls the queue empty.
    """
    ran: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        job_id = queue.take()
        if job_id is not None:
            ran.append((job_id, runner.run(job_id)))
            continue
        if not runner.current.held():
            return ran
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still being stored after {timeout_s}s: "
                               f"{runner.current.held()}")
        time.sleep(0.005)
