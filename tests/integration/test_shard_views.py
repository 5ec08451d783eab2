"""Fleet-wide views over two real Redis shards: ``zq exporter``, ``zq dead-letters``, ``zq status``.

Each shard is a private redis-server of this test's own (Celery's queue lists are not under
the key prefix, so shards must be separate servers, as they are in production). Jobs are
recorded and their real broker messages published on each shard; no worker runs, so they
wait. The views, run as the ``zq`` commands a person or Prometheus uses, must add the two
shards up and say what is where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from common.deadletters import DeadLetter, DeadLetterStore
from common.job import JobKind, new_job
from common.jobstore import JobStore
from common.queueing import make_celery, publish
from common.settings import Settings
from tests.conftest import require
from zq.embedded_redis import RedisServer, redis_executable, start_redis
from zq.processes import free_port

pytestmark = pytest.mark.integration

# Per shard: (turbo jobs, base jobs, dead letters) put there.
LAYOUT = ((3, 1, 2), (2, 0, 1))


@dataclass
class Fleet:
    """Two shards, the settings naming them, and the ``zq`` environment for them."""

    servers: list[RedisServer]
    settings: Settings
    env: dict[str, str]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    require(redis_executable() is not None, "redis-server")
    servers: list[RedisServer] = []
    try:
        for index in range(len(LAYOUT)):
            servers.append(start_redis(tmp_path / f"shard{index}"))
        urls = tuple(server.url for server in servers)
        prefix = f"zqs{uuid.uuid4().hex[:8]}"
        settings = replace(Settings(), redis_url=urls[0], redis_shards=urls,
                           key_prefix=prefix, storage_url=f"file://{tmp_path / 'store'}")
        env = {**os.environ, "ZQ_REDIS_URL": urls[0], "ZQ_REDIS_SHARDS": ",".join(urls),
               "ZQ_KEY_PREFIX": prefix, "ZQ_STORAGE_URL": settings.storage_url}
        yield Fleet(servers, settings, env)
    finally:
        for server in servers:
            server.stop()


def fill(fleet: Fleet) -> None:
    """Waiting jobs (real broker messages) and dead letters on each shard, per LAYOUT."""
    for index, (turbo, base, letters) in enumerate(LAYOUT):
        url = fleet.servers[index].url
        shard_settings = replace(fleet.settings, redis_url=url, redis_shards=())
        jobs = JobStore.from_url(url, fleet.settings.key_prefix)
        app = make_celery(shard_settings, name=f"test-shard-{index}")
        try:
            for model, count in (("turbo", turbo), ("base", base)):
                for n in range(count):
                    spec = new_job(JobKind.GENERATE, prompt=f"shard {index} {model} {n}",
                                   width=32, height=32, model=model)
                    assert jobs.submit(spec).created
                    publish(app, spec)
                    jobs.mark_published(spec)
        finally:
            app.close()
        store = DeadLetterStore(redis.Redis.from_url(url), fleet.settings.key_prefix)
        for n in range(letters):
            store.add(DeadLetter.of("unknown_job", f"on shard {index}, letter {n}", "zq.turbo",
                                    b"{}", worker=f"w{index}"))
        jobs.redis.close()


def zq(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zq", *args], capture_output=True, text=True,
                          env=fleet.env, timeout=60)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def exporter(fleet: Fleet, tmp_path: Path) -> Iterator[int]:
    """``zq exporter`` for the fleet, once it answers; yields its port."""
    port = free_port()
    log = tmp_path / "exporter.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zq", "exporter", "--port", str(port),
                                 "--address", "127.0.0.1"], env=fleet.env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_exporter_adds_up_the_shards_and_drops_the_totals_while_one_is_down(
        fleet: Fleet, exporter: int) -> None:
    fill(fleet)
    found = scrape(exporter)
    for index, (turbo, base, letters) in enumerate(LAYOUT):
        shard = str(index)
        assert value(found, "zq_shard_up", shard=shard) == 1
        assert value(found, "zq_shard_queue_waiting", model="turbo", shard=shard) == turbo
        assert value(found, "zq_shard_queue_load", model="turbo", shard=shard) == turbo
        assert value(found, "zq_shard_queue_load", model="base", shard=shard) == base
        assert value(found, "zq_shard_queue_running", model="turbo", shard=shard) == 0
        assert value(found, "zq_shard_workers", model="turbo", shard=shard) == 0
        assert value(found, "zq_shard_dead_letters", shard=shard) == letters
        age = value(found, "zq_shard_queue_oldest_waiting_seconds", model="turbo", shard=shard)
        assert age is not None and 0 < age < 120
    assert value(found, "zq_queue_waiting", model="turbo") == sum(s[0] for s in LAYOUT)
    assert value(found, "zq_queue_load", model="turbo") == sum(s[0] for s in LAYOUT)
    assert value(found, "zq_queue_load", model="base") == sum(s[1] for s in LAYOUT)
    assert value(found, "zq_queue_load", model="edit") == 0
    assert value(found, "zq_dead_letters") == sum(s[2] for s in LAYOUT)
    oldest = value(found, "zq_queue_oldest_waiting_seconds", model="turbo")
    assert oldest == max(value(found, "zq_shard_queue_oldest_waiting_seconds", model="turbo",
                               shard=str(index)) or 0.0 for index in range(len(LAYOUT)))

    # Shard 1 goes away: the scrape still answers, says so, and exports no partial total.
    fleet.servers[1].stop()
    found = scrape(exporter)
    assert value(found, "zq_shard_up", shard="0") == 1
    assert value(found, "zq_shard_up", shard="1") == 0
    assert value(found, "zq_shard_queue_load", model="turbo", shard="0") == LAYOUT[0][0]
    assert value(found, "zq_shard_queue_load", model="turbo", shard="1") is None
    assert not [name for name, _ in found if not name.startswith("zq_shard")]


def test_dead_letters_and_status_show_every_shard(fleet: Fleet) -> None:
    fill(fleet)
    total = sum(s[2] for s in LAYOUT)
    listed = zq(fleet, "dead-letters")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == (f"{total} dead letters (shard 0: {LAYOUT[0][2]}, "
                        f"shard 1: {LAYOUT[1][2]}), newest {total}:")
    assert "shard 0  " in listed.stdout and "shard 1  " in listed.stdout
    rows = [json.loads(line) for line in zq(fleet, "dead-letters", "--json").stdout.splitlines()]
    assert sorted((row["shard"], row["detail"]) for row in rows) == [
        (index, f"on shard {index}, letter {n}")
        for index, (_, _, letters) in enumerate(LAYOUT) for n in range(letters)]

    status = zq(fleet, "status", "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    queues = {q["model"]: q for q in view["queues"]}
    assert queues["turbo"]["waiting"] == sum(s[0] for s in LAYOUT)
    assert queues["base"]["waiting"] == sum(s[1] for s in LAYOUT)
    assert view["dead_letters"]["count"] == total
    assert [(s["shard"], s["waiting"], s["dead_letters"]) for s in view["shards"]] == [
        (index, turbo + base, letters) for index, (turbo, base, letters) in enumerate(LAYOUT)]
    text = zq(fleet, "status").stdout
    assert "shard   waiting" in text and f"dead letters: {total}" in text

    cleared = zq(fleet, "dead-letters", "--clear")
    assert cleared.stdout.strip() == (f"cleared {total} dead letters (shard 0: {LAYOUT[0][2]}, "
                                      f"shard 1: {LAYOUT[1][2]})")
    for server in fleet.servers:
        assert DeadLetterStore(redis.Redis.from_url(server.url),
                               fleet.settings.key_prefix).count() == 0

    # A shard that cannot be reached: the listing says which and exits 3 (run it again).
    fleet.servers[1].stop()
    down = zq(fleet, "dead-letters")
    assert down.returncode == 3
    assert "shard 1 (redis://127.0.0.1:" in down.stderr
