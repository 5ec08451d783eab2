"""Cancel, warm weights, and recovery from a worker killed mid-job."""

from __future__ import annotations

import signal
import time

import pytest

from common.job import ModelType
from common.layout import job_prefix
from common.queueing import make_celery, publish
from common.settings import Settings
from common.status import JobRecord, JobStatus
from producer.client import Client, JobHandle
from tests.integration.cluster import Cluster
from tests.integration.conftest import stored_names

pytestmark = pytest.mark.integration
# A job slow enough on the tiny model (~0.05 s a step) to be caught mid-way.
SLOW = {"width": 512, "height": 512, "steps": 150}


def wait_for(handle: JobHandle, predicate: object, timeout_s: float = 60.0) -> JobRecord:
    """Poll the job until ``predicate(record)`` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = handle.status()
        if predicate(record):  # type: ignore[operator]
            return record
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; last record {handle.status()}")


def test_cancelled_queued_job_never_runs(cluster: Cluster, client: Client) -> None:
    doomed = client.generate("never drawn", width=32, height=32)
    assert client.cancel(doomed.job_id) is JobStatus.CANCELLED
    cluster.start(ModelType.TURBO)
    after = client.generate("drawn", width=32, height=32)
    assert after.wait(60).status is JobStatus.SUCCEEDED
    record = doomed.status()
    assert record.status is JobStatus.CANCELLED
    assert record.started_at is None and record.deliveries == 0
    assert not client.store.exists(f"{job_prefix(record.spec)}/manifest.json")


def test_running_job_stops_at_its_next_step(cluster: Cluster, client: Client) -> None:
    worker = cluster.start(ModelType.TURBO)
    slow = client.generate("slow", **SLOW)
    wait_for(slow, lambda r: r.step >= 2)
    assert client.cancel(slow.job_id) is JobStatus.RUNNING
    record = slow.wait(60)
    assert record.status is JobStatus.CANCELLED
    assert record.error_code == "cancelled"
    assert record.step < SLOW["steps"]
    assert record.image is None
    assert client.generate("next", width=32, height=32).wait(60).status is JobStatus.SUCCEEDED
    assert worker.proc.poll() is None


def test_many_jobs_load_the_model_once(cluster: Cluster, client: Client) -> None:
    worker = cluster.start(ModelType.TURBO)
    handles = [client.generate(f"prompt {i % 2}", width=32, height=32) for i in range(6)]
    assert all(h.wait(60).status is JobStatus.SUCCEEDED for h in handles)
    # The finisher thread counts a job just after it ends: poll briefly for the last one.
    deadline = time.monotonic() + 10
    while cluster.record(worker)["jobs_done"] != "6" and time.monotonic() < deadline:
        time.sleep(0.05)
    record = cluster.record(worker)
    assert record["model_loads"] == "1"
    assert record["jobs_done"] == "6"


def test_killed_worker_job_completes_once_on_a_restarted_worker(cluster: Cluster,
                                                                client: Client) -> None:
    first = cluster.start(ModelType.TURBO, name="first@test")
    slow = client.generate("interrupted", **SLOW)
    wait_for(slow, lambda r: r.step >= 2)
    first.kill(signal.SIGKILL)
    # Nothing else runs the job while its worker is gone.
    assert slow.status().status is JobStatus.RUNNING
    killed_at = time.monotonic()
    cluster.start(ModelType.TURBO, name="second@test")
    record = slow.wait(120)
    recovery_s = time.monotonic() - killed_at
    assert record.status is JobStatus.SUCCEEDED
    assert record.worker == "second@test"
    assert record.deliveries == 2
    # Recovery came from the lease, long before Redis would redeliver the message.
    assert recovery_s < Settings.from_env(cluster.env).visibility_timeout_s / 10
    assert stored_names(client, record) == ["image.png", "manifest.json"]


def test_job_running_on_one_worker_is_not_run_by_another(cluster: Cluster,
                                                          client: Client) -> None:
    workers = cluster.start_many(ModelType.TURBO, ModelType.TURBO, names=["w0@test", "w1@test"])
    # Long enough to still be running when the duplicate arrives; cancelled at the end.
    job = client.generate("only once", width=1024, height=1024, steps=150)
    running = wait_for(job, lambda r: r.step >= 1)
    busy = next(w for w in workers if w.name == running.worker)
    idle = next(w for w in workers if w is not busy)
    # A duplicate message, as a Redis redelivery would produce, reaches the idle worker.
    publish(make_celery(Settings.from_env(cluster.env)), running.spec)
    deadline = time.monotonic() + 30
    while "not run here: busy" not in idle.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "not run here: busy" in idle.log_text()
    client.cancel(job.job_id)
    record = job.wait(60)
    assert record.status is JobStatus.CANCELLED
    assert record.worker == busy.name and record.deliveries == 1
    assert cluster.record(idle)["jobs_done"] == "0"
    assert busy.proc.poll() is None and idle.proc.poll() is None


def test_job_that_keeps_killing_workers_is_parked(cluster: Cluster, client: Client) -> None:
    limit = {"ZQ_MAX_DELIVERIES": "1"}
    first = cluster.start(ModelType.TURBO, name="victim@test", extra_env=limit)
    poison = client.generate("kills workers", **SLOW)
    wait_for(poison, lambda r: r.step >= 1)
    first.kill(signal.SIGKILL)
    cluster.start(ModelType.TURBO, name="survivor@test", extra_env=limit)
    record = poison.wait(60)
    assert record.status is JobStatus.FAILED
    assert record.error_code == "poison"
    assert "delivered 1 times" in (record.error or "")
