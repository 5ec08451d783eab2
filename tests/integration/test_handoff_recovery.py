"""Kills and shutdowns while a rendered job is being stored (the hand-off) lose nothing.

Storage is reached through a proxy that can stall, so a test can hold a worker exactly
where the GPU has moved on and the finisher thread is still writing the result.
"""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from PIL import Image

from common.job import ModelType
from common.layout import job_prefix
from common.status import JobRecord, JobStatus
from producer.client import Client, JobHandle
from tests.integration.cluster import Cluster, WorkerProcess
from tests.services.stall_proxy import StallProxy

pytestmark = pytest.mark.integration
QUICK = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[StallProxy]:
    endpoint = urlparse(cluster.env["ZQ_S3_ENDPOINT_URL"])
    server = StallProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80)).start()
    yield server
    server.close()


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


def stored_names(client: Client, record: JobRecord) -> list[str]:
    store = client.store
    listing = store.client.list_objects_v2(  # type: ignore[attr-defined]
        Bucket=store.bucket, Prefix=store._key(job_prefix(record.spec)))  # type: ignore[attr-defined]
    return sorted(item["Key"].rsplit("/", 1)[1] for item in listing.get("Contents", []))


def test_worker_killed_while_storing_loses_nothing_and_runs_the_job_once_more(
        cluster: Cluster, client: Client, proxy: StallProxy) -> None:
    first = cluster.start(ModelType.TURBO, name="first@test",
                          extra_env={"ZQ_S3_ENDPOINT_URL": proxy.url})
    proxy.stall()
    job = client.generate("stored by someone else", **QUICK)
    held = wait_in_handoff(cluster, first, job)
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
    worker = cluster.start(ModelType.TURBO, name="draining@test",
                           extra_env={"ZQ_S3_ENDPOINT_URL": proxy.url})
    proxy.stall()
    job = client.generate("finish me first", **QUICK)
    wait_in_handoff(cluster, worker, job)
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(2.0)
    assert worker.proc.poll() is None, "the worker exited with a rendered job unstored"
    proxy.resume()
    assert worker.proc.wait(60) == 0
    record = job.status()
    assert record.status is JobStatus.SUCCEEDED
    assert record.worker == "draining@test" and record.deliveries == 1
    assert stored_names(client, record) == ["image.png", "manifest.json"]
