"""Fleet-wide views over several shards (exporter, overview, dead letters), on fake Redis.

The fake holds just what these readers touch (lists, sets, hashes, pipelines) and logs every
call, so a test also sees how many calls a view makes; one can be "down" (every call
raises ``redis.ConnectionError``, as an unreachable Redis does).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from common.deadletters import DeadLetter, DeadLetterStore, FleetDeadLetters
from common.errors import ServiceUnavailable
from common.job import ModelType
from common.keys import Keys
from common.queueload import QueueLoad, fleet_loads, read_loads
from zq import dead_letters as dead_letters_cli
from zq.exporter import QueueLoadCollector
from zq.overview import overview, render

PREFIX = "zqu"
NOW = time.time()  # dead letters' times and render's clock (ages are read live)


class FakeRedis:
    """A dict-backed stand-in for the few Redis commands the views use."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.calls: list[str] = []
        self.down = False

    def _call(self, name: str) -> None:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        self.calls.append(name)

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def llen(self, key: str) -> int:
        self._call("llen")
        return len(self.data.get(key, []))

    def lindex(self, key: str, index: int) -> Any:
        self._call("lindex")
        items = self.data.get(key, [])
        return items[index] if -len(items) <= index < len(items) else None

    def lrange(self, key: str, start: int, end: int) -> list[Any]:
        self._call("lrange")
        return list(self.data.get(key, [])[start:end + 1])

    def lpush(self, key: str, value: Any) -> int:
        self._call("lpush")
        self.data.setdefault(key, []).insert(0, value)
        return len(self.data[key])

    def ltrim(self, key: str, start: int, end: int) -> bool:
        self._call("ltrim")
        self.data[key] = self.data.get(key, [])[start:end + 1]
        return True

    def delete(self, key: str) -> int:
        self._call("delete")
        return int(self.data.pop(key, None) is not None)

    def scard(self, key: str) -> int:
        self._call("scard")
        return len(self.data.get(key, set()))

    def smembers(self, key: str) -> set[Any]:
        self._call("smembers")
        return set(self.data.get(key, set()))

    def hvals(self, key: str) -> list[Any]:
        self._call("hvals")
        return list(self.data.get(key, {}).values())

    def hget(self, key: str, name: str) -> Any:
        self._call("hget")
        return self.data.get(key, {}).get(name)

    def hgetall(self, key: str) -> dict[str, Any]:
        self._call("hgetall")
        return dict(self.data.get(key, {}))


class FakePipeline:
    """Queues calls and runs them on ``execute`` (one round trip, logged once)."""

    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.queued: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any) -> FakePipeline:
            self.queued.append((name, args))
            return self
        return queue

    def execute(self) -> list[Any]:
        self.client._call("pipeline")
        calls = self.client.calls
        results = [getattr(self.client, name)(*args) for name, args in self.queued]
        del calls[len(calls) - len(self.queued):]  # a pipeline is one round trip
        return results


def as_redis(fake: FakeRedis) -> redis.Redis:
    return cast(redis.Redis, fake)


def message(job_id: str, queue: str = "zq.turbo") -> str:
    """A Celery message as kombu keeps it in a Redis list."""
    body = json.dumps([[job_id], {}, {}]).encode()
    return json.dumps({"body": base64.b64encode(body).decode(),
                       "properties": {"body_encoding": "base64",
                                      "delivery_info": {"routing_key": queue}}})


def shard(waiting: dict[ModelType, int], *, queued_s_ago: float = 10.0, reserved: int = 0,
          running: int = 0, workers: int = 0, ready: int = 0, letters: int = 0,
          name: str = "s") -> FakeRedis:
    """A shard with jobs waiting (queued ``queued_s_ago``), held, workers, dead letters."""
    fake = FakeRedis()
    keys = Keys(PREFIX)
    now = time.time()
    for model, count in waiting.items():
        queue = f"zq.{model.value}"
        for n in range(count):
            job_id = f"{name}-{model.value}-{n}"
            fake.data.setdefault(queue, []).insert(0, message(job_id, queue))
            fake.data[keys.job(job_id)] = {"queued_at": str(now - queued_s_ago - n)}
    fake.data["unacked"] = {f"tag{n}": json.dumps([message(f"held{n}"), "", "zq.turbo"])
                            for n in range(reserved)}
    fake.data[keys.running(ModelType.TURBO)] = {f"{name}-run{n}" for n in range(running)}
    fake.data[keys.workers(ModelType.TURBO)] = {f"{name}-w{n}" for n in range(workers)}
    for n in range(workers):
        fake.data[keys.worker(f"{name}-w{n}")] = {"ready": "1" if n < ready else "0",
                                                  "pid": str(100 + n), "host": "h"}
    store = DeadLetterStore(as_redis(fake), PREFIX)
    for n in range(letters):
        store.add(DeadLetter.of("body", f"{name} letter {n}", "zq.turbo", b"x",
                                worker=f"{name}-w", at=NOW - 100 + n))
    fake.calls.clear()
    return fake


def samples(collector: QueueLoadCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in collector.collect():
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


# -- queue loads ---------------------------------------------------------------------------

def test_fleet_loads_add_counts_take_the_longest_wait_and_sum_each_shards_load() -> None:
    def load(**fields: Any) -> QueueLoad:
        base: dict[str, Any] = {"model": ModelType.TURBO, "waiting": 0, "reserved": 0,
                                "running": 0, "oldest_waiting_s": 0.0, "workers": 0,
                                "ready_workers": 0}
        return QueueLoad(**{**base, **fields})

    first = [load(waiting=3, reserved=2, running=0, oldest_waiting_s=5.0, workers=2,
                  ready_workers=1)]
    second = [load(waiting=1, reserved=0, running=2, oldest_waiting_s=40.0, workers=1,
                   ready_workers=1), load(model=ModelType.BASE, waiting=4)]
    totals = {total.model: total for total in fleet_loads([first, second])}
    turbo = totals[ModelType.TURBO]
    assert (turbo.waiting, turbo.reserved, turbo.running, turbo.workers,
            turbo.ready_workers) == (4, 2, 2, 3, 2)
    assert turbo.oldest_waiting_s == 40.0
    # Shard 0 holds 2 (reserved), shard 1 holds 2 others (running): 4 + 4, not 4 + max(2, 2).
    assert turbo.load == (3 + 2) + (1 + 2)
    assert totals[ModelType.BASE].load == 4 and totals[ModelType.EDIT].load == 0
    assert [total.model for total in fleet_loads([])] == list(ModelType)
    assert fleet_loads([])[0].oldest_waiting_s == 0.0


# -- exporter ------------------------------------------------------------------------------

def test_one_shard_exports_todays_families_only_with_no_extra_redis_calls() -> None:
    fake = shard({ModelType.TURBO: 2}, workers=1, ready=1, letters=1)
    found = samples(QueueLoadCollector(as_redis(fake), PREFIX))
    assert not [name for name, _ in found if name.startswith("zq_shard")]
    assert value(found, "zq_queue_waiting", model="turbo") == 2
    assert value(found, "zq_dead_letters") == 1
    exported_calls = list(fake.calls)
    fake.calls.clear()
    read_loads(as_redis(fake), PREFIX)
    DeadLetterStore(as_redis(fake), PREFIX).count()
    assert exported_calls == fake.calls  # exactly what one reading of one Redis makes
    # A list of one client is the same collector.
    assert samples(QueueLoadCollector([as_redis(fake)], PREFIX)).keys() == found.keys()


def test_several_shards_export_fleet_totals_and_per_shard_series() -> None:
    first = shard({ModelType.TURBO: 3, ModelType.BASE: 1}, queued_s_ago=10, reserved=1,
                  workers=2, ready=1, letters=2, name="a")
    second = shard({ModelType.TURBO: 2}, queued_s_ago=60, running=2, workers=1, ready=1,
                   letters=1, name="b")
    found = samples(QueueLoadCollector([as_redis(first), as_redis(second)], PREFIX))

    assert value(found, "zq_shard_up", shard="0") == 1
    assert value(found, "zq_shard_up", shard="1") == 1
    assert value(found, "zq_queue_waiting", model="turbo") == 5
    assert value(found, "zq_queue_waiting", model="base") == 1
    assert value(found, "zq_queue_reserved", model="turbo") == 1
    assert value(found, "zq_queue_running", model="turbo") == 2
    assert value(found, "zq_queue_load", model="turbo") == (3 + 1) + (2 + 2)
    assert value(found, "zq_workers", model="turbo") == 3
    assert value(found, "zq_workers_ready", model="turbo") == 2
    assert value(found, "zq_dead_letters") == 3
    oldest = value(found, "zq_queue_oldest_waiting_seconds", model="turbo")
    assert oldest is not None and 60 <= oldest < 90  # shard 1's, not a sum

    assert value(found, "zq_shard_queue_waiting", model="turbo", shard="0") == 3
    assert value(found, "zq_shard_queue_waiting", model="turbo", shard="1") == 2
    assert value(found, "zq_shard_queue_load", model="turbo", shard="0") == 4
    assert value(found, "zq_shard_queue_load", model="turbo", shard="1") == 4
    assert value(found, "zq_shard_queue_load", model="base", shard="0") == 1
    assert value(found, "zq_shard_queue_reserved", model="turbo", shard="0") == 1
    assert value(found, "zq_shard_queue_running", model="turbo", shard="1") == 2
    assert value(found, "zq_shard_workers", model="turbo", shard="0") == 2
    assert value(found, "zq_shard_workers_ready", model="turbo", shard="1") == 1
    assert value(found, "zq_shard_dead_letters", shard="0") == 2
    assert value(found, "zq_shard_dead_letters", shard="1") == 1
    shard_oldest = value(found, "zq_shard_queue_oldest_waiting_seconds", model="turbo",
                         shard="0")
    assert shard_oldest is not None and 10 <= shard_oldest < 60


def test_a_shard_that_cannot_be_read_drops_its_series_and_the_totals_not_the_scrape(
        caplog: pytest.LogCaptureFixture) -> None:
    first = shard({ModelType.TURBO: 3}, letters=1, name="a")
    second = shard({ModelType.TURBO: 2}, name="b")
    second.down = True
    collector = QueueLoadCollector([as_redis(first), as_redis(second)], PREFIX)
    found = samples(collector)
    assert value(found, "zq_shard_up", shard="0") == 1
    assert value(found, "zq_shard_up", shard="1") == 0
    assert value(found, "zq_shard_queue_load", model="turbo", shard="0") == 3
    assert value(found, "zq_shard_dead_letters", shard="0") == 1
    assert not [labels for name, labels in found if ("shard", "1") in labels
                and name != "zq_shard_up"]
    # No partial totals: KEDA and alerts see "no data", not a fleet that looks idle.
    assert not [name for name, _ in found if not name.startswith("zq_shard")]
    assert "shard 1 cannot be read" in caplog.text
    # The exposition still renders (the scrape succeeds).
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'zq_shard_up{shard="1"} 0.0' in text
    assert 'zq_shard_queue_load{model="turbo",shard="0"} 3.0' in text
    # Back up: totals again.
    second.down = False
    assert value(samples(collector), "zq_queue_load", model="turbo") == 5


# -- dead letters --------------------------------------------------------------------------

def test_fleet_dead_letters_count_merge_newest_first_and_clear_every_shard() -> None:
    first = shard({}, letters=3, name="a")  # at NOW-100, -99, -98
    second = shard({}, letters=2, name="b")  # at NOW-100, -99
    store = DeadLetterStore(as_redis(second), PREFIX)
    store.add(DeadLetter.of("unknown_job", "b newest", "zq.edit", b"y", at=NOW - 1))
    fleet = FleetDeadLetters([DeadLetterStore(as_redis(first), PREFIX), store])
    assert fleet.counts() == [3, 3] and fleet.count() == 6
    newest = fleet.newest(3)
    assert [(item.shard, item.letter.detail) for item in newest] == [
        (1, "b newest"), (0, "a letter 2"), (0, "a letter 1")]
    assert newest[0].to_dict()["shard"] == 1 and newest[0].to_dict()["reason"] == "unknown_job"
    assert len(fleet.newest(100)) == 6 and fleet.newest(0) == []
    assert fleet.clear() == [3, 3]
    assert fleet.count() == 0


def test_fleet_dead_letters_name_an_unreachable_shard() -> None:
    first, second = shard({}, letters=1), shard({}, letters=1)
    second.down = True
    fleet = FleetDeadLetters([DeadLetterStore(as_redis(first), PREFIX),
                              DeadLetterStore(as_redis(second), PREFIX)],
                             ["redis://a:6379", "redis://b:6379"])
    with pytest.raises(ServiceUnavailable, match=r"shard 1 \(redis://b:6379\)"):
        fleet.count()
    # One shard: the store's own error, as before.
    with pytest.raises(redis.ConnectionError):
        FleetDeadLetters([DeadLetterStore(as_redis(second), PREFIX)]).count()


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            fakes: dict[str, FakeRedis], *argv: str) -> str:
    urls = list(fakes)
    monkeypatch.setenv("ZQ_KEY_PREFIX", PREFIX)
    monkeypatch.setenv("ZQ_REDIS_URL", urls[0])
    if len(urls) > 1:
        monkeypatch.setenv("ZQ_REDIS_SHARDS", ",".join(urls))
    else:
        monkeypatch.delenv("ZQ_REDIS_SHARDS", raising=False)
    monkeypatch.setattr(DeadLetterStore, "from_url", classmethod(
        lambda cls, url, prefix="zq", max_len=10_000: cls(as_redis(fakes[url]), prefix,
                                                          max_len)))
    args = argparse.Namespace(limit=20, json=False, clear=False)
    for flag in argv:
        setattr(args, flag, True)
    assert dead_letters_cli.run(args) == 0
    return capsys.readouterr().out


def test_dead_letters_command_lists_and_clears_every_shard(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fakes = {"redis://a:6379/0": shard({}, letters=2, name="a"),
             "redis://b:6379/0": shard({}, letters=1, name="b")}
    text = run_cli(monkeypatch, capsys, fakes)
    assert text.splitlines()[0] == "3 dead letters (shard 0: 2, shard 1: 1), newest 3:"
    assert "shard 0  " in text and "shard 1  " in text and "b letter 0" in text
    rows = [json.loads(line) for line in run_cli(monkeypatch, capsys, fakes, "json").splitlines()]
    assert sorted((row["shard"], row["detail"]) for row in rows) == [
        (0, "a letter 0"), (0, "a letter 1"), (1, "b letter 0")]
    cleared = json.loads(run_cli(monkeypatch, capsys, fakes, "clear", "json"))
    assert cleared == {"cleared": 3, "by_shard": [2, 1]}
    assert all(fake.data.get(Keys(PREFIX).dead_letters) is None for fake in fakes.values())


def test_dead_letters_command_with_one_shard_prints_as_before(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fakes = {"redis://a:6379/0": shard({}, letters=2, name="a")}
    text = run_cli(monkeypatch, capsys, fakes)
    assert text.splitlines()[0] == "2 dead letters, newest 2:"
    assert "shard" not in text
    assert fakes["redis://a:6379/0"].calls == ["lrange", "llen"]
    row = json.loads(run_cli(monkeypatch, capsys, fakes, "json").splitlines()[0])
    assert "shard" not in row
    assert run_cli(monkeypatch, capsys, fakes, "clear").strip() == "cleared 2 dead letters"


# -- overview ------------------------------------------------------------------------------

def test_overview_of_several_shards_sums_and_breaks_down() -> None:
    first = shard({ModelType.TURBO: 3}, workers=1, ready=1, letters=2, name="a")
    second = shard({ModelType.TURBO: 2, ModelType.EDIT: 1}, running=1, workers=2, letters=1,
                   name="b")
    view = overview([as_redis(first), as_redis(second)], PREFIX)
    queues = {q["model"]: q for q in view["queues"]}
    assert (queues["turbo"]["waiting"], queues["turbo"]["running"],
            queues["turbo"]["workers"], queues["turbo"]["ready_workers"]) == (5, 1, 3, 1)
    assert queues["edit"]["waiting"] == 1
    assert view["dead_letters"]["count"] == 3
    assert {letter["shard"] for letter in view["dead_letters"]["newest"]} == {0, 1}
    assert sorted((w["shard"], w["name"]) for w in view["workers"]) == [
        (0, "a-w0"), (1, "b-w0"), (1, "b-w1")]
    assert [(s["shard"], s["waiting"], s["running"], s["load"], s["workers"],
             s["dead_letters"]) for s in view["shards"]] == [(0, 3, 0, 3, 1, 2),
                                                             (1, 3, 1, 4, 2, 1)]
    assert view["unreachable_shards"] == []
    text = render(view, now=NOW)
    assert "shard   waiting  reserved  running     load  workers  dead  oldest" in text
    assert "a-w0  turbo  shard 0  ready" in text
    assert "dead letters: 3" in text


def test_overview_leaves_out_and_names_an_unreachable_shard() -> None:
    first = shard({ModelType.TURBO: 3}, letters=1, name="a")
    second = shard({ModelType.TURBO: 2}, name="b")
    second.down = True
    view = overview([as_redis(first), as_redis(second)], PREFIX)
    assert {q["model"]: q["waiting"] for q in view["queues"]}["turbo"] == 3
    assert view["unreachable_shards"] == [1]
    assert "Connection refused" in view["shards"][1]["error"]
    text = render(view, now=NOW)
    assert "1       unreachable: Error 111" in text
    assert "the totals above leave out shard 1: cannot be reached" in text


def test_overview_of_one_shard_is_unchanged() -> None:
    fake = shard({ModelType.TURBO: 1}, workers=1, ready=1, letters=1, name="a")
    view = overview(as_redis(fake), PREFIX)
    assert set(view) == {"queues", "workers", "dead_letters"}
    assert "shard" not in view["workers"][0] and "shard" not in view["dead_letters"]["newest"][0]
    assert "shard" not in render(view, now=NOW)
    assert overview([as_redis(fake)], PREFIX) == view
