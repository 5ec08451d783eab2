"""The hung-step watchdog: notices a job that stopped advancing, and gives the worker up.

A CUDA kernel that never returns hangs the job thread inside the model, while the
liveness thread goes on renewing the job's lease and writing a healthy health file:
the job would never end and never be recovered. ``ProgressWatch`` records the rendering
job's last sign of progress (the render starting, each denoising step); the liveness
thread asks it every beat whether that was more than ``ZQ_STALL_TIMEOUT_S`` ago. Only
a job inside the model is watched: an idle worker, the model load and warm-up, a job's
inputs loading and the finisher storing a rendered job never are (storage has its own
retries and timeouts, and its trouble must not count as a delivery).

A stuck thread cannot be interrupted from Python, so ``give_up`` records what it can
(health file, worker and job records, each bounded in time) and ends the process with
``EXIT_STALLED``. The job is then recovered like any lost job: its lease runs out and
another worker requeues it. It is never marked failed here: that would race the
recovery, and ``ZQ_MAX_DELIVERIES`` already parks a job that hangs worker after worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

log = logging.getLogger("zq.worker")

# EX_TEMPFAIL: the job is retried elsewhere and a fresh process (a restarted pod) may work.
EXIT_STALLED = 75
# Recording the stall in Redis must not keep a hung worker alive when Redis is away too.
RECORD_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Stall:
    """A watched job that made no progress for ``idle_s`` seconds."""

    job_id: str
    phase: str
    idle_s: float

    def reason(self) -> str:
        """One line for logs, the health file and the job record."""
        return f"job {self.job_id} made no progress for {self.idle_s:.0f}s (last: {self.phase})"


class ProgressWatch:
    """The rendering job's last sign of progress, shared by the job and liveness threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.job_id: str | None = None
        self.phase = ""
        self.last = 0.0

    def start(self, job_id: str, phase: str) -> None:
        """Watch ``job_id`` from now on, in ``phase`` (its render starts)."""
        with self.lock:
            self.job_id, self.phase, self.last = job_id, phase, self.clock()

    def mark(self, phase: str) -> None:
        """The watched job advanced: a new phase or a denoising step completed."""
        with self.lock:
            if self.job_id is not None:
                self.phase, self.last = phase, self.clock()

    def stop(self, job_id: str | None = None) -> None:
        """Stop watching (``job_id``, if given: only if it is still the one watched)."""
        with self.lock:
            if job_id is None or job_id == self.job_id:
                self.job_id = None

    def stalled(self, timeout_s: float) -> Stall | None:
        """The stall if the watched job's last progress is over ``timeout_s`` old (0: never)."""
        with self.lock:
            if timeout_s <= 0 or self.job_id is None:
                return None
            idle = self.clock() - self.last
            return Stall(self.job_id, self.phase, idle) if idle > timeout_s else None


def give_up(stall: Stall, steps: list[Callable[[], object]],
            exit: Callable[[int], object] = os._exit,
            timeout_s: float = RECORD_TIMEOUT_S) -> NoReturn:
    """Run each recording step (its errors logged, all of them within ``timeout_s``),
    then end the process with ``EXIT_STALLED``.

    The steps run on a daemon thread: one blocked on an unreachable Redis is left behind.
    ``exit`` is ``os._exit`` because the job thread holds the process: a normal exit
    would wait for it forever.
    """
    log.critical("%s; this worker stops (exit %d) and the job's lease runs out, so another "
                 "worker reruns it", stall.reason(), EXIT_STALLED)

    def record() -> None:
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("could not record the stall")

    recorder = threading.Thread(target=record, name="zq-stall-record", daemon=True)
    recorder.start()
    recorder.join(timeout_s)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    exit(EXIT_STALLED)
    raise SystemExit(EXIT_STALLED)  # only reached when a test stubs ``exit``


def hang_at_step() -> int | None:
    """Test hook: ``ZQ_TEST_HANG_AT_STEP=N`` makes denoising step N never complete."""
    raw = os.environ.get("ZQ_TEST_HANG_AT_STEP")
    return int(raw) if raw else None


def hang_forever(job_id: str, step: int) -> NoReturn:
    """Test hook: stand in for a CUDA kernel that never returns."""
    log.warning("test hook: job %s hangs at step %d (ZQ_TEST_HANG_AT_STEP)", job_id, step)
    while True:
        time.sleep(60)
