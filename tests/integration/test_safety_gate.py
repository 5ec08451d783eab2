"""The safety gate in real worker processes: tiny models, the tiny classifier, real S3.

The tiny classifier scores "nsfw" 0.5 on every image, so a threshold of 0.5 blocks every
image and 0.6 passes every image (worker.tiny_safety).
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

from common.job import JobSpec, ModelType
from common.jobstore import JobStore
from common.queueing import make_celery
from common.settings import Settings
from common.status import JobStatus
from common.storage import LocalStore
from producer.client import Client
from tests.integration.cluster import Cluster, WorkerProcess
from tests.integration.conftest import stored_names
from worker.execute import JobRunner
from worker.safety import SafetyGuard, Verdict
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration

SMALL = {"width": 32, "height": 32, "steps": 2}


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny safety classifier, built offline by the project's own code."""
    from worker.tiny_safety import make_tiny_safety_classifier

    return make_tiny_safety_classifier(tmp_path_factory.mktemp("safety") / "classifier")


def worker_audit(worker: WorkerProcess, job_id: str, timeout_s: float = 10.0) -> list[str]:
    """The job's audit events in order, once the worker logged how it ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = [json.loads(line) for line in worker.log_text().splitlines()
                  if line.startswith("{")]
        mine = [event for event in events if event["job_id"] == job_id]
        if mine and mine[-1]["event"] in ("succeeded", "failed", "cancelled"):
            return mine
        assert time.monotonic() < deadline, mine
        time.sleep(0.05)


def scrape(cluster: Cluster, worker: WorkerProcess) -> str:
    record = cluster.record(worker)
    url = f"http://{record['metrics_addr']}:{record['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_blocked_jobs_publish_nothing_and_passing_jobs_succeed(
        cluster: Cluster, client: Client, tiny_classifier: Path) -> None:
    gate = {"ZQ_SAFETY_MODEL": str(tiny_classifier), "ZQ_SAFETY_LABELS": "nsfw",
            "ZQ_SAFETY_PROMPT_BLOCKLIST": "forbidden words"}
    blocking = cluster.start(ModelType.TURBO, wait=False,
                             extra_env={**gate, "ZQ_SAFETY_THRESHOLD": "0.5"})
    passing = cluster.start(ModelType.BASE, wait=False,
                            extra_env={**gate, "ZQ_SAFETY_THRESHOLD": "0.6"})
    cluster.wait_ready(blocking)
    cluster.wait_ready(passing)

    # The image gate: rendered, then blocked before any write; its child fails with it.
    image_blocked = client.generate("a lighthouse", seed=1, **SMALL)
    child = client.edit("make it green", parent=image_blocked.job_id, seed=2)
    record = image_blocked.wait(120)
    assert (record.status, record.error_code) == (JobStatus.FAILED, "unsafe")
    assert "image safety gate: 'nsfw' scored 0.500" in str(record.error)
    assert "threshold 0.500" in str(record.error)
    assert record.to_public()["error_code"] == "unsafe"  # what a job webhook carries
    assert stored_names(client, record) == []
    assert (child.wait(60).status, client.status(child.job_id).error_code) == (
        JobStatus.FAILED, "parent_failed")
    events = worker_audit(blocking, image_blocked.job_id)
    blocked = next(e for e in events if e["event"] == "blocked")
    assert (blocked["stage"], blocked["label"], blocked["score"], blocked["threshold"]) == (
        "image", "nsfw", 0.5, 0.5)

    # The prompt gate: refused before rendering; no step ever ran.
    prompt_blocked = client.generate("a poster with FORBIDDEN   words", seed=3, **SMALL)
    record = prompt_blocked.wait(120)
    assert (record.status, record.error_code) == (JobStatus.FAILED, "unsafe")
    assert "prompt safety gate: 'blocklist'" in str(record.error)
    assert "forbidden" not in str(record.error)  # which entry matched is the operator's
    assert stored_names(client, record) == []
    events = worker_audit(blocking, prompt_blocked.job_id)
    assert [e["event"] for e in events] == ["started", "blocked", "failed"]
    assert events[1]["detail"] == "matched 'forbidden words'"
    assert "denoise" not in events[2]["timings_s"] and events[2]["steps_run"] == 0

    # Past its threshold the image is published, image and manifest.
    passed = client.generate("a lighthouse", seed=1, model="base", **SMALL)
    record = passed.wait(120)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert len(stored_names(client, record)) == 2
    manifest = json.loads(client.store.get(str(record.manifest)))
    assert "safety_image" in manifest["timings_s"]

    # The worker that blocked both lives on, and counted them.
    assert blocking.proc.poll() is None and passing.proc.poll() is None
    metrics = scrape(cluster, blocking)
    assert 'zq_safety_blocked_total{model="turbo",stage="image"} 1.0' in metrics
    assert 'zq_safety_blocked_total{model="turbo",stage="prompt"} 1.0' in metrics
    assert 'zq_job_phase_seconds_count{model="turbo",phase="safety_image"} 1.0' in metrics
    assert 'zq_job_failures_total{code="unsafe",model="turbo"} 2.0' in metrics, [
        line for line in metrics.splitlines() if line.startswith("zq_job_failures")]


def test_a_gate_that_cannot_work_stops_the_worker_at_boot(
        cluster: Cluster, tiny_classifier: Path) -> None:
    # A label the model does not have would pass every image: refused, exit 78.
    worker = cluster.start(ModelType.TURBO, wait=False, extra_env={
        "ZQ_SAFETY_MODEL": str(tiny_classifier), "ZQ_SAFETY_LABELS": "porn"})
    assert worker.proc.wait(120) == 78
    assert "has no label 'porn'" in worker.log_text()


class CrashingGate:
    """A plug-in gate whose image check fails on every image."""

    def check_prompt(self, spec: JobSpec) -> Verdict:
        return Verdict(False)

    def check_image(self, image: Image.Image, spec: JobSpec) -> Verdict:
        raise RuntimeError("classifier out of memory")


def test_a_gate_that_crashes_on_a_job_fails_it_closed_and_the_runner_goes_on(
        redis_server: RedisServer, tmp_path: Path) -> None:
    from tests.integration.test_runner import FakeRenderer, submitted

    settings = Settings.from_env({"ZQ_REDIS_URL": redis_server.url,
                                  "ZQ_KEY_PREFIX": f"s{uuid.uuid4().hex[:8]}"})
    jobs = JobStore.from_url(settings.redis_url, settings.key_prefix)
    store = LocalStore(tmp_path / "store")
    runner = JobRunner(settings, "runner@test", jobs, store, make_celery(settings),
                       FakeRenderer(), safety=SafetyGuard(CrashingGate(), "crashing"))
    try:
        first, second = submitted(jobs, 2)
        for spec in (first, second):
            runner.run(spec.job_id)
        assert runner.close(10)
        for spec in (first, second):
            record = jobs.get(spec.job_id)
            assert (record.status, record.error_code) == (JobStatus.FAILED, "safety_error")
            assert "classifier out of memory" in str(record.error)
        assert not any(path.is_file() for path in (tmp_path / "store").rglob("*"))
    finally:
        jobs.redis.close()
