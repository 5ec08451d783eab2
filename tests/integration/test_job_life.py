"""The life of a job in process: the real runner, scripts and store, a broker in memory.

Fast (no worker process, no Celery): ``worker.inprocess`` queues messages in memory and
drains them through a ``JobRunner`` with a fake renderer, on a real Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from common.errors import InputImageError
from common.job import JobKind, JobSpec, ModelType, new_job
from common.jobstore import JobStore
from common.queueing import publish_specs
from common.settings import Settings
from common.status import JobStatus
from common.storage import LocalStore
from tests.integration.test_runner import FakeRenderer
from worker.execute import JobRunner
from worker.inprocess import LocalQueue, drain
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration
WORKER = "inprocess@test"


@pytest.fixture(params=[0, 2], ids=["stored-inline", "handed-off"])
def settings(redis_server: RedisServer, request: pytest.FixtureRequest) -> Settings:
    """Both ways a runner stores results: on its own thread, or handed to the finisher."""
    redis.Redis.from_url(redis_server.url).flushall()
    base = Settings.from_env({"ZQ_REDIS_URL": redis_server.url,
                              "ZQ_KEY_PREFIX": f"l{uuid.uuid4().hex[:8]}"})
    return replace(base, handoff_depth=request.param)


@pytest.fixture
def jobs(settings: Settings) -> Iterator[JobStore]:
    """The job store, with this runner's registry record (where ``jobs_done`` counts)."""
    store = JobStore.from_url(settings.redis_url, settings.key_prefix)
    store.redis.hset(store.worker_key(WORKER), "jobs_done", 0)
    yield store
    store.redis.close()


@pytest.fixture
def queue() -> LocalQueue:
    """The broker, in memory."""
    return LocalQueue()


def runner_for(settings: Settings, jobs: JobStore, tmp_path: Path, queue: LocalQueue,
               renderer: FakeRenderer, model: ModelType | None = None) -> JobRunner:
    """A runner publishing into ``queue``."""
    return JobRunner(settings, WORKER, jobs, LocalStore(tmp_path / "store"), queue, renderer,
                     model=model)


def submit(jobs: JobStore, queue: LocalQueue, spec: JobSpec) -> JobSpec:
    """What ``Client.submit`` does, into the in-memory queue."""
    if jobs.submit(spec).unpublished:
        publish_specs(queue, jobs, [spec])
    return spec


def conversation(jobs: JobStore, queue: LocalQueue) -> list[JobSpec]:
    """Three turns submitted at once: a draft, an edit of it, an HD redraw of the edit."""
    draft = submit(jobs, queue, new_job(JobKind.GENERATE, prompt="a city", width=16,
                                        height=16, seed=1))
    edit = submit(jobs, queue, new_job(JobKind.EDIT, prompt="neon", parent_id=draft.job_id,
                                       conversation_id=draft.conversation_id, seed=2))
    hd = submit(jobs, queue, new_job(JobKind.REFINE, prompt="hd", parent_id=edit.job_id,
                                     conversation_id=draft.conversation_id, seed=3))
    return [draft, edit, hd]


def test_a_conversation_runs_turn_by_turn_as_each_parent_ends(
        settings: Settings, jobs: JobStore, queue: LocalQueue, tmp_path: Path) -> None:
    renderer = FakeRenderer()
    turns = conversation(jobs, queue)
    assert queue.sent == [(turns[0].job_id, turns[0].priority)]  # the others wait

    ran = drain(runner_for(settings, jobs, tmp_path, queue, renderer), queue)
    assert [job_id for job_id, _ in ran] == [t.job_id for t in turns]
    assert renderer.rendered == [t.job_id for t in turns]
    records = [jobs.get(t.job_id) for t in turns]
    assert all(r.status is JobStatus.SUCCEEDED for r in records)
    assert [r.turn for r in records] == [0, 1, 2]
    assert all((r.step, r.total_steps) == (1, 1) for r in records)  # the last step, always
    assert [job_id for job_id, _ in queue.sent] == [t.job_id for t in turns]  # each once
    assert jobs.redis.hget(jobs.worker_key(WORKER), "jobs_done") == "3"


def test_a_failed_turn_fails_the_turns_after_it_without_running_them(
        settings: Settings, jobs: JobStore, queue: LocalQueue, tmp_path: Path) -> None:
    def broken(spec: JobSpec) -> None:
        raise InputImageError("the parent's picture is unreadable")

    renderer = FakeRenderer(before=broken)
    draft, edit, hd = conversation(jobs, queue)
    ran = drain(runner_for(settings, jobs, tmp_path, queue, renderer), queue)
    assert ran == [(draft.job_id, "failed")]
    assert [jobs.get(j.job_id).status for j in (draft, edit, hd)] == [JobStatus.FAILED] * 3
    assert jobs.get(hd.job_id).error_code == "parent_failed"
    assert len(queue) == 0 and [job_id for job_id, _ in queue.sent] == [draft.job_id]


def test_the_most_urgent_message_runs_first(
        settings: Settings, jobs: JobStore, queue: LocalQueue, tmp_path: Path) -> None:
    bulk = [submit(jobs, queue, new_job(JobKind.GENERATE, prompt=f"bulk {i}", width=16,
                                        height=16, priority=1, seed=i)) for i in range(3)]
    urgent = submit(jobs, queue, new_job(JobKind.GENERATE, prompt="now", width=16,
                                         height=16, priority=9, seed=9))
    ran = drain(runner_for(settings, jobs, tmp_path, queue, FakeRenderer()), queue)
    assert [job_id for job_id, _ in ran] == [urgent.job_id, *(b.job_id for b in bulk)]


def test_a_job_of_another_model_is_sent_on_not_run(
        settings: Settings, jobs: JobStore, queue: LocalQueue, tmp_path: Path) -> None:
    renderer = FakeRenderer()
    base = submit(jobs, queue, new_job(JobKind.GENERATE, prompt="slow", width=16, height=16,
                                       model="base", seed=4))
    turbo_runner = runner_for(settings, jobs, tmp_path, queue, renderer, ModelType.TURBO)
    assert turbo_runner.run(str(queue.take())) == "wrong_model"
    assert renderer.rendered == [] and jobs.get(base.job_id).status is JobStatus.QUEUED
    assert jobs.get(base.job_id).deliveries == 0  # refused before a delivery is counted
    assert queue.take() == base.job_id  # sent on, for a base worker to take
