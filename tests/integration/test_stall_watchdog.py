"""The hung-step watchdog on real worker processes: a stuck job ends its worker and is
recovered elsewhere; a slow job that keeps stepping, a long warm-up and idling do not."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from common.job import ModelType
from common.status import JobStatus
from producer.client import Client, JobHandle
from tests.integration.cluster import Cluster, WorkerProcess
from worker.watchdog import EXIT_STALLED

pytestmark = pytest.mark.integration
STALL_S = 3


def probe(worker: WorkerProcess) -> subprocess.CompletedProcess[str]:
    """``zq health`` for the worker, as its pod's liveness probe runs it."""
    return subprocess.run([sys.executable, "-m", "zq", "health", "--model", "turbo"],
                          env={**os.environ, "ZQ_HEALTH_DIR": str(worker.health_dir)},
                          capture_output=True, text=True, timeout=120)


def running_on(handle: JobHandle, worker: WorkerProcess, timeout_s: float = 60) -> float:
    """Wait until ``worker`` has claimed the job; returns the claim's wall-clock time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = handle.status()
        if record.status is JobStatus.RUNNING and record.worker == worker.name:
            assert record.started_at is not None
            return record.started_at
        time.sleep(0.05)
    raise AssertionError(f"job never ran on {worker.name}: {handle.status()}")


def test_a_hung_step_ends_its_worker_and_another_worker_reruns_the_job(
        cluster: Cluster, client: Client) -> None:
    hung = cluster.start(ModelType.TURBO, name="hung@test", extra_env={
        "ZQ_TEST_HANG_AT_STEP": "1", "ZQ_STALL_TIMEOUT_S": str(STALL_S)})
    job = client.generate("hangs in the model", width=64, height=64, steps=4)
    claimed_at = running_on(job, hung)
    assert hung.proc.wait(STALL_S + 30) == EXIT_STALLED
    gave_up_after = time.time() - claimed_at
    # Not before the stall timeout; within it plus a beat (1 s here) and process slack.
    assert STALL_S <= gave_up_after < STALL_S + 15, gave_up_after
    checked = probe(hung)
    assert checked.returncode == 1
    assert checked.stdout.startswith(f"stalled: job {job.job_id} made no progress for "), (
        checked.stdout)
    assert "(last: rendering)" in checked.stdout
    assert f"job {job.job_id} made no progress" in hung.log_text()
    record = job.status()
    # Never failed by the stuck worker: left to lease recovery, step 1 never completed.
    assert (record.status, record.step, record.deliveries) == (JobStatus.RUNNING, 0, 1)
    fields = redis.Redis.from_url(cluster.redis_url, decode_responses=True).hgetall(
        f"{cluster.prefix}:job:{job.job_id}")
    assert fields["stalled_on"] == "hung@test"
    assert fields["stall_reason"].startswith(f"job {job.job_id} made no progress")
    assert cluster.record(hung).get("ready") == "0"

    rescuer = cluster.start(ModelType.TURBO, name="rescuer@test")
    done = job.wait(60)
    assert done.status is JobStatus.SUCCEEDED, done
    assert done.worker == rescuer.name and done.deliveries == 2
    assert rescuer.proc.poll() is None


def test_a_slow_job_that_keeps_stepping_a_long_warm_up_and_idling_are_not_stalls(
        cluster: Cluster, client: Client) -> None:
    stall_s = 2
    # The warm-up renders at 1536 px, far slower than the stall timeout: never watched.
    worker = cluster.start(ModelType.TURBO, name="slow@test", extra_env={
        "ZQ_STALL_TIMEOUT_S": str(stall_s), "ZQ_WARMUP_SIZE_PX": "1536"})
    assert float(cluster.record(worker)["warmup_seconds"]) > stall_s
    time.sleep(stall_s + 2)  # idle for longer than the timeout
    # 768 px: each step well under the timeout even on a slow, loaded CPU (about 0.3 s on
    # a 2-core Xeon, where 1024 px steps came within reach of it: ~2 s), 150 of them well
    # over it on any machine.
    job = client.generate("slow but steady", width=768, height=768, steps=150)
    record = job.wait(600)
    assert record.status is JobStatus.SUCCEEDED, record
    assert record.deliveries == 1 and record.worker == worker.name
    assert record.started_at is not None and record.finished_at is not None
    # The job as a whole ran well past the timeout; only its steps were each shorter.
    assert record.finished_at - record.started_at > 2 * stall_s
    assert worker.proc.poll() is None
    checked = probe(worker)
    assert checked.returncode == 0, checked.stdout
    assert "made no progress" not in worker.log_text()
