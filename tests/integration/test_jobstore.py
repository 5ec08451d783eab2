"""Job records on a real Redis: idempotent submit, parent/child hand-off, claims and leases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from common.errors import JobConflict, ParentFailed
from common.job import JobKind, JobSpec, ModelType, new_job
from common.jobstore import JobStore
from common.status import JobStatus
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def jobs(redis_server: RedisServer) -> Iterator[JobStore]:
    """A job store under a fresh key prefix."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield JobStore(client, prefix=f"t{uuid.uuid4().hex[:8]}")
    client.close()


def generate(**fields: object) -> JobSpec:
    return new_job(JobKind.GENERATE, prompt="p", width=32, height=32, **fields)


def edit_of(parent: JobSpec, **fields: object) -> JobSpec:
    return new_job(JobKind.EDIT, prompt="e", parent_id=parent.job_id,
                   conversation_id=parent.conversation_id, **fields)


def test_same_id_same_spec_is_one_job_and_another_spec_conflicts(jobs: JobStore) -> None:
    spec = generate(job_id="sku-1", seed=1)
    assert jobs.submit(spec).created
    again = jobs.submit(spec)
    assert not again.created and again.status is JobStatus.QUEUED
    with pytest.raises(JobConflict, match="sku-1"):
        jobs.submit(generate(job_id="sku-1", seed=2))
    assert jobs.needs_publish(ModelType.TURBO) == ["sku-1"]
    assert jobs.is_unpublished(spec)
    jobs.mark_published(spec)
    assert jobs.needs_publish(ModelType.TURBO) == []
    assert not jobs.is_unpublished(spec)


def test_child_waits_then_is_released_with_lineage(jobs: JobStore) -> None:
    parent = generate()
    child = edit_of(parent)
    grandchild = edit_of(child)
    jobs.submit(parent)
    assert jobs.submit(child).status is JobStatus.WAITING
    assert jobs.submit(grandchild).status is JobStatus.WAITING
    assert (jobs.get(grandchild.job_id).root_id, jobs.get(grandchild.job_id).turn) == (
        parent.job_id, 2)
    assert jobs.claim(parent, "w1", 10, 3).outcome == "claimed"
    assert jobs.claim(child, "w1", 10, 3).outcome == "waiting"
    released = jobs.finish(parent, JobStatus.SUCCEEDED, image="k")
    assert released == [child.job_id]
    assert jobs.release(child)
    assert jobs.get(child.job_id).status is JobStatus.QUEUED
    assert jobs.get(grandchild.job_id).status is JobStatus.WAITING
    # A child submitted after its parent succeeded is queued at once.
    assert jobs.submit(edit_of(parent)).status is JobStatus.QUEUED


def test_finished_job_is_finished_once(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    jobs.claim(spec, "w1", 10, 3)
    assert jobs.finish(spec, JobStatus.SUCCEEDED, image="a") == []
    assert jobs.finish(spec, JobStatus.FAILED, error="late") is None
    assert jobs.get(spec.job_id).status is JobStatus.SUCCEEDED
    assert jobs.claim(spec, "w2", 10, 3).outcome == "done"


def test_failure_cascades_to_every_waiting_descendant(jobs: JobStore) -> None:
    parent = generate()
    child = edit_of(parent)
    grandchild = edit_of(child)
    for spec in (parent, child, grandchild):
        jobs.submit(spec)
    jobs.claim(parent, "w1", 10, 3)
    children = jobs.finish(parent, JobStatus.FAILED, error="boom")
    failed = jobs.fail_descendants(children or [], ParentFailed("parent failed: boom"))
    assert sorted(failed) == sorted([child.job_id, grandchild.job_id])
    for spec in (child, grandchild):
        record = jobs.get(spec.job_id)
        assert (record.status, record.error_code) == (JobStatus.FAILED, "parent_failed")


def test_running_job_with_a_live_lease_is_not_claimed_twice(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    claimed = jobs.claim(spec, "w1", 30, 3)
    assert claimed.outcome == "claimed"
    # The record comes back as the claim left it: no second read needed.
    assert claimed.record == jobs.get(spec.job_id)
    assert claimed.record is not None and claimed.record.spec == spec
    assert (claimed.record.status, claimed.record.worker, claimed.record.deliveries) == (
        JobStatus.RUNNING, "w1", 1)
    busy = jobs.claim(spec, "w2", 30, 3)
    assert (busy.outcome, busy.record) == ("busy", None)
    assert list(jobs.orphaned(ModelType.TURBO)) == []


def test_expired_lease_makes_the_job_an_orphan_to_requeue(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    jobs.claim(spec, "w1", 30, 3)
    jobs.redis.delete(f"{jobs.prefix}:lease:{spec.job_id}")  # the worker died
    assert list(jobs.orphaned(ModelType.TURBO)) == [spec.job_id]
    assert jobs.requeue(spec)
    assert jobs.get(spec.job_id).status is JobStatus.QUEUED
    assert spec.job_id in jobs.needs_publish(ModelType.TURBO)
    assert jobs.claim(spec, "w2", 30, 3).outcome == "claimed"
    assert jobs.get(spec.job_id).deliveries == 2


def test_deliveries_beyond_the_limit_are_poison(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    assert jobs.claim(spec, "w1", 30, 1).outcome == "claimed"
    jobs.redis.delete(f"{jobs.prefix}:lease:{spec.job_id}")
    assert jobs.claim(spec, "w2", 30, 1).outcome == "poison"


def test_cancel_queued_ends_it_and_its_waiting_children(jobs: JobStore) -> None:
    parent = generate()
    child = edit_of(parent)
    jobs.submit(parent)
    jobs.submit(child)
    found, children = jobs.cancel(parent.job_id)
    assert (found, children) == (JobStatus.QUEUED, [child.job_id])
    assert jobs.get(parent.job_id).status is JobStatus.CANCELLED
    assert jobs.claim(parent, "w1", 30, 3).outcome == "done"
    assert jobs.needs_publish(ModelType.TURBO) == []


def test_cancel_running_sets_the_flag_seen_at_the_next_step(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    jobs.claim(spec, "w1", 30, 3)
    assert not jobs.report_progress(spec.job_id, 1, 9)
    assert jobs.cancel(spec.job_id) == (JobStatus.RUNNING, [])
    assert jobs.report_progress(spec.job_id, 2, 9)
    record = jobs.get(spec.job_id)
    assert (record.status, record.step, record.total_steps) == (JobStatus.RUNNING, 2, 9)
