"""Kills and shutdowns while a rendered job is being stored (the hand-off) lose nothing.

Storage is reached through a proxy that can stall, so a test can hold a worker exactly
where the GPU has moved on and the finisher thread is still writing the result.
"""

from __future__ import annotations

import io
import signal
import time

import pytest
from PIL import Image

from common.job import ModelType
from common.status import JobRecord, JobStatus
from producer.client import Client, JobHandle
from tests.integration.cluster import Cluster, WorkerProcess
from tests.integration.conftest import stored_names
from tests.services.stall_proxy import StallProxy

pytestmark = pytest.mark.integration
QUICK = {"width": 64, "height": 64, "steps": 2}


def wait_in_handoff(cluster: Cluster, worker: WorkerProcess, handle: JobHandle,
                    timeout_s: float = 60.0) -> JobRecord:
    """Wait until the job is rendered (every step done) and its worker has moved on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = handle.status()
        rendered = record.status is JobStatus.RUNNING and record.step == record.total_steps > 0
        if rendered and cluster.record(worker).get("current_job") == "":
            return record
        time.sleep(0.05)
    raise AssertionError(f"job never reached the hand-off: {handle.status()}\n"
                         f"{worker.log_text()[-3000:]}")


def stall_while_storing(cluster: Cluster, client: Client, proxy: StallProxy, name: str,
                        prompt: str) -> tuple[WorkerProcess, JobHandle, JobRecord]:
    """A worker whose storage stalls, and a job it has rendered but cannot store yet."""
    worker = cluster.start(ModelType.TURBO, name=name,
                           extra_env={"ZQ_S3_ENDPOINT_URL": proxy.url})
    proxy.stall()
    job = client.generate(prompt, **QUICK)
    return worker, job, wait_in_handoff(cluster, worker, job)


def test_worker_killed_while_storing_loses_nothing_and_runs_the_job_once_more(
        cluster: Cluster, client: Client, proxy: StallProxy) -> None:
    first, job, held = stall_while_storing(cluster, client, proxy, "first@test",
                                           "stored by someone else")
    assert held.worker == "first@test" and held.image is None
    time.sleep(1.0)  # several lease renewals: the finisher's job keeps its lease
    assert job.status().status is JobStatus.RUNNING
    first.kill(signal.SIGKILL)
    proxy.resume()
    cluster.start(ModelType.TURBO, name="second@test")
    record = job.wait(120)
    assert record.status is JobStatus.SUCCEEDED
    assert record.worker == "second@test" and record.deliveries == 2
    assert client.manifest(job.job_id)["worker"] == "second@test"
    assert stored_names(client, record) == ["image.png", "manifest.json"]
    with Image.open(io.BytesIO(client.result(job.job_id))) as image:
        assert image.size == (64, 64)


def test_warm_shutdown_stores_the_rendered_job_before_exiting(
        cluster: Cluster, client: Client, proxy: StallProxy) -> None:
    worker, job, _ = stall_while_storing(cluster, client, proxy, "draining@test",
                                         "finish me first")
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(2.0)
    assert worker.proc.poll() is None, "the worker exited with a rendered job unstored"
    proxy.resume()
    assert worker.proc.wait(60) == 0
    record = job.status()
    assert record.status is JobStatus.SUCCEEDED
    assert record.worker == "draining@test" and record.deliveries == 1
    assert stored_names(client, record) == ["image.png", "manifest.json"]
