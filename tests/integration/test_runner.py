"""The job runner in process, on a real Redis and a real local store, with fake renderers.

Renders are faked (the runner's contract is about records, storage and the hand-off,
not pixels); the job records, Lua scripts, object writes and Celery messages are real.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

import worker.execute as execute
from common.errors import StorageError, WorkerBroken
from common.job import JobKind, JobSpec, ModelType, new_job
from common.jobstore import JobStore
from common.layout import image_key, manifest_key
from common.queueing import make_celery, publish_jobs, queue_name
from common.settings import Settings
from common.status import JobStatus
from common.storage import LocalStore
from worker.execute import CurrentJob, JobRunner
from worker.liveness import Liveness, WorkerRegistry
from worker.results import RenderInputs, RenderResult
from worker.watchdog import Stall
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration


class FakeRenderer:
    """Counts renders, lets a test hook in, returns a small gradient."""

    def __init__(self, before: Callable[[JobSpec], None] = lambda spec: None) -> None:
        self.before = before
        self.rendered: list[str] = []

    def render(self, job: JobSpec, inputs: RenderInputs,
               on_step: Callable[[int, int], bool]) -> RenderResult:
        self.before(job)
        self.rendered.append(job.job_id)
        on_step(1, 1)
        pixels = torch.linspace(-1, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
        return RenderResult(pixels=pixels, latents=torch.zeros(1, 16, 2, 2),
                            timings_s={"denoise": 0.001, "vae_decode": 0.001}, steps_run=1)

    def describe(self) -> dict[str, Any]:
        return {"type": "turbo", "dtype": "bfloat16"}


class FlakyStore(LocalStore):
    """A local store whose PUTs fail ``failures`` times, or wait for ``gate`` first."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        super().__init__(root)
        self.failures = failures
        self.gate = threading.Event()
        self.gate.set()
        self.gate_timed_out = False
        self.puts: list[str] = []

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if not self.gate.wait(5):
            self.gate_timed_out = True
        if self.failures:
            self.failures -= 1
            raise StorageError(f"injected outage writing {key}")
        self.puts.append(key)
        super().put(key, data, content_type)


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    redis.Redis.from_url(redis_server.url).flushall()
    return Settings.from_env({"ZQ_REDIS_URL": redis_server.url,
                              "ZQ_KEY_PREFIX": f"r{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def jobs(settings: Settings) -> Iterator[JobStore]:
    store = JobStore.from_url(settings.redis_url, settings.key_prefix)
    yield store
    store.redis.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "STORE_RETRY_DELAYS_S", (0.01, 0.01, 0.01))


def make_runner(settings: Settings, jobs: JobStore, store: LocalStore,
                renderer: FakeRenderer) -> JobRunner:
    return JobRunner(settings, "runner@test", jobs, store, make_celery(settings), renderer)


def submitted(jobs: JobStore, count: int = 1) -> list[JobSpec]:
    specs = [new_job(JobKind.GENERATE, prompt=f"p{i}", width=16, height=16, seed=i)
             for i in range(count)]
    for spec in specs:
        jobs.submit(spec)
        jobs.mark_published(spec)
    return specs


def queued_messages(jobs: JobStore) -> int:
    """Messages waiting in the turbo queue, priority sub-lists included."""
    keys = jobs.redis.keys(queue_name(ModelType.TURBO) + "*")
    return sum(int(jobs.redis.llen(key)) for key in keys)


def test_next_job_renders_while_the_last_one_is_stored(settings: Settings, jobs: JobStore,
                                                       tmp_path: Path) -> None:
    store = FlakyStore(tmp_path)
    store.gate.clear()  # the first job's PUTs wait until the second job is rendering
    renderer = FakeRenderer(lambda spec: store.gate.set() if renderer.rendered else None)
    runner = make_runner(settings, jobs, store, renderer)
    first, second = submitted(jobs, 2)
    assert runner.run(first.job_id) == "handed_off"
    assert runner.current.held() == [first.job_id]  # its lease is still this worker's
    assert jobs.get(first.job_id).status is JobStatus.RUNNING
    assert runner.run(second.job_id) == "handed_off"
    assert runner.close(timeout_s=30)
    assert not store.gate_timed_out, "the first job was stored before the second rendered"
    assert runner.current.held() == []
    for spec in (first, second):
        record = jobs.get(spec.job_id)
        assert record.status is JobStatus.SUCCEEDED
        assert record.image == image_key(spec)
        assert store.exists(image_key(spec)) and store.exists(manifest_key(spec))
    # Image before manifest, job by job, in the order they were rendered.
    assert store.puts == [image_key(first), manifest_key(first),
                          image_key(second), manifest_key(second)]


def test_a_short_storage_outage_costs_retries_not_a_second_render(
        settings: Settings, jobs: JobStore, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path, failures=2)
    renderer = FakeRenderer()
    runner = make_runner(settings, jobs, store, renderer)
    (spec,) = submitted(jobs)
    runner.run(spec.job_id)
    assert runner.close(timeout_s=30)
    record = jobs.get(spec.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.deliveries == 1
    assert renderer.rendered == [spec.job_id]


def test_a_long_storage_outage_puts_the_job_back_to_retry_later(
        settings: Settings, jobs: JobStore, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path, failures=100)
    runner = make_runner(settings, jobs, store, FakeRenderer())
    (spec,) = submitted(jobs)
    before = queued_messages(jobs)
    runner.run(spec.job_id)
    assert runner.close(timeout_s=30)
    record = jobs.get(spec.job_id)
    assert record.status is JobStatus.QUEUED and record.image is None
    assert not store.exists(manifest_key(spec))
    # Not held by the worker, not counted towards poison, not run before its time.
    assert record.deliveries == 0 and record.infra_retries == 1
    assert record.infra_error is not None and "StorageError" in record.infra_error
    assert record.not_before is not None and record.not_before > time.time()
    assert queued_messages(jobs) == before  # the retry schedule publishes it when due
    assert runner.current.held() == []
    time.sleep(max(0.0, record.not_before - time.time()) + 0.05)
    assert jobs.due_retries(ModelType.TURBO) == [spec.job_id]


@pytest.mark.parametrize(("policy", "ends"), [("fail", JobStatus.FAILED),
                                              ("wait", JobStatus.QUEUED)])
def test_past_the_retry_budget_the_job_fails_or_waits_per_setting(
        settings: Settings, jobs: JobStore, tmp_path: Path, policy: str,
        ends: JobStatus) -> None:
    settings = replace(settings, infra_retry_budget_s=5, infra_outage=policy)
    runner = make_runner(settings, jobs, FlakyStore(tmp_path, failures=100), FakeRenderer())
    (spec,) = submitted(jobs)
    runner.run(spec.job_id)
    assert runner.close(timeout_s=30)
    assert jobs.get(spec.job_id).status is JobStatus.QUEUED  # within the budget: retry
    # The outage began long ago: the budget is spent.
    jobs.redis.hset(jobs.job_key(spec.job_id), mapping={"infra_since": time.time() - 6,
                                                         "not_before": 0})
    runner = make_runner(settings, jobs, FlakyStore(tmp_path, failures=100), FakeRenderer())
    runner.run(spec.job_id)
    assert runner.close(timeout_s=30)
    record = jobs.get(spec.job_id)
    assert record.status is ends
    if ends is JobStatus.FAILED:
        assert record.error_code == "storage_unavailable"
        assert record.error is not None and "ZQ_INFRA_RETRY_BUDGET_S=5" in record.error
    else:
        assert record.infra_retries == 2 and record.deliveries == 0


def test_a_changed_model_requeues_the_job_and_stops_the_runner(
        settings: Settings, jobs: JobStore, tmp_path: Path) -> None:
    def upcast(spec: JobSpec) -> None:
        raise WorkerBroken("the loaded model changed during a test: vae: bf16 -> fp32")

    runner = make_runner(settings, jobs, LocalStore(tmp_path), FakeRenderer(upcast))
    (spec,) = submitted(jobs)
    with pytest.raises(WorkerBroken):
        runner.run(spec.job_id)
    record = jobs.get(spec.job_id)
    assert record.status is JobStatus.QUEUED and record.deliveries == 1
    assert queued_messages(jobs) == 1
    assert runner.current.held() == []
    assert runner.close(timeout_s=10)


def test_a_recovered_job_goes_to_the_front_of_its_queue(settings: Settings,
                                                        jobs: JobStore) -> None:
    app = make_celery(settings)
    waiting, lost = submitted(jobs, 2)
    publish_jobs(app, jobs, [waiting.job_id])
    jobs.claim(lost, "dead@test", 30, 3)
    jobs.redis.delete(f"{jobs.prefix}:lease:{lost.job_id}")  # its worker died
    registry = WorkerRegistry(jobs, "alive@test", ModelType.TURBO, 30)
    liveness = Liveness(jobs, app, ModelType.TURBO, "alive@test", CurrentJob(), registry, 3)
    assert liveness.recover() == [lost.job_id]
    # kombu keeps one list per priority; the bare queue name is polled first.
    front = [json.loads(m) for m in jobs.redis.lrange(queue_name(ModelType.TURBO), 0, -1)]
    assert [message["headers"]["kwargsrepr"] for message in front] == [
        repr({"job_id": lost.job_id})]
    assert queued_messages(jobs) == 2  # the job that was waiting is still queued, behind it


def test_a_redis_blip_while_finishing_is_retried_not_a_job_failure(
        settings: Settings, jobs: JobStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    finish, calls = jobs.finish, []

    def flaky_finish(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("Redis is restarting")
        return finish(*args, **kwargs)

    monkeypatch.setattr(jobs, "finish", flaky_finish)
    runner = make_runner(settings, jobs, LocalStore(tmp_path), FakeRenderer())
    (spec,) = submitted(jobs)
    runner.run(spec.job_id)
    assert runner.close(timeout_s=30)
    record = jobs.get(spec.job_id)
    assert (record.status, record.error_code, record.deliveries) == (
        JobStatus.SUCCEEDED, None, 1)
    assert len(calls) == 2


def test_the_watchdog_watches_a_job_inside_the_model_only(settings: Settings, jobs: JobStore,
                                                         tmp_path: Path) -> None:
    # Any watched job is "stalled" after a nanosecond: a None below means unwatched.
    seen: dict[str, Stall | None] = {}

    class WatchedStore(FlakyStore):
        def get(self, key: str, max_bytes: int | None = None) -> bytes:
            seen["loading inputs"] = runner.current.progress.stalled(1e-9)
            return super().get(key, max_bytes)

    store = WatchedStore(tmp_path)
    store.put("uploads/source.png", _png(), "image/png")
    store.gate.clear()  # storing the result waits until the test opens the gate
    renderer = FakeRenderer(
        lambda spec: seen.update(rendering=runner.current.progress.stalled(1e-9)))
    runner = make_runner(settings, jobs, store, renderer)
    spec = new_job(JobKind.EDIT, prompt="watched", source_image="uploads/source.png", seed=1)
    jobs.submit(spec)
    jobs.mark_published(spec)
    assert runner.current.progress.stalled(1e-9) is None  # idle
    assert runner.run(spec.job_id) == "handed_off"
    assert seen["loading inputs"] is None
    rendering = seen["rendering"]
    assert rendering is not None and (rendering.job_id, rendering.phase) == (
        spec.job_id, "rendering")
    assert runner.current.progress.phase == "step 1 of 1"  # the step was progress
    assert runner.current.held() == [spec.job_id]  # still being stored...
    assert runner.current.progress.stalled(1e-9) is None  # ...but no longer watched
    store.gate.set()
    assert runner.close(timeout_s=30)
    assert jobs.get(spec.job_id).status is JobStatus.SUCCEEDED


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(out, format="PNG")
    return out.getvalue()
