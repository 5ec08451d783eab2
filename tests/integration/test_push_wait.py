"""Waiting without polling, on a real Redis: the ending script publishes, waiters wake.

Fallback intervals in these tests are far longer than the time allowed to return, so only
a pushed message can make a waiter return in time; a test that needs the fallback sets
it short and ends the job behind the scripts' back (a plain HSET publishes nothing).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

from common.batches import BatchRow
from common.errors import JobNotFound
from common.job import JobKind, JobSpec, new_job
from common.jobstore import JobStore
from common.push import batch_channel, job_channel, webhook_wake_channel
from common.settings import Settings
from common.shards import Shard
from common.status import JobRecord, JobStatus
from common.webhook_policy import WebhookPolicy
from common.webhooks import WebhookOutbox
from producer.api import events
from producer.batch import Batches
from producer.batch_cli import follow
from producer.client import Client, JobHandle
from producer.webhooks import Dispatcher
from tests.integration.conftest import in_process_api
from tests.integration.test_api_server import sse_frames
from tests.integration.test_webhooks import SECRET, Receiver

pytestmark = pytest.mark.integration

SLOW_FALLBACK_S = 30.0
PUSHED_WITHIN_S = 10.0  # well under the fallback: only a publish can beat it


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    """A producer client on the test's private prefix (no workers, no queue use)."""
    made = Client(settings)
    yield made
    made.jobs.redis.close()


def generate(**fields: Any) -> JobSpec:
    return new_job(JobKind.GENERATE, prompt="p", width=32, height=32, **fields)


def submitted(jobs: JobStore, **fields: Any) -> JobSpec:
    spec = generate(**fields)
    jobs.submit(spec)
    return spec


def succeed(jobs: JobStore, spec: JobSpec) -> None:
    assert jobs.claim(spec, "w1", 30, 3).outcome == "claimed"
    jobs.finish(spec, JobStatus.SUCCEEDED, image=f"img/{spec.job_id}.png")


def fail(jobs: JobStore, spec: JobSpec) -> None:
    assert jobs.claim(spec, "w1", 30, 3).outcome == "claimed"
    jobs.finish(spec, JobStatus.FAILED, error="boom", error_code="render_failed")


def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def subscribers(jobs: JobStore, channel: str) -> int:
    counts = cast(list[tuple[str, int]], jobs.redis.pubsub_numsub(channel))
    return int(counts[0][1])


def pubsub_clients(jobs: JobStore, before: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Pub/sub connections open now, other than those in ``before`` (ids)."""
    listed = cast(list[dict[str, Any]], jobs.redis.client_list(_type="pubsub"))
    return [entry for entry in listed if str(entry["id"]) not in before]


def pubsub_ids(jobs: JobStore) -> frozenset[str]:
    return frozenset(str(entry["id"]) for entry in pubsub_clients(jobs))


class Waiting:
    """A wait running in a thread: its result or exception, and when it came back."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.returned_after: float | None = None
        started = time.monotonic()

        def run() -> None:
            try:
                self.result = call()
            except BaseException as exc:
                self.error = exc
            self.returned_after = time.monotonic() - started

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout_s: float) -> Any:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"still waiting after {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.result


# -- one job --------------------------------------------------------------------------
def test_waiter_subscribed_before_the_end_is_woken_by_the_publish(client: Client) -> None:
    spec = submitted(client.jobs)
    before = pubsub_ids(client.jobs)
    waiting = Waiting(lambda: client.wait(spec.job_id, 60, poll_s=SLOW_FALLBACK_S))
    until(lambda: subscribers(client.jobs, job_channel(client.jobs.prefix, spec.job_id)) == 1)
    time.sleep(0.2)  # past the waiter's first read: from here on only a push wakes it
    succeed(client.jobs, spec)
    record: JobRecord = waiting.join(PUSHED_WITHIN_S)
    assert record.status is JobStatus.SUCCEEDED
    assert record.image == f"img/{spec.job_id}.png"
    assert pubsub_clients(client.jobs, before) == []  # unsubscribed from everything


def test_the_ended_message_carries_the_record_so_it_is_not_read_back(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[list[str]] = []
    read = client._read

    def counted(shard: Shard, job_ids: list[str]) -> list[JobRecord]:
        reads.append(list(job_ids))
        return read(shard, job_ids)

    monkeypatch.setattr(client, "_read", counted)
    spec = submitted(client.jobs)
    waiting = Waiting(lambda: client.wait(spec.job_id, 60, poll_s=SLOW_FALLBACK_S))
    until(lambda: subscribers(client.jobs, job_channel(client.jobs.prefix, spec.job_id)) == 1)
    time.sleep(0.2)
    succeed(client.jobs, spec)
    record: JobRecord = waiting.join(PUSHED_WITHIN_S)
    assert (record.status, record.image) == (JobStatus.SUCCEEDED, f"img/{spec.job_id}.png")
    assert [ids for ids in reads if ids] == [[spec.job_id]]  # the end came with its record


def test_a_thread_keeps_one_connection_for_all_its_waits(client: Client) -> None:
    def connections_received() -> int:
        return int(client.jobs.redis.info("stats")["total_connections_received"])

    def three_waits() -> list[JobStatus]:
        statuses = []
        for _ in range(3):
            spec = submitted(client.jobs)
            succeed(client.jobs, spec)
            statuses.append(client.wait(spec.job_id, 10, poll_s=SLOW_FALLBACK_S).status)
        return statuses

    before = connections_received()
    waits = Waiting(three_waits)
    assert waits.join(PUSHED_WITHIN_S) == [JobStatus.SUCCEEDED] * 3
    # One kept pub/sub connection (a connection costs Redis several subscriptions), and
    # perhaps one for the reads; never one per wait.
    assert connections_received() - before <= 2


def test_cancel_and_a_parent_failing_its_children_publish_too(client: Client) -> None:
    parent, queued = submitted(client.jobs), submitted(client.jobs)
    child = new_job(JobKind.EDIT, prompt="e", parent_id=parent.job_id,
                    conversation_id=parent.conversation_id)
    client.jobs.submit(child)
    waiting = Waiting(lambda: client.wait_all([child.job_id, queued.job_id], 60,
                                              poll_s=SLOW_FALLBACK_S))
    until(lambda: subscribers(client.jobs, job_channel(client.jobs.prefix, child.job_id)) == 1)
    time.sleep(0.2)
    fail(client.jobs, parent)  # fails the waiting child in the same script
    client.jobs.cancel(queued.job_id)
    child_record, queued_record = waiting.join(PUSHED_WITHIN_S)
    assert (child_record.status, child_record.error_code) == (JobStatus.FAILED, "parent_failed")
    assert queued_record.status is JobStatus.CANCELLED


def test_job_that_ended_before_the_wait_is_returned_at_once(client: Client) -> None:
    spec = submitted(client.jobs)
    fail(client.jobs, spec)
    started = time.monotonic()
    record = client.wait(spec.job_id, 60, poll_s=SLOW_FALLBACK_S)
    assert record.status is JobStatus.FAILED and record.error == "boom"
    assert time.monotonic() - started < PUSHED_WITHIN_S


def test_missed_message_is_made_up_for_by_the_fallback_read(client: Client) -> None:
    spec = submitted(client.jobs)
    waiting = Waiting(lambda: client.wait(spec.job_id, 60, poll_s=0.2))
    until(lambda: subscribers(client.jobs, job_channel(client.jobs.prefix, spec.job_id)) == 1)
    # Terminal without the ending script: nothing is published.
    client.jobs.redis.hset(client.jobs.job_key(spec.job_id),
                           mapping={"status": "succeeded", "finished_at": time.time()})
    assert waiting.join(PUSHED_WITHIN_S).status is JobStatus.SUCCEEDED


def test_timeout_and_unknown_job_raise_as_before(client: Client) -> None:
    spec = submitted(client.jobs)
    before = pubsub_ids(client.jobs)
    with pytest.raises(TimeoutError, match=f"job {spec.job_id} still queued after 0.3s"):
        client.wait(spec.job_id, 0.3, poll_s=SLOW_FALLBACK_S)
    with pytest.raises(JobNotFound, match="job nope is not known"):
        client.wait("nope", 5)
    with pytest.raises(JobNotFound, match="job nope is not known"):
        client.wait_all([spec.job_id, "nope"], 5)
    assert pubsub_clients(client.jobs, before) == []


# -- many jobs ----------------------------------------------------------------------------
def test_waiting_on_many_jobs_uses_one_pubsub_connection(client: Client) -> None:
    specs = [submitted(client.jobs, seed=i) for i in range(8)]
    handles = [JobHandle(spec.job_id, client) if i % 2 else spec.job_id
               for i, spec in enumerate(specs)]
    before = pubsub_ids(client.jobs)
    waiting = Waiting(lambda: client.wait_all(handles, 60, poll_s=SLOW_FALLBACK_S))
    until(lambda: all(subscribers(client.jobs, job_channel(client.jobs.prefix, s.job_id)) == 1
                      for s in specs))
    listening = pubsub_clients(client.jobs, before)
    assert len(listening) == 1 and int(listening[0]["sub"]) == len(specs), listening
    time.sleep(0.2)
    for i, spec in enumerate(reversed(specs)):
        if i % 3 == 0:
            client.jobs.cancel(spec.job_id)
        elif i % 3 == 1:
            fail(client.jobs, spec)
        else:
            succeed(client.jobs, spec)
    records: list[JobRecord] = waiting.join(PUSHED_WITHIN_S)
    assert [r.spec.job_id for r in records] == [s.job_id for s in specs]
    assert all(r.status.terminal for r in records)
    assert pubsub_clients(client.jobs, before) == []


# -- batches ------------------------------------------------------------------------------
def test_batch_counters_match_the_rows_after_a_mix_of_endings(client: Client) -> None:
    jobs, store = client.jobs, client.jobs.batches
    early = submitted(jobs, seed=100)
    succeed(jobs, early)  # ended before it joined: counted when it is added
    parent = submitted(jobs, seed=101)
    child = new_job(JobKind.EDIT, prompt="e", parent_id=parent.job_id,
                    conversation_id=parent.conversation_id)
    jobs.submit(child)
    others = [submitted(jobs, seed=102 + i) for i in range(6)]
    batch_id = "b-counters"
    listener = jobs.redis.pubsub()
    listener.subscribe(batch_channel(jobs.prefix, batch_id))
    try:
        assert listener.get_message(timeout=5)["type"] == "subscribe"
        store.create(batch_id, {"source": "test"})
        rows = [early, parent, child, *others]
        for line, spec in enumerate(rows, start=1):
            store.add_row(batch_id, BatchRow(line, f"sku-{line}", spec.job_id))
        store.add_row(batch_id, BatchRow(len(rows) + 1, "dup", others[0].job_id))
        store.add_row(batch_id, BatchRow(len(rows) + 2, "bad", None, "refused"))
        store.seal(batch_id)
        assert store.progress(batch_id).ended == 1

        fail(jobs, parent)  # the waiting child fails with it
        succeed(jobs, others[0])
        succeed(jobs, others[1])
        fail(jobs, others[2])
        jobs.cancel(others[3].job_id)
        # Settling again, and adding the same rows again (a re-run), counts nothing twice.
        jobs.set_webhook(others[1].job_id, "https://example.com/hook")
        jobs.notify_ended(others[1].job_id)
        for line, spec in enumerate(rows, start=1):
            store.add_row(batch_id, BatchRow(line, f"sku-{line}", spec.job_id))

        progress = store.progress(batch_id)
        results = Batches(client).results_light(batch_id)
        by_job = {r.job_id: r.status for r in results if r.job_id}
        ended = Counter(s for s in by_job.values() if s in {"succeeded", "failed", "cancelled"})
        assert progress.ended == sum(ended.values()) == 7
        assert (progress.succeeded, progress.failed, progress.cancelled) == (
            ended["succeeded"], ended["failed"], ended["cancelled"]) == (3, 3, 1)
        published = []
        while (message := listener.get_message(timeout=0.2)) is not None:
            if message["type"] == "message":
                published.append(message["data"])
        assert sorted(published) == sorted(
            s.job_id for s in (early, parent, child, *others[:4]))
    finally:
        listener.close()


def test_batch_follow_wakes_on_change_and_returns_every_row(client: Client) -> None:
    jobs, store = client.jobs, client.jobs.batches
    specs = [submitted(jobs, seed=200 + i) for i in range(5)]
    batch_id = "b-follow"
    store.create(batch_id, {"source": "test"})
    for line, spec in enumerate(specs, start=1):
        store.add_row(batch_id, BatchRow(line, f"sku-{line}", spec.job_id))
    store.add_row(batch_id, BatchRow(6, "bad", None, "refused"))
    store.seal(batch_id)
    out = io.StringIO()
    batches = Batches(client)
    before = pubsub_ids(jobs)
    following = Waiting(lambda: follow(batches, batch_id, 60, out))
    until(lambda: subscribers(jobs, batch_channel(jobs.prefix, batch_id)) == 1)
    succeed(jobs, specs[0])
    fail(jobs, specs[1])
    jobs.cancel(specs[2].job_id)
    succeed(jobs, specs[3])
    succeed(jobs, specs[4])
    results = following.join(PUSHED_WITHIN_S)
    assert results == batches.results_light(batch_id)
    assert out.getvalue().splitlines()[-1].startswith(
        "[##############################] 6/6 ended (1 cancelled, 1 failed, 1 invalid, "
        "3 succeeded)")
    assert pubsub_clients(jobs, before) == []


# -- webhooks -----------------------------------------------------------------------------
@contextlib.contextmanager
def dispatching(client: Client) -> Iterator[Receiver]:
    """A dispatcher resting on a slow fallback poll, and the receiver its webhooks reach."""
    receiver = Receiver()
    outbox = WebhookOutbox(client.jobs.redis, client.jobs.prefix)
    dispatcher = Dispatcher(outbox, lambda delivery: {"id": delivery.subject_id}, SECRET,
                            timeout_s=2.0, policy=WebhookPolicy(("127.0.0.1",)))
    stop = threading.Event()
    running = threading.Thread(target=dispatcher.run_forever, args=(SLOW_FALLBACK_S, stop),
                               daemon=True)
    running.start()
    try:
        until(lambda: subscribers(client.jobs, webhook_wake_channel(client.jobs.prefix)) == 1)
        yield receiver
    finally:
        stop.set()
        running.join(10)
        receiver.stop()
    assert not running.is_alive()


def owe_a_webhook(client: Client, receiver: Receiver) -> JobSpec:
    """End a job that names a webhook on the receiver."""
    spec = submitted(client.jobs)
    client.jobs.set_webhook(spec.job_id, f"{receiver.base}/hook")
    succeed(client.jobs, spec)
    return spec


def test_dispatcher_wakes_when_a_webhook_becomes_owed(client: Client) -> None:
    before = pubsub_ids(client.jobs)
    with dispatching(client) as receiver:
        time.sleep(0.3)  # resting now: nothing is due
        spec = owe_a_webhook(client, receiver)
        until(lambda: len(receiver.received()) == 1, PUSHED_WITHIN_S)
        assert receiver.received()[0].json["id"] == spec.job_id
    assert pubsub_clients(client.jobs, before) == []


def test_dispatcher_keeps_going_when_redis_connections_drop(client: Client) -> None:
    before = pubsub_ids(client.jobs)
    with dispatching(client) as receiver:
        [ours] = pubsub_clients(client.jobs, before)
        admin = redis.Redis.from_url(client.settings.redis_url, decode_responses=True)
        admin.client_kill_filter(_id=ours["id"])  # as a Redis restart would
        admin.close()
        until(lambda: subscribers(client.jobs, webhook_wake_channel(client.jobs.prefix)) == 1)
        owe_a_webhook(client, receiver)
        until(lambda: len(receiver.received()) == 1, PUSHED_WITHIN_S)


# -- the API's event stream ---------------------------------------------------------------
def test_the_event_stream_is_pushed_not_polled(settings: Settings, client: Client,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "FALLBACK_S", SLOW_FALLBACK_S)  # only a publish is in time
    spec = submitted(client.jobs)
    progress = client.jobs.keys.progress(spec.job_id)

    def drive() -> None:
        until(lambda: subscribers(client.jobs, progress) == 1)
        time.sleep(0.2)  # past the stream's first read
        assert client.jobs.claim(spec, "w1", 30, 3).outcome == "claimed"
        for step in (1, 2):
            assert not client.jobs.report_progress(spec.job_id, step, 4)
            time.sleep(0.3)
        client.jobs.finish(spec, JobStatus.SUCCEEDED, image=f"img/{spec.job_id}.png")

    started = time.monotonic()
    driver = Waiting(drive)
    frames: list[tuple[str, dict[str, Any]]] = []
    for api in in_process_api(settings, client):
        with api.stream("GET", f"/v1/jobs/{spec.job_id}/events") as stream:
            frames = sse_frames(stream.iter_lines())
    driver.join(PUSHED_WITHIN_S)
    assert time.monotonic() - started < PUSHED_WITHIN_S
    statuses = [data["status"] for name, data in frames if name == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert [data["step"] for name, data in frames if name == "progress"] == [1, 2]
    assert frames[-1][0] == "end" and frames[-1][1]["image"] == f"img/{spec.job_id}.png"
    assert subscribers(client.jobs, progress) == 0  # the stream let go of its channels
