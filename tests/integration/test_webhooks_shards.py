"""``zq webhooks`` over two shards: two real Redis servers, one real dispatcher process.

A webhook is owed in the outbox of its subject's shard (the job store's ending script
enqueues it there and publishes on that shard's wake channel). One dispatcher process
serves every shard: each shard's owed webhook is delivered once, as promptly as the
other's (woken, not polled: the idle rest is far longer than the tests wait), and a
shard whose Redis is down does not hold up deliveries owed on the others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from common.job import JobKind, new_job
from common.jobstore import JobStore
from common.push import webhook_wake_channel
from common.status import JobStatus
from tests.conftest import require
from tests.integration.test_webhooks import SECRET, Received, Receiver, assert_signed
from zq.embedded_redis import RedisServer, redis_executable, start_redis

pytestmark = pytest.mark.integration

# Far longer than any wait below: a delivery made in time was woken, not polled for.
IDLE_POLL_S = 120.0
PROMPT_S = 15.0


@pytest.fixture
def second_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A second Redis of this test's own: shard 1 (stopped by the outage test)."""
    require(redis_executable() is not None, "redis-server")
    server = start_redis(tmp_path / "shard1")
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP receiver on 127.0.0.1 answering 200."""
    started = Receiver()
    yield started
    started.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests sharing the session's Redis do not meet."""
    return f"whs{uuid.uuid4().hex[:8]}"


class Dispatching:
    """A ``zq webhooks`` process over the given shards; :meth:`stop` interrupts it."""

    def __init__(self, shards: list[RedisServer], prefix: str, store: Path,
                 logs: Path) -> None:
        env = {**os.environ, "ZQ_REDIS_URL": shards[0].url,
               "ZQ_REDIS_SHARDS": ",".join(server.url for server in shards),
               "ZQ_KEY_PREFIX": prefix, "ZQ_STORAGE_URL": f"file://{store}",
               "ZQ_WEBHOOK_ALLOW": "127.0.0.1", "ZQ_WEBHOOK_SECRET": SECRET.decode(),
               "PYTHONUNBUFFERED": "1"}
        self.log_path = logs
        self._log = logs.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zq", "webhooks", "--poll", str(IDLE_POLL_S)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """What the process printed and logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Interrupt (as Ctrl-C does) and wait; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def dispatching(prefix: str, tmp_path: Path) -> Iterator[Callable[..., Dispatching]]:
    """Start ``zq webhooks`` processes on demand; all are stopped after the test."""
    started: list[Dispatching] = []

    def start(shards: list[RedisServer]) -> Dispatching:
        process = Dispatching(shards, prefix, tmp_path / "store",
                              tmp_path / f"webhooks-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def wait_until(check: Callable[[], bool], what: str, process: Dispatching,
               timeout_s: float = PROMPT_S) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (and the dispatcher's output)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert process.proc.poll() is None, f"zq webhooks exited:\n{process.output()}"
        assert time.monotonic() < deadline, f"{what} in time\n{process.output()}"
        time.sleep(0.05)


def subscribed(client: redis.Redis, prefix: str) -> Callable[[], bool]:
    """Whether a dispatcher listens on the shard's wake channel."""
    channel = webhook_wake_channel(prefix)

    def check() -> bool:
        numsub = dict(client.pubsub_numsub(channel))
        return int(numsub.get(channel, 0)) > 0

    return check


def finished_job(jobs: JobStore, job_id: str, webhook: str | None = None) -> None:
    """Record ``job_id`` on the store's shard and end it (succeeded).

    With ``webhook``, the job owes it and ending it enqueues it (and wakes dispatchers)
    as a worker's ending does.
    """
    spec = new_job(JobKind.GENERATE, prompt="a lantern", width=32, height=32, job_id=job_id)
    jobs.submit(spec)
    if webhook is not None:
        jobs.set_webhook(job_id, webhook)
    assert jobs.claim(spec, "w-test", 30, 3).outcome == "claimed"
    jobs.finish(spec, JobStatus.SUCCEEDED, image=f"results/{job_id}.png",
                manifest=f"results/{job_id}.json")


def owe_by_hand(jobs: JobStore, job_id: str, url: str) -> None:
    """Enqueue a finished job's webhook directly, and wake dispatchers as the scripts do."""
    assert jobs.outbox.enqueue("job", job_id, url) is True
    jobs.redis.publish(webhook_wake_channel(jobs.prefix), f"job:{job_id}")


def posts_for(receiver: Receiver, job_id: str) -> list[Received]:
    return [request for request in receiver.received() if request.json["id"] == job_id]


def assert_delivered_once(jobs: JobStore, receiver: Receiver, job_id: str) -> None:
    """One signed POST carrying the job's own record, recorded delivered on its shard."""
    (request,) = posts_for(receiver, job_id)
    assert_signed(request)
    message = request.json
    assert (message["event"], message["id"], message["delivery_attempt"]) == (
        "job.finished", job_id, 1)
    data = message["data"]
    assert (data["job_id"], data["status"], data["image"]) == (
        job_id, "succeeded", f"results/{job_id}.png")
    state = jobs.outbox.state("job", job_id)
    assert state is not None
    assert (state.status, state.attempts, state.status_code) == ("delivered", 1, 200)
    assert request.headers["x-zq-delivery"] == state.delivery_id
    # Settled by the dispatcher with the retention time: the record does not pile up.
    assert jobs.redis.ttl(jobs.outbox.record_key("job", job_id)) > 0


@pytest.fixture
def stores(redis_server: RedisServer, second_redis: RedisServer,
           prefix: str) -> Iterator[list[JobStore]]:
    """A job store on each shard, under the test's prefix."""
    opened = [JobStore.from_url(server.url, prefix) for server in (redis_server, second_redis)]
    yield opened
    for jobs in opened:
        jobs.redis.close()


def test_one_dispatcher_delivers_what_each_shard_owes_once(
        redis_server: RedisServer, second_redis: RedisServer, stores: list[JobStore],
        prefix: str, receiver: Receiver, dispatching: Callable[..., Dispatching]) -> None:
    shard0, shard1 = stores
    process = dispatching([redis_server, second_redis])
    for jobs in stores:
        wait_until(subscribed(jobs.redis, prefix), "a dispatcher listening on each shard",
                   process)

    # Shard 1's webhook is owed by its ending script; shard 0's enqueued by hand. Each
    # job's record lives only on its own shard, so each body comes from its own shard.
    finished_job(shard1, "j-on-1", receiver.url)
    finished_job(shard0, "j-on-0")
    owe_by_hand(shard0, "j-on-0", receiver.url)
    assert not shard0.redis.exists(shard0.job_key("j-on-1"))
    assert not shard1.redis.exists(shard1.job_key("j-on-0"))

    wait_until(lambda: all(posts_for(receiver, j) for j in ("j-on-0", "j-on-1")),
               "both shards' webhooks delivered", process)
    time.sleep(1.0)  # long enough for a second POST of either to show up
    assert_delivered_once(shard0, receiver, "j-on-0")
    assert_delivered_once(shard1, receiver, "j-on-1")
    assert len(receiver.received()) == 2
    assert shard0.outbox.due() == [] and shard1.outbox.due() == []
    assert process.stop() == 0
    assert "2 shards" in process.output()


def test_a_shard_whose_redis_is_down_does_not_stop_the_others(
        redis_server: RedisServer, second_redis: RedisServer, stores: list[JobStore],
        prefix: str, receiver: Receiver, dispatching: Callable[..., Dispatching],
        tmp_path: Path) -> None:
    shard0, _ = stores
    process = dispatching([redis_server, second_redis])
    for jobs in stores:
        wait_until(subscribed(jobs.redis, prefix), "a dispatcher listening on each shard",
                   process)

    second_redis.stop(signal.SIGKILL)  # shard 1 crashes
    wait_until(lambda: "redis unavailable" in process.output(),
               "the dispatcher noticing shard 1 is down", process)
    finished_job(shard0, "j-during-outage", receiver.url)
    wait_until(lambda: bool(posts_for(receiver, "j-during-outage")),
               "shard 0's webhook delivered while shard 1 is down", process)
    time.sleep(1.0)
    assert_delivered_once(shard0, receiver, "j-during-outage")
    output = process.output()
    assert f"shard 1 redis://127.0.0.1:{second_redis.port}" in output
    assert f"shard 0 redis://127.0.0.1:{redis_server.port}" not in output

    # Shard 1 comes back (empty, at the same address): its loop reconnects by itself.
    revived = start_redis(tmp_path / "shard1-again", port=second_redis.port)
    try:
        back = JobStore.from_url(revived.url, prefix)
        finished_job(back, "j-after-outage", receiver.url)
        wait_until(lambda: bool(posts_for(receiver, "j-after-outage")),
                   "shard 1's webhook delivered once it is back", process)
        time.sleep(1.0)
        assert_delivered_once(back, receiver, "j-after-outage")
        assert process.proc.poll() is None
        assert process.stop() == 0
        back.redis.close()
    finally:
        revived.stop()


def test_once_sends_what_every_shard_owes(
        redis_server: RedisServer, second_redis: RedisServer, stores: list[JobStore],
        prefix: str, receiver: Receiver, tmp_path: Path) -> None:
    for index, jobs in enumerate(stores):
        finished_job(jobs, f"j-once-{index}", receiver.url)
    env = {**os.environ, "ZQ_REDIS_URL": redis_server.url,
           "ZQ_REDIS_SHARDS": f"{redis_server.url} {second_redis.url}",
           "ZQ_KEY_PREFIX": prefix, "ZQ_STORAGE_URL": f"file://{tmp_path}",
           "ZQ_WEBHOOK_ALLOW": "127.0.0.1", "ZQ_WEBHOOK_SECRET": SECRET.decode()}
    command = [sys.executable, "-m", "zq", "webhooks", "--once"]
    sent = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    assert "2 attempted" in sent.stdout
    for index, jobs in enumerate(stores):
        assert_delivered_once(jobs, receiver, f"j-once-{index}")

    # Shard 1 down: shard 0's owed webhook still goes; the run says Redis was unreachable.
    finished_job(stores[0], "j-once-again", receiver.url)
    second_redis.stop(signal.SIGKILL)
    down = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 3, down.stderr
    assert f"shard 1 redis://127.0.0.1:{second_redis.port}" in down.stderr
    assert_delivered_once(stores[0], receiver, "j-once-again")
