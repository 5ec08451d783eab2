"""Adapter affinity on real workers: a job goes to the idle worker already holding its
adapter, once, and never waits on a worker that cannot take it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery

from common.errors import JobNotFound
from common.job import JobKind, ModelType, new_job
from common.jobstore import JobStore
from common.queueing import make_celery
from common.settings import Settings
from common.status import JobRecord, JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster, WorkerProcess
from tests.integration.conftest import client_for
from worker.tiny_lora import make_tiny_lora
from worker.warm_routing import (
    Route,
    WarmRouting,
    own_queue,
    own_queue_name,
)

pytestmark = pytest.mark.integration
SIDE = 32
PASS_S = 2


@pytest.fixture
def routed(cluster: Cluster) -> Iterator[Cluster]:
    """The test's cluster with a short pass deadline."""
    cluster.env["ZQ_ADAPTER_PASS_S"] = str(PASS_S)
    yield cluster


def sample(cluster: Cluster, worker: WorkerProcess, series: str) -> float:
    """One sample of a worker's /metrics, by its full series text."""
    port = cluster.record(worker)["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not exported:\n{text[:3000]}")


def passes(cluster: Cluster, worker: WorkerProcess, way: str) -> float:
    return sample(cluster, worker, f'zq_adapter_passes_total{{model="turbo",way="{way}"}}')


def loads(cluster: Cluster, worker: WorkerProcess) -> float:
    return sample(cluster, worker, 'zq_adapter_loads_total{model="turbo"}')


def run(client: Client, adapters: str | None, timeout_s: float = 120) -> JobRecord:
    handle = client.generate("a shoe on a rock", width=SIDE, height=SIDE, steps=2,
                             adapters=adapters)
    record = handle.wait(timeout_s)
    assert record.status is JobStatus.SUCCEEDED, record.error
    return record


def stop_consuming_shared_queue(cluster: Cluster, worker: WorkerProcess) -> None:
    """Leave ``worker`` consuming only its own queue, so the other worker receives every
    message of the shared one."""
    app = make_celery(Settings.from_env(cluster.env))
    replies = app.control.cancel_consumer("zq.turbo", destination=[worker.name], reply=True,
                                          timeout=10)
    assert replies, f"{worker.name} did not answer the cancel_consumer request"


def test_an_adapter_job_goes_to_the_idle_worker_holding_it_once_and_never_waits_on_it(
        routed: Cluster, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cluster = routed
    client = client_for(cluster)
    lora = make_tiny_lora(tiny_models["turbo"], tmp_path / "acme.safetensors", 1)
    added = subprocess.run([sys.executable, "-m", "zq", "adapters", "add", "acme", str(lora),
                            "--model", "turbo"], env={**os.environ, **cluster.env},
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr

    warm = cluster.start(ModelType.TURBO, name="turbo-warm@test")
    first = run(client, "acme")  # the only worker: it loads acme and keeps it
    assert first.worker == warm.name
    cold = cluster.start(ModelType.TURBO, name="turbo-cold@test")
    stop_consuming_shared_queue(cluster, warm)

    # Only the cold worker receives it, and hands it to the idle worker holding acme.
    passed = run(client, "acme")
    assert passed.worker == warm.name
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    assert r.hget(f"{cluster.prefix}:job:{passed.spec.job_id}", "passed_to") == warm.name
    assert passes(cluster, cold, "sent") == 1
    assert loads(cluster, cold) == 0 and loads(cluster, warm) == 1
    assert run(client, None).worker == cold.name  # a plain job is never passed

    # The warm worker freezes while still listed as idle: the job passed to it goes back to
    # the shared queue after the deadline and the cold worker runs it, loading acme itself.
    warm.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        rescued = run(client, "acme", timeout_s=60)
        waited = time.monotonic() - started
        assert rescued.worker == cold.name
        assert r.hget(f"{cluster.prefix}:job:{rescued.spec.job_id}", "passed_to") == warm.name
        assert rescued.deliveries == 1
        assert waited >= PASS_S  # it did wait for the frozen worker, once
        assert passes(cluster, cold, "sent") == 2  # not passed a second time
        assert passes(cluster, cold, "returned") == 1  # the cold worker holds the chores
        assert loads(cluster, cold) == 1
    finally:
        warm.proc.send_signal(signal.SIGCONT)

    # Woken, the warm worker finds the stale message for a job that already ran: it does
    # not run it again.
    deadline = time.monotonic() + 30
    while "not run here: done" not in warm.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "not run here: done" in warm.log_text(), warm.log_text()[-3000:]
    again = client.status(rescued.spec.job_id)
    assert again.worker == cold.name and again.deliveries == 1
    assert cluster.record(warm)["jobs_done"] == "2"


# -- the routing scripts on a real Redis, with in-process workers -----------------------
ACME, GLOBEX = "a" * 64, "b" * 64


class Holding:
    """The adapters an in-process worker holds (by checksum)."""

    def __init__(self, *sha256s: str) -> None:
        self.sha256s = frozenset(sha256s)

    def resident_sha256s(self) -> frozenset[str]:
        return self.sha256s


@pytest.fixture
def fleet(redis_server: Any) -> Iterator[Fleet]:
    redis.Redis.from_url(redis_server.url).flushall()
    settings = Settings.from_env({"ZQ_REDIS_URL": redis_server.url, "ZQ_KEY_PREFIX": "wr"})
    made = Fleet(JobStore.from_url(settings.redis_url, settings.key_prefix),
                 make_celery(settings))
    yield made
    made.app.close()
    made.jobs.redis.close()


class Fleet:
    """Workers that are ``WarmRouting`` objects and registry records, nothing else."""

    def __init__(self, jobs: JobStore, app: Celery) -> None:
        self.jobs = jobs
        self.app = app
        self.r = jobs.redis

    def worker(self, name: str, *holds: str, alive: bool = True,
               pass_s: int = PASS_S) -> WarmRouting:
        routing = WarmRouting(self.jobs, ModelType.TURBO, name, Holding(*holds), self.app,
                              pass_s)
        if alive:
            self.r.hset(self.jobs.worker_key(name), "model", "turbo")
        routing.job_ended()  # idle, holding what it holds
        return routing

    def job(self, *sha256s: str, model: str = "turbo") -> str:
        adapters = [{"name": f"brand{i}", "weight": 1.0, "sha256": sha}
                    for i, sha in enumerate(sha256s)]
        spec = new_job(JobKind.GENERATE if model == "turbo" else JobKind.EDIT, prompt="p",
                       width=SIDE, height=SIDE, model=model, adapters=adapters,
                       **({} if model == "turbo" else {"source_image": "in/x.png"}))
        self.jobs.submit(spec)
        self.jobs.mark_published(spec)  # as if a producer had sent its message
        return spec.job_id

    def idle(self) -> set[str]:
        return set(self.r.smembers(self.jobs.keys.idle(ModelType.TURBO)))

    def warm(self, sha256: str) -> set[str]:
        return set(self.r.smembers(self.jobs.keys.warm(ModelType.TURBO, sha256)))

    def field(self, job_id: str, name: str) -> str | None:
        value = self.r.hget(self.jobs.job_key(job_id), name)
        return value.decode() if isinstance(value, bytes) else value


def test_a_cold_worker_passes_to_an_idle_warm_one_once_and_only_then(fleet: Fleet) -> None:
    cold = fleet.worker("cold")
    warm = fleet.worker("warm", ACME)
    assert fleet.idle() == {"warm"} and fleet.warm(ACME) == {"warm"}
    assert fleet.r.exists(fleet.jobs.keys.warm(ModelType.TURBO, GLOBEX)) == 0

    job = fleet.job(ACME)
    assert cold.route(job) == Route(ModelType.TURBO, "warm")
    assert fleet.field(job, "passed_to") == "warm"
    assert fleet.idle() == set()  # picked: nobody else passes it a job meanwhile
    # Once passed, it runs wherever it lands, even on a worker without the adapter.
    warm.job_ended()
    assert cold.route(job) == Route(ModelType.TURBO)

    # The warm worker holds every adapter of its own job: it runs it.
    assert warm.route(fleet.job(ACME)) == Route(ModelType.TURBO)
    assert "warm" not in fleet.idle()  # it is rendering now
    # Busy, it is not passed anything: the cold worker runs the next acme job itself.
    assert cold.route(fleet.job(ACME)) == Route(ModelType.TURBO)
    warm.job_ended()
    # A job whose adapters nobody holds all of, or none, or another model's, runs here.
    assert cold.route(fleet.job(ACME, GLOBEX)) == Route(ModelType.TURBO)
    assert cold.route(fleet.job()) == Route(ModelType.TURBO)
    assert cold.route(fleet.job(ACME, model="edit")) == Route(ModelType.EDIT)
    assert fleet.idle() == {"warm"}
    with pytest.raises(JobNotFound):
        cold.route("no-such-job")


def test_dead_busy_or_disabled_peers_are_not_passed_to(fleet: Fleet) -> None:
    fleet.worker("ghost", ACME, alive=False)  # its record expired: it stopped beating
    cold = fleet.worker("cold")
    assert cold.route(fleet.job(ACME)) == Route(ModelType.TURBO)
    assert fleet.idle() == set() and fleet.warm(ACME) == set()  # the ghost was dropped

    never = fleet.worker("never", pass_s=0)
    fleet.worker("warm", ACME)
    assert never.route(fleet.job(ACME)) == Route(ModelType.TURBO)  # ZQ_ADAPTER_PASS_S=0
    running = fleet.job(ACME)
    fleet.jobs.claim_by_id(running, "other", 30, 5, ModelType.TURBO)
    assert cold.route(running) == Route(ModelType.TURBO)  # only queued jobs are passed
    assert fleet.field(running, "passed_to") is None


def test_what_a_worker_holds_follows_its_adapters_and_a_plain_worker_writes_nothing(
        fleet: Fleet) -> None:
    plain = fleet.worker("plain")
    plain.job_ended()
    assert fleet.r.keys("wr:warm:*") == [] and fleet.idle() == set()

    holding = Holding(ACME, GLOBEX)
    worker = WarmRouting(fleet.jobs, ModelType.TURBO, "w", holding, fleet.app, PASS_S)
    worker.job_ended()
    assert fleet.warm(ACME) == {"w"} and fleet.warm(GLOBEX) == {"w"} and fleet.idle() == {"w"}
    holding.sha256s = frozenset({GLOBEX})  # acme was evicted
    worker.job_ended()
    assert fleet.warm(ACME) == set() and fleet.warm(GLOBEX) == {"w"}

    # Rendering, it stays out of the idle set whatever its heartbeat says; once the job is
    # over (or it only forwarded another model's job) the heartbeat puts it back.
    assert worker.route(fleet.job()) == Route(ModelType.TURBO)
    fleet.r.delete(fleet.jobs.keys.warm(ModelType.TURBO, GLOBEX))  # as after a Redis restart
    worker.heartbeat()
    assert fleet.idle() == set() and fleet.warm(GLOBEX) == {"w"}
    worker.job_ended()
    assert worker.route(fleet.job(model="edit")) == Route(ModelType.EDIT)
    assert fleet.idle() == set()
    worker.heartbeat()
    assert fleet.idle() == {"w"}

    worker.close()
    assert fleet.warm(GLOBEX) == set() and fleet.idle() == set()
    worker.heartbeat()  # the beat goes on while the worker finishes its stores
    worker.job_ended()
    assert fleet.warm(GLOBEX) == set() and fleet.idle() == set()


def test_a_pass_not_taken_in_time_goes_back_to_the_shared_queue(fleet: Fleet) -> None:
    cold = fleet.worker("cold")
    fleet.worker("warm", ACME)
    untaken, taken = fleet.job(ACME), fleet.job(ACME)
    assert cold.route(untaken).peer == "warm"
    fleet.worker("warm", ACME)  # idle again
    assert cold.route(taken).peer == "warm"
    fleet.jobs.claim_by_id(taken, "warm", 30, 5, ModelType.TURBO)
    passed = fleet.jobs.keys.passed(ModelType.TURBO)
    assert cold.return_overdue() == []  # not yet due
    fleet.r.zadd(passed, {untaken: 0, taken: 0})  # the deadline went by
    assert cold.return_overdue() == [untaken]
    assert fleet.r.zcard(passed) == 0
    # Its message is on the shared queue again, and it is no longer owed one.
    bodies = [item for _, item in priority_items(fleet.r, "zq.turbo")]
    assert len(bodies) == 1 and untaken in bodies[0]
    assert not fleet.jobs.needs_publish(ModelType.TURBO)


def test_a_workers_own_queue_takes_passed_messages_and_goes_when_the_worker_goes(
        fleet: Fleet) -> None:
    fleet.worker("warm", ACME)
    cold = fleet.worker("cold")
    job = fleet.job(ACME)
    assert cold.route(job).peer == "warm"
    received = SimpleNamespace(properties={"priority": 3})
    with fleet.app.connection_for_write() as connection:
        own_queue(ModelType.TURBO, "warm").bind(connection.default_channel).declare()
    cold.pass_on(received, "zq.generate", job, "warm")  # type: ignore[arg-type]
    items = priority_items(fleet.r, own_queue_name(ModelType.TURBO, "warm"))
    assert len(items) == 1 and job in items[0][1]
    cold.forget(["warm"])
    assert priority_items(fleet.r, own_queue_name(ModelType.TURBO, "warm")) == []


def priority_items(r: redis.Redis, queue: str) -> list[tuple[str, str]]:
    """(list, item) of every message on a kombu queue, across its priority lists."""
    found = []
    for key in r.keys(queue + "*"):
        found += [(key, item) for item in r.lrange(key, 0, -1)]
    return found
