"""What one job costs Redis: commands per job through a real worker, so a regression shows.

Counted from the server's own ``INFO commandstats`` (commands run inside scripts
included), net of what the same worker does when idle over as long a window. The bench
(``bench/broker_scale.py``) measures CPU; this guards the count.
"""

from __future__ import annotations

import time

import pytest
import redis

from common.job import ModelType, new_job
from common.settings import Settings
from producer.client import Client
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration
JOBS = 30
# Measured 45 per job (54 before issue 12), about half of them inside the submit, claim
# and finish scripts, 4 for the waiting client (subscribe, read, the record pushed,
# unsubscribe): room for noise, not for a new command per job.
BUDGET_PER_JOB = 48
OWN = {"info", "config", "ping", "hello", "client", "select"}  # this test's and connections'


def commands(server: redis.Redis) -> dict[str, int]:
    """Calls per command since the last reset, without the test's own."""
    stats: dict[str, dict[str, int]] = server.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()
            if name.removeprefix("cmdstat_").split("|")[0] not in OWN}


def run_jobs(client: Client, name: str) -> None:
    """Submit ``JOBS`` small jobs and wait for each, as a producer would."""
    specs = [new_job("generate", prompt=f"{name} {i}", width=32, height=32, steps=2,
                     model="turbo", seed=i) for i in range(JOBS)]
    for spec in specs:
        client.submit(spec)
    for spec in specs:
        assert client.wait(spec.job_id, timeout_s=120).status.value == "succeeded"


def test_commands_per_job_stay_within_budget(cluster: Cluster, client: Client) -> None:
    cluster.start(ModelType.TURBO)
    server = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    time.sleep(1.0)  # past the worker's start-up chores

    server.config_resetstat()
    started = time.monotonic()
    run_jobs(client, "count")
    busy = commands(server)
    window_s = time.monotonic() - started

    server.config_resetstat()
    time.sleep(window_s)
    idle = commands(server)

    net = sum(busy.values()) - sum(idle.values())
    per_job = net / JOBS
    top = sorted(busy.items(), key=lambda item: -item[1])
    assert per_job <= BUDGET_PER_JOB, (per_job, top, idle)
    # The shape, too: one script each to submit, claim and finish (the beats' own
    # scripts are in the idle count), and no record read by the worker outside them.
    def net_of(command: str) -> int:
        return busy.get(command, 0) - idle.get(command, 0)

    assert net_of("evalsha") <= 3 * JOBS + 5, top  # +5: a beat may fall in either window
    assert net_of("hgetall") <= 3 * JOBS + 2, top  # in the claim; the waiter's two reads


def test_without_task_events_a_job_publishes_only_its_end(cluster: Cluster) -> None:
    cluster.start(ModelType.TURBO, extra_env={"ZQ_TASK_EVENTS": "0"})
    client = Client(Settings.from_env({**cluster.env, "ZQ_TASK_EVENTS": "0"}))
    server = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    time.sleep(1.0)
    server.config_resetstat()
    run_jobs(client, "quiet")
    # One publish per job: its end, to the waiting client (with events: three).
    assert commands(server).get("publish", 0) <= JOBS + 2
