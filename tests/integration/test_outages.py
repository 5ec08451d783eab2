"""Outages and ill-timed kills on real workers: nothing is parked as poison or left waiting.

Storage is reached through a proxy that can go down (connections reset and refused), as
an S3 endpoint does during an outage.
"""

from __future__ import annotations

import signal
import time

import pytest

from common.job import ModelType
from common.status import JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster
from tests.services.stall_proxy import StallProxy

pytestmark = pytest.mark.integration
QUICK = {"width": 64, "height": 64, "steps": 2}
OUTAGE_S = 30.0


def test_a_30s_storage_outage_parks_no_job_as_poison_and_all_succeed_after(
        cluster: Cluster, client: Client, proxy: StallProxy) -> None:
    # One delivery allowed: any delivery spent on the outage would park a job as poison.
    worker = cluster.start(ModelType.TURBO, name="outage@test",
                           extra_env={"ZQ_S3_ENDPOINT_URL": proxy.url, "ZQ_MAX_DELIVERIES": "1"})
    proxy.down()
    jobs = [client.generate(f"during the outage {i}", seed=i, **QUICK) for i in range(4)]
    started = time.monotonic()
    retried = set()
    while time.monotonic() - started < OUTAGE_S:
        for job in jobs:
            record = job.status()
            assert not record.status.terminal, f"ended during the outage: {record}"
            if record.infra_retries:
                retried.add(job.job_id)
        time.sleep(0.5)
    proxy.up()
    records = [job.wait(180) for job in jobs]
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 4, records
    assert all(r.deliveries == 1 for r in records)
    # The outage was felt: jobs went back to wait, and the worker served on.
    assert retried and all(r.infra_retries >= 1 for r in records if r.spec.job_id in retried)
    assert worker.proc.poll() is None
    assert "without holding the worker" in worker.log_text()


def test_worker_killed_between_finish_and_publishing_children_loses_no_child(
        cluster: Cluster, client: Client) -> None:
    # The test hook holds the turbo worker after the parent's end is recorded and before
    # it publishes the children that end released.
    finisher = cluster.start(ModelType.TURBO, name="paused@test",
                             extra_env={"ZQ_TEST_PAUSE_AFTER_FINISH_S": "120"})
    editor = cluster.start(ModelType.EDIT, name="editor@test")
    parent = client.generate("a harbour at dusk", **QUICK)
    children = [client.edit(f"variant {i}", parent=parent.job_id, seed=i, **QUICK)
                for i in range(2)]
    assert all(child.status().status is JobStatus.WAITING for child in children)
    deadline = time.monotonic() + 120
    while "test hook: pausing" not in finisher.log_text():
        assert time.monotonic() < deadline, finisher.log_text()[-3000:]
        time.sleep(0.1)
    # Ended and released in one step: the children are queued, though no message is sent.
    assert parent.status().status is JobStatus.SUCCEEDED
    assert all(child.status().status is JobStatus.QUEUED for child in children)
    finisher.kill(signal.SIGKILL)
    for child in children:
        record = child.wait(120)
        assert record.status is JobStatus.SUCCEEDED, record
        assert record.worker == "editor@test" and record.deliveries == 1
    assert editor.proc.poll() is None
