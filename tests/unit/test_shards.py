"""Shard routing and the shard list: which Redis a new job goes to, finding a known one."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis

from common.errors import ConfigError, JobNotFound
from common.job import JobKind, new_job
from common.jobstore import JobStore
from common.settings import Settings
from common.shards import Shard, Shards, shard_index


def test_shard_index_is_crc32_of_the_utf8_key_so_any_language_agrees() -> None:
    assert shard_index("night-city", 4) == zlib.crc32(b"night-city") % 4
    assert shard_index("夜の街", 3) == zlib.crc32("夜の街".encode()) % 3
    assert {shard_index(f"c{n}", 1) for n in range(50)} == {0}
    # Spread: 1000 conversations over 4 shards, none starved.
    counts = [0] * 4
    for n in range(1000):
        counts[shard_index(f"conversation-{n}", 4)] += 1
    assert min(counts) > 200


def test_shard_urls_default_to_the_one_redis_url() -> None:
    settings = Settings.from_env({"ZQ_REDIS_URL": "redis://r0:6379/0"})
    assert settings.redis_shards == ()
    assert settings.shard_urls == ("redis://r0:6379/0",)


def test_shards_are_read_in_order_from_commas_or_spaces() -> None:
    raw = " redis://a:1/0,redis://b:2/0\n rediss://c:3/1 "
    settings = Settings.from_env({"ZQ_REDIS_SHARDS": raw})
    assert settings.shard_urls == ("redis://a:1/0", "redis://b:2/0", "rediss://c:3/1")


@pytest.mark.parametrize(("raw", "says"), [
    ("redis://a:1/0,http://b:2/0", "ZQ_REDIS_SHARDS must start with redis://"),
    ("redis://a:1/0,redis://a:1/0", "twice"),
    (",".join(f"redis://h{n}:6379/0" for n in range(65)), "at most 64"),
])
def test_a_bad_shard_list_is_a_config_error_naming_the_variable(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        Settings.from_env({"ZQ_REDIS_SHARDS": raw})
    assert "ZQ_REDIS_SHARDS" in str(caught.value)


def test_a_repeated_shard_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ZQ_REDIS_SHARDS": "redis://:s3cret@a:1/0 redis://:s3cret@a:1/0"})
    assert "s3cret" not in str(caught.value)


# -- routing, on fakes standing in for each shard's Redis -------------------------------


@dataclass
class FakePipe:
    """Answers EXISTS from the fake Redis's keys, in one batch."""

    redis: FakeRedis
    asked: list[str] = field(default_factory=list)

    def exists(self, key: str) -> None:
        self.asked.append(key)

    def execute(self) -> list[int]:
        return [self.redis.exists(key) for key in self.asked]


@dataclass
class FakeRedis:
    keys: set[str] = field(default_factory=set)
    pipelines: int = 0
    down: bool = False

    def pipeline(self, transaction: bool = True) -> FakePipe:
        self.pipelines += 1
        return FakePipe(self)

    def exists(self, key: str) -> int:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to shard")
        return int(key in self.keys)


@dataclass
class FakeBatches:
    redis: FakeRedis

    def exists(self, batch_id: str) -> bool:
        return bool(self.redis.exists(f"zq:batch:{batch_id}"))


@dataclass
class FakeJobs:
    redis: FakeRedis = field(default_factory=FakeRedis)

    def job_key(self, job_id: str) -> str:
        return f"zq:job:{job_id}"

    @property
    def batches(self) -> FakeBatches:
        return FakeBatches(self.redis)


def fake_shards(count: int) -> tuple[Shards, list[FakeRedis]]:
    stores = [FakeJobs() for _ in range(count)]
    shards = [Shard(index, f"redis://shard{index}", cast(JobStore, jobs), Settings())
              for index, jobs in enumerate(stores)]
    return Shards(shards), [jobs.redis for jobs in stores]


def conversation_on(shard: int, count: int) -> str:
    return next(f"c{n}" for n in range(1000) if shard_index(f"c{n}", count) == shard)


def test_a_new_conversation_goes_to_its_keys_shard() -> None:
    shards, _ = fake_shards(3)
    for target in range(3):
        spec = new_job(JobKind.GENERATE, prompt="p", conversation_id=conversation_on(target, 3))
        assert shards.for_new(spec).index == target


def test_a_turn_follows_its_parent_whatever_its_conversation_says() -> None:
    shards, redis = fake_shards(3)
    redis[2].keys.add("zq:job:parent")
    spec = new_job(JobKind.EDIT, prompt="p", parent_id="parent",
                   conversation_id=conversation_on(0, 3))
    assert shards.for_new(spec).index == 2


def test_a_turn_of_an_unknown_parent_is_refused() -> None:
    shards, _ = fake_shards(2)
    with pytest.raises(JobNotFound, match="parent job ghost"):
        shards.for_new(new_job(JobKind.EDIT, prompt="p", parent_id="ghost"))


def test_a_known_job_is_resubmitted_where_it_is_even_after_the_list_grew() -> None:
    shards, redis = fake_shards(2)
    spec = new_job(JobKind.GENERATE, prompt="p", conversation_id=conversation_on(0, 2))
    redis[1].keys.add(f"zq:job:{spec.job_id}")
    assert shards.for_new(spec).index == 1


def test_a_job_seen_once_is_found_again_without_asking_any_shard() -> None:
    shards, redis = fake_shards(3)
    redis[2].keys.add("zq:job:j1")
    assert shards.holding("j1").index == 2
    asked = [r.pipelines for r in redis]
    assert shards.holding("j1").index == 2
    assert [r.pipelines for r in redis] == asked
    with pytest.raises(JobNotFound, match="job nowhere is not known"):
        shards.holding("nowhere")


def test_locating_many_asks_each_shard_once_and_stops_when_all_are_found() -> None:
    shards, redis = fake_shards(3)
    redis[0].keys.add("zq:job:a")
    redis[1].keys.add("zq:job:b")
    found = shards.locate_many(["a", "b", "missing"])
    assert {job_id: shard.index for job_id, shard in found.items()} == {"a": 0, "b": 1}
    assert [r.pipelines for r in redis] == [1, 1, 1]
    shards2, redis2 = fake_shards(3)
    redis2[0].keys.update({"zq:job:a", "zq:job:b"})
    assert set(shards2.locate_many(["a", "b"])) == {"a", "b"}
    assert [r.pipelines for r in redis2] == [1, 0, 0]


def test_one_shard_is_never_searched() -> None:
    shards, redis = fake_shards(1)
    assert shards.locate("anything") is shards.home
    assert redis[0].pipelines == 0
    assert shards.known("anything") is False  # asked, not assumed


def test_a_batch_stays_on_the_shard_that_recorded_it() -> None:
    shards, redis = fake_shards(3)
    assert shards.for_batch("b1").index == shard_index("b1", 3)
    elsewhere = (shard_index("b1", 3) + 1) % 3
    redis[elsewhere].keys.add("zq:batch:b1")
    assert shards.for_batch("b1").index == elsewhere


def test_no_shards_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Shards([])


def test_each_shards_sender_publishes_to_that_shards_redis() -> None:
    shards, _ = fake_shards(2)
    apps: list[Any] = [shard.app for shard in shards]
    assert [app.conf.broker_url for app in apps] == ["redis://shard0", "redis://shard1"]
    assert shards.shards[1].app is apps[1]  # made once


def test_a_shard_that_is_down_stops_only_what_may_be_on_it() -> None:
    shards, redis_of = fake_shards(2)
    redis_of[1].down = True
    redis_of[0].keys.add("zq:job:on-0")
    # Found on a shard that answers: the down one does not matter.
    assert shards.holding("on-0").index == 0
    # Not found while a shard did not answer: it may be there, so that is the error.
    with pytest.raises(redis.ConnectionError):
        shards.holding("anywhere")
    # A new conversation routed to the shard that answers goes in...
    up = new_job(JobKind.GENERATE, prompt="p", conversation_id=conversation_on(0, 2))
    assert shards.for_new(up).index == 0
    # ... one routed to the down shard is routed there (and fails on submit, not here).
    down = new_job(JobKind.GENERATE, prompt="p", conversation_id=conversation_on(1, 2))
    assert shards.for_new(down).index == 1
    # A turn whose parent may be on the down shard cannot be placed.
    with pytest.raises(redis.ConnectionError):
        shards.for_new(new_job(JobKind.EDIT, prompt="p", parent_id="somewhere"))


def test_a_batch_is_found_past_a_shard_that_is_down_unless_it_is_the_batchs_own() -> None:
    shards, redis_of = fake_shards(2)
    home = shard_index("b1", 2)
    redis_of[1 - home].down = True
    assert shards.for_batch("b1").index == home
    redis_of[1 - home].down, redis_of[home].down = False, True
    with pytest.raises(redis.ConnectionError):
        shards.for_batch("b1")


def test_an_id_made_just_now_is_routed_without_asking_any_shard() -> None:
    shards, redis_of = fake_shards(4)
    spec = new_job(JobKind.GENERATE, prompt="p", conversation_id=conversation_on(3, 4))
    assert shards.for_new(spec, new_id=True).index == 3
    assert [r.pipelines for r in redis_of] == [0, 0, 0, 0]
    assert shards.for_new(spec).index == 3  # a resubmission is looked for everywhere
    assert [r.pipelines for r in redis_of] == [1, 1, 1, 1]


def test_a_batch_found_once_is_not_looked_for_again() -> None:
    shards, redis_of = fake_shards(3)
    elsewhere = (shard_index("b1", 3) + 1) % 3
    redis_of[elsewhere].keys.add("zq:batch:b1")
    assert shards.for_batch("b1").index == elsewhere
    redis_of[elsewhere].down = True  # asking again would now fail
    assert shards.for_batch("b1").index == elsewhere


def test_grouping_ids_by_shard_keeps_first_order_and_names_the_unknown() -> None:
    shards, redis_of = fake_shards(2)
    redis_of[1].keys.update({"zq:job:a", "zq:job:c"})
    redis_of[0].keys.add("zq:job:b")
    groups, unknown = shards.grouped(["a", "b", "x", "c", "a"])
    assert [(shard.index, ids) for shard, ids in groups] == [(1, ["a", "c"]), (0, ["b"])]
    assert unknown == ["x"]
