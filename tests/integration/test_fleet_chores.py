"""Fleet-wide chores on one worker per model type: Redis cost per beat, and takeover.

Workers are in-process ``Liveness`` objects on a private Redis (no worker processes):
their beats, the chores lock, the job records and the Celery messages are real. Redis
commands are counted by the server (``INFO commandstats``), round trips by the client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from redis.connection import Connection

from common.aging import OLDEST_PER_LIST, promote_overdue
from common.job import JobKind, JobSpec, ModelType, new_job
from common.jobstore import JobStore
from common.queueing import make_celery, publish
from common.queueload import priority_lists
from common.settings import Settings
from common.status import JobStatus
from tests.integration.conftest import own_redis
from worker.execute import CurrentJob
from worker.liveness import CHORES_LOCK_BEATS, Liveness, WorkerRegistry
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration

LEASE_TTL_S = 3  # a beat of 1 s, a chores lock of 1.5 s
# A worker that does not hold the chores lock: its heartbeat pipeline, its current job, the
# election; and one lease renewal per job it holds.
OWN_BEAT_COMMANDS = 8
OWN_BEAT_ROUND_TRIPS = 4


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: its command counters see nothing but these tests."""
    with own_redis(tmp_path_factory.mktemp("redis-chores")) as server:
        yield server


@pytest.fixture
def settings(private_redis: RedisServer) -> Settings:
    redis.Redis.from_url(private_redis.url).flushall()
    return Settings.from_env({"ZQ_REDIS_URL": private_redis.url,
                              "ZQ_KEY_PREFIX": f"c{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def jobs(settings: Settings) -> Iterator[JobStore]:
    store = JobStore.from_url(settings.redis_url, settings.key_prefix)
    yield store
    store.redis.close()


@pytest.fixture
def app(settings: Settings) -> Iterator[Celery]:
    celery = make_celery(settings)
    yield celery
    celery.close()


@pytest.fixture
def probe(private_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts what clients send: a pipeline, or a single command, is one round trip."""
    sent = [0]
    send: Callable[..., None] = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return sent


def commands(probe: redis.Redis) -> int:
    """Commands the server ran since the last reset, scripts' own commands included."""
    stats: dict[str, dict[str, Any]] = probe.info("commandstats")
    return sum(int(stat["calls"]) for name, stat in stats.items()
               if not name.startswith(("cmdstat_info", "cmdstat_config")))


def measured(probe: redis.Redis, trips: list[int], action: Callable[[], Any]
             ) -> tuple[Any, int, int]:
    """What ``action`` returned, and the commands and round trips it took."""
    probe.config_resetstat()
    before = trips[0]
    result = action()
    sent = trips[0] - before
    return result, commands(probe), sent


def fleet(jobs: JobStore, app: Celery, size: int, max_wait_s: int = 0) -> list[Liveness]:
    """``size`` turbo workers, none beating yet."""
    workers = []
    for n in range(size):
        worker_id = f"w{n}@test"
        registry = WorkerRegistry(jobs, worker_id, ModelType.TURBO, LEASE_TTL_S * 2)
        workers.append(Liveness(jobs, app, ModelType.TURBO, worker_id, CurrentJob(), registry,
                                LEASE_TTL_S, max_wait_s=max_wait_s))
    return workers


def submitted(jobs: JobStore, count: int, priority: int = 5) -> list[JobSpec]:
    specs = [new_job(JobKind.GENERATE, prompt=f"p{priority} {i}", width=16, height=16,
                     seed=i, priority=priority) for i in range(count)]
    for spec in specs:
        jobs.submit(spec)
        jobs.mark_published(spec)
    return specs


def backlog(jobs: JobStore, app: Celery, per_list: int) -> list[JobSpec]:
    """``per_list`` queued jobs in each lower-priority list, published oldest first."""
    specs = []
    for priority in range(9):
        for spec in submitted(jobs, per_list, priority):
            publish(app, spec)
            specs.append(spec)
    return specs


def orphan(jobs: JobStore) -> JobSpec:
    """A running job whose worker died: claimed, then its lease gone."""
    (spec,) = submitted(jobs, 1)
    jobs.claim(spec, "dead@test", 30, 3)
    jobs.redis.delete(f"{jobs.prefix}:lease:{spec.job_id}")
    return spec


def chores_holder(jobs: JobStore) -> str | None:
    return jobs.redis.get(f"{jobs.prefix}:chores:{ModelType.TURBO.value}")  # type: ignore[return-value]


def test_one_worker_of_five_scans_per_beat_and_the_others_cost_a_few_commands(
        jobs: JobStore, app: Celery, probe: redis.Redis, round_trips: list[int]) -> None:
    backlog(jobs, app, OLDEST_PER_LIST + 5)
    workers = fleet(jobs, app, 5, max_wait_s=3600)  # nothing overdue: every scan is idle
    held = submitted(jobs, 1)[0]
    jobs.claim(held, workers[3].worker_id, LEASE_TTL_S, 3)
    workers[3].current.set(held.job_id)
    for worker in workers:
        worker.beat()  # scripts loaded, the first prune done
    # What every worker did per beat before the election: the whole scan.
    _, scan_commands, scan_trips = measured(probe, round_trips, workers[0].recover)
    assert scan_commands >= 9 * OLDEST_PER_LIST  # one record read per message in view
    assert scan_trips <= 8  # but pipelined: lists, records, running jobs' leases

    for _ in range(3):
        beats = [measured(probe, round_trips, worker.beat) for worker in workers]
        choring = [n for n, (did, _, _) in enumerate(beats) if did]
        assert choring == [0]  # one worker, and the same one beat after beat
        for did, cost, trips in beats:
            if not did:
                assert cost <= OWN_BEAT_COMMANDS and trips <= OWN_BEAT_ROUND_TRIPS
        total = sum(cost for _, cost, _ in beats)
        # O(workers) + one scan, not O(workers x scan).
        assert total <= len(workers) * OWN_BEAT_COMMANDS + scan_commands
        assert jobs.redis.ttl(f"{jobs.prefix}:lease:{held.job_id}") > 0  # renewed, unelected
    assert chores_holder(jobs) == workers[0].worker_id


def test_a_single_worker_does_the_chores_every_beat(jobs: JobStore, app: Celery) -> None:
    (worker,) = fleet(jobs, app, 1)
    lost = orphan(jobs)
    assert worker.beat()
    assert jobs.get(lost.job_id).status is JobStatus.QUEUED
    time.sleep(worker.interval_s * CHORES_LOCK_BEATS + 0.2)  # its lock ran out meanwhile
    assert worker.beat() and worker.beat()
    stale = submitted(jobs, 1)[0]
    jobs.redis.zadd(f"{jobs.prefix}:unpublished:turbo", {stale.job_id: time.time() - 60})
    assert worker.beat()
    assert not jobs.is_unpublished(stale)


def test_when_the_chores_holder_stops_another_worker_recovers_within_two_beats(
        jobs: JobStore, app: Celery) -> None:
    workers = fleet(jobs, app, 3)
    chores: dict[str, int] = {}
    for worker in workers:
        def counted(worker: Liveness = worker, recover: Callable[[], list[str]] = worker.recover
                    ) -> list[str]:
            chores[worker.worker_id] = chores.get(worker.worker_id, 0) + 1
            return recover()
        worker.recover = counted  # type: ignore[method-assign]
        worker.start()
    try:
        deadline = time.monotonic() + 10
        while (holder_id := chores_holder(jobs)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(3 * workers[0].interval_s)
        assert list(chores) == [holder_id]  # the others beat, but did no chores
        holder = next(w for w in workers if w.worker_id == holder_id)
        holder.stop()
        holder.join(10)
        stopped = time.monotonic()
        lost = orphan(jobs)
        # The holder's lock lives on for up to CHORES_LOCK_BEATS beats, then the next
        # worker to beat takes it: within two and a half beats, before a lease (three).
        bound_s = holder.interval_s * (CHORES_LOCK_BEATS + 1)
        while jobs.get(lost.job_id).status is not JobStatus.QUEUED:
            assert time.monotonic() < stopped + bound_s + 1.0, "nobody took the chores over"
            time.sleep(0.05)
        successor = chores_holder(jobs)
        assert successor not in (None, holder_id)
        assert chores[successor] >= 1
    finally:
        for worker in workers:
            worker.stop()
            worker.join(10)


def test_a_holder_whose_chores_fail_gives_the_lock_up(jobs: JobStore, app: Celery) -> None:
    first, second = fleet(jobs, app, 2)
    assert first.beat() and not second.beat()

    def broken() -> list[str]:
        raise redis.ResponseError("the chores failed on this worker")

    first.recover = broken  # type: ignore[method-assign]
    with pytest.raises(redis.ResponseError):
        first.beat()
    assert chores_holder(jobs) is None
    lost = orphan(jobs)
    assert second.beat()  # its next beat, not a lock's lifetime later
    assert jobs.get(lost.job_id).status is JobStatus.QUEUED


def test_overdue_jobs_are_promoted_once_oldest_first_in_two_reads(
        jobs: JobStore, app: Celery, probe: redis.Redis, round_trips: list[int]) -> None:
    specs = backlog(jobs, app, 3)
    now = time.time()
    overdue = [specs[0], specs[4], specs[5]]  # priority 0's oldest, priority 1's newest two
    for spec in overdue:
        jobs.redis.hset(jobs.job_key(spec.job_id), "queued_at", now - 100)
    cancelled = specs[1]
    jobs.redis.hset(jobs.job_key(cancelled.job_id), "queued_at", now - 100)
    jobs.cancel(cancelled.job_id)
    promoted, _, trips = measured(
        probe, round_trips, lambda: promote_overdue(jobs, app, ModelType.TURBO, 50, now))
    # The lists are scanned most urgent first (priority 1 before 0); each oldest first.
    assert promoted == [overdue[1].job_id, overdue[2].job_id, overdue[0].job_id]
    assert trips <= 2 + 3 * 4  # the two reads, then per promoted job: mark, record, publish
    assert jobs.redis.llen(priority_lists(ModelType.TURBO)[0]) == 3
    assert promote_overdue(jobs, app, ModelType.TURBO, 50, now) == []
