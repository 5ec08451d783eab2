"""A worker's health file: written by its liveness thread, read by ``zq health``.

Kubernetes probes run ``zq health`` in the worker's pod. Reading a local file is far
cheaper than a Celery ping, needs no broker (a Redis blip must not restart every
worker), and works while a long job holds the solo pool.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.job import ModelType


def health_path(model: ModelType, directory: str | None = None) -> Path:
    """Where a worker of ``model`` writes its health (``ZQ_HEALTH_DIR``, default the temp dir)."""
    base = directory or os.environ.get("ZQ_HEALTH_DIR") or tempfile.gettempdir()
    return Path(base) / f"zq-worker-{model.value}.health.json"


@dataclass(frozen=True)
class Health:
    """A worker's last word on itself."""

    pid: int
    model: str
    ready: bool
    heartbeat: float
    current_job: str | None
    interval_s: float
    # Why the worker gave up on a job stuck in the model (``worker.watchdog``); None if not.
    stalled: str | None = None

    def alive(self, now: float | None = None) -> bool:
        """The liveness thread wrote recently (three missed beats mean dead or hung)."""
        now = time.time() if now is None else now
        return now - self.heartbeat <= 3 * self.interval_s + 1.0 and _pid_running(self.pid)


def write_health(path: Path, health: Health) -> None:
    """Replace the file atomically, so a probe never reads half a write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(health)))
    os.replace(tmp, path)


def read_health(path: Path) -> Health | None:
    """The worker's health, or None if it never wrote any (not started, or crashed early)."""
    try:
        return Health(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0) but is dead
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
