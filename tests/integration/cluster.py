"""Real worker processes for integration tests: started, watched and killed by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common.job import ModelType


@dataclass
class WorkerProcess:
    """One ``zq worker`` process and its log."""

    model: ModelType
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    health_dir: Path | None = None

    def log_text(self) -> str:
        """Everything the worker printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 60.0) -> int:
        """Signal the worker and wait for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)


@dataclass
class Cluster:
    """Starts workers against one Redis and one object store with the given environment."""

    env: dict[str, str]
    logs: Path
    redis_url: str
    prefix: str = "zq"
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, model: ModelType, name: str | None = None, wait: bool = True,
              extra_env: dict[str, str] | None = None) -> WorkerProcess:
        """Start ``zq worker --model MODEL``; by default wait until it reports ready."""
        self.logs.mkdir(parents=True, exist_ok=True)
        name = name or f"{model.value}-{len(self.workers)}@test"
        log = self.logs / f"{name}.log"
        health_dir = self.logs / f"{name}.health"
        env = {**os.environ, **self.env, "ZQ_HEALTH_DIR": str(health_dir), **(extra_env or {})}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zq", "worker", "--model", model.value, "--name", name],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(model, name, proc, log, health_dir)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def start_many(self, *models: ModelType, names: list[str] | None = None,
                   extra_env: dict[str, str] | None = None) -> list[WorkerProcess]:
        """Start one worker per model given, all at once, and wait until each is ready.

        The boots overlap (importing diffusers and loading the model take most of a
        worker's ~12 s start on a slow 2-core machine; two at once take ~13 s, not 22 s).
        """
        workers = [self.start(model, name=names[i] if names else None, wait=False,
                              extra_env=extra_env) for i, model in enumerate(models)]
        for worker in workers:
            self.wait_ready(worker)
        return workers

    def record(self, worker: WorkerProcess) -> dict[str, str]:
        """The worker's registry hash in Redis."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        fields: dict[str, str] = client.hgetall(f"{self.prefix}:worker:{worker.name}")
        return fields

    def wait_ready(self, worker: WorkerProcess, timeout_s: float = 120.0) -> None:
        """Block until the worker says ready, or fail with its log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited with {worker.proc.returncode}"
                                     f":\n{worker.log_text()[-4000:]}")
            if self.record(worker).get("ready") == "1":
                return
            time.sleep(0.1)
        raise AssertionError(f"worker {worker.name} not ready after {timeout_s}s:\n"
                             f"{worker.log_text()[-4000:]}")

    def stop_all(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL)."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.proc.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
