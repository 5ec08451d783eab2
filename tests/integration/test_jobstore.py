"""Job records on a real Redis: idempotent submit, parent/child hand-off, claims and leases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from common.batches import BatchRow
from common.errors import JobConflict
from common.job import JobKind, JobSpec, ModelType, new_job
from common.jobstore import Ending, JobStore
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
    ending = jobs.finish(parent, JobStatus.SUCCEEDED, image="k")
    assert ending == Ending(released=[child.job_id], failed=[])
    # Released in the same step: queued, and in its model's unpublished set, so the
    # recovery loop publishes it if the finishing worker dies before it does.
    assert jobs.get(child.job_id).status is JobStatus.QUEUED
    assert jobs.needs_publish(ModelType.EDIT) == [child.job_id]
    assert jobs.get(grandchild.job_id).status is JobStatus.WAITING
    # A child submitted after its parent succeeded is queued at once.
    assert jobs.submit(edit_of(parent)).status is JobStatus.QUEUED


def test_finished_job_is_finished_once(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    jobs.claim(spec, "w1", 10, 3)
    assert jobs.finish(spec, JobStatus.SUCCEEDED, image="a") == Ending([], [])
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
    ending = jobs.finish(parent, JobStatus.FAILED, "parent failed: boom", error="boom")
    assert ending == Ending([], sorted([child.job_id, grandchild.job_id]))
    for spec in (child, grandchild):
        record = jobs.get(spec.job_id)
        assert (record.status, record.error_code, record.error) == (
            JobStatus.FAILED, "parent_failed", "parent failed: boom")


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
    grandchild = edit_of(child)
    jobs.submit(grandchild)
    found, failed = jobs.cancel(parent.job_id)
    assert (found, failed) == (JobStatus.QUEUED, sorted([child.job_id, grandchild.job_id]))
    assert jobs.get(parent.job_id).status is JobStatus.CANCELLED
    assert jobs.get(grandchild.job_id).error == "parent cancelled"
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


def test_storage_retry_gives_the_delivery_back_and_waits_its_time(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    jobs.mark_published(spec)
    assert jobs.claim(spec, "w1", 30, 1).outcome == "claimed"
    assert not jobs.retry_later(spec, "w2", 60, "not mine")  # only the holder puts it back
    assert jobs.retry_later(spec, "w1", 60, "StorageError: down")
    record = jobs.get(spec.job_id)
    assert (record.status, record.deliveries, record.infra_retries, record.infra_error) == (
        JobStatus.QUEUED, 0, 1, "StorageError: down")
    assert record.not_before is not None and record.not_before > time.time() + 50
    assert record.infra_since is not None
    # A message that arrives early is not taken, and nothing is due yet.
    assert jobs.claim(spec, "w2", 30, 1).outcome == "later"
    assert jobs.due_retries(ModelType.TURBO) == []
    assert list(jobs.orphaned(ModelType.TURBO)) == []
    # Many retries never make it poison (max deliveries is 1 here).
    for _ in range(3):
        jobs.redis.hset(jobs.job_key(spec.job_id), "not_before", 0)
        assert jobs.claim(spec, "w1", 30, 1).outcome == "claimed"
        assert jobs.retry_later(spec, "w1", 0, "StorageError: still down")
    assert jobs.due_retries(ModelType.TURBO) == [spec.job_id]
    assert jobs.needs_publish(ModelType.TURBO) == [spec.job_id]
    record = jobs.get(spec.job_id)
    assert (record.infra_retries, record.deliveries) == (4, 0)
    assert record.infra_since is not None and record.infra_since <= time.time()
    assert jobs.claim(spec, "w1", 30, 1).outcome == "claimed"


def test_cancel_drops_a_job_waiting_for_its_retry(jobs: JobStore) -> None:
    spec = generate()
    jobs.submit(spec)
    jobs.claim(spec, "w1", 30, 3)
    jobs.retry_later(spec, "w1", 0, "StorageError: down")
    assert jobs.cancel(spec.job_id) == (JobStatus.QUEUED, [])
    assert jobs.due_retries(ModelType.TURBO) == []


def test_ended_records_expire_after_the_retention_time(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    jobs = JobStore(client, prefix=f"t{uuid.uuid4().hex[:8]}", record_ttl_s=3600)
    parent = generate()
    jobs.submit(parent)
    child = edit_of(parent)
    jobs.submit(child)
    jobs.batches.create("b1", {"webhook": "http://example.com/hook"})
    jobs.batches.add_row("b1", BatchRow(line=1, sku="s", job_id=parent.job_id))
    assert not jobs.batches.seal("b1")
    jobs.set_webhook(parent.job_id, "http://example.com/job")
    jobs.claim(parent, "w1", 30, 3)
    assert client.ttl(jobs.job_key(parent.job_id)) == -1  # a running job never expires
    jobs.finish(parent, JobStatus.FAILED, error="boom")
    for key in (jobs.job_key(parent.job_id), jobs.job_key(child.job_id),
                f"{jobs.prefix}:batch:b1", f"{jobs.prefix}:batch:b1:rows"):
        assert 3500 < client.ttl(key) <= 3600, key
    # The batch finished with the job: its webhook and the job's are owed, once each.
    for kind, subject in (("batch", "b1"), ("job", parent.job_id)):
        owed = jobs.outbox.state(kind, subject)
        assert owed is not None and owed.status == "pending"
    assert jobs.finish(parent, JobStatus.SUCCEEDED) is None
    # A webhook record expires once it is settled, not while it is owed.
    records = [jobs.outbox.record_key("job", parent.job_id), jobs.outbox.record_key("batch", "b1")]
    assert [client.ttl(record) for record in records] == [-1, -1]
    for _ in records:
        delivery = jobs.outbox.claim_next()
        assert delivery is not None and jobs.outbox.delivered(delivery, 200)
    assert all(3500 < client.ttl(record) <= 3600 for record in records)
    client.close()


def test_workers_that_stopped_beating_are_pruned(jobs: JobStore) -> None:
    index = f"{jobs.prefix}:workers:turbo"
    jobs.redis.sadd(index, "alive", "dead")
    jobs.redis.hset(f"{jobs.prefix}:worker:alive", "model", "turbo")
    assert jobs.prune_workers(ModelType.TURBO) == ["dead"]
    assert jobs.redis.smembers(index) == {"alive"}
