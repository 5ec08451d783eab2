"""Two independent Redis shards, each with its own real workers: where jobs live, and
finding them again from a client that never saw them."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from common.job import ModelType
from common.settings import Settings
from common.shards import shard_index
from common.status import JobStatus
from producer.api.app import create_app
from producer.api.auth import ApiKeys
from producer.api.conversations import tree
from producer.batch import Batches
from producer.client import Client
from producer.conversation import Conversation
from tests.integration.cluster import Cluster, WorkerProcess
from tests.integration.conftest import own_redis
from zq.embedded_redis import RedisServer
from zq.exporter import QueueLoadCollector, shard_clients

pytestmark = pytest.mark.integration
SIDE = 32


@pytest.fixture(scope="module")
def second_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Shard 1: a Redis of its own, beside the session's (shard 0)."""
    with own_redis(tmp_path_factory.mktemp("redis-shard1")) as server:
        yield server


@pytest.fixture
def sharded(cluster: Cluster, second_redis: RedisServer) -> Iterator[list[Cluster]]:
    """The test's cluster as shard 0 and a twin on shard 1 (flushed first); both name
    both shards in ZQ_REDIS_SHARDS. A worker started on either serves that shard only."""
    redis.Redis.from_url(second_redis.url).flushall()
    cluster.env["ZQ_REDIS_SHARDS"] = f"{cluster.redis_url},{second_redis.url}"
    twin = Cluster(env={**cluster.env, "ZQ_REDIS_URL": second_redis.url},
                   logs=cluster.logs, redis_url=second_redis.url, prefix=cluster.prefix)
    yield [cluster, twin]
    twin.stop_all()


def conversation_on(shard: int, label: str) -> str:
    """A conversation id that routes to ``shard`` of two."""
    names = (f"{label}-{n}" for n in itertools.count())
    return next(name for name in names if shard_index(name, 2) == shard)


def holders(urls: list[str], prefix: str, job_id: str) -> list[int]:
    """The shards whose Redis holds ``job_id``'s record."""
    return [index for index, url in enumerate(urls)
            if redis.Redis.from_url(url).exists(f"{prefix}:job:{job_id}")]


def start_workers(shards: list[Cluster], models: tuple[ModelType, ...]) -> None:
    """One worker per model type on each of ``shards``."""
    started: list[tuple[Cluster, WorkerProcess]] = []
    for shard in shards:  # all at once: their boots overlap
        index = urls_of(shard).index(shard.redis_url)
        started += [(shard, shard.start(model, name=f"{model.value}-s{index}@test", wait=False))
                    for model in models]
    for shard, worker in started:
        shard.wait_ready(worker)


def exported(settings: Settings) -> dict[tuple[str, str | None, str | None], float]:
    """What ``zq exporter`` serves now: (family, model, shard) -> value."""
    collector = QueueLoadCollector(shard_clients(settings), settings.key_prefix)
    return {(sample.name, sample.labels.get("model"), sample.labels.get("shard")): sample.value
            for family in collector.collect() for sample in family.samples}


def urls_of(cluster: Cluster) -> list[str]:
    """The shards' Redis URLs, in routing order."""
    return cluster.env["ZQ_REDIS_SHARDS"].split(",")


def test_each_conversation_lives_on_one_shard_and_is_served_by_its_workers(
        sharded: list[Cluster]) -> None:
    urls, prefix = urls_of(sharded[0]), sharded[0].prefix
    client = Client(Settings.from_env(sharded[0].env))
    chats = {shard: Conversation(client, conversation_on(shard, "chat"), width=SIDE,
                                 height=SIDE, steps=2, seed=shard)
             for shard in (0, 1)}
    for chat in chats.values():
        chat.say("a night city")
        chat.say("brighter, add neon signs")
        chat.refine("HD redraw")
    turns = {shard: [turn.job_id for turn in chat.turns] for shard, chat in chats.items()}
    # Recorded before any worker runs: each turn on its conversation's shard, only there.
    for shard, ids in turns.items():
        assert [holders(urls, prefix, job_id) for job_id in ids] == [[shard]] * 3

    # The exporter adds the shards up: one first turn waits for turbo on each shard.
    loads = exported(Settings.from_env(sharded[0].env))
    assert loads[("zq_queue_load", "turbo", None)] == 2
    assert loads[("zq_shard_queue_load", "turbo", "0")] == 1
    assert loads[("zq_shard_queue_load", "turbo", "1")] == 1
    assert loads[("zq_queue_load", "edit", None)] == 0  # the edits wait on their parents

    start_workers(sharded, (ModelType.TURBO, ModelType.EDIT, ModelType.BASE))
    assert all("is not one of ZQ_REDIS_SHARDS" not in worker.log_text()
               for shard in sharded for worker in shard.workers)
    records = client.wait_all(turns[0] + turns[1], timeout_s=180)
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 6, [r.error for r in records]
    # Each turn ran on a worker of its own shard, after its parent.
    for record in records:
        shard = holders(urls, prefix, record.spec.job_id)[0]
        assert record.worker is not None and record.worker.endswith(f"-s{shard}@test")
    # A client that never saw these jobs finds them on their shard: status, tree, image.
    stranger = Client(Settings.from_env(sharded[0].env))
    for shard, ids in turns.items():
        assert stranger.status(ids[-1]).spec.parent_id == ids[1]
        conversation = tree(stranger, chats[shard].conversation_id)
        assert conversation["jobs"] == 3
        assert conversation["turns"][0]["job"]["job_id"] == ids[0]
        with Image.open(io.BytesIO(stranger.result(ids[0], 30))) as image:
            assert image.size == (SIDE, SIDE)
    # A new turn from the stranger follows its parent to the parent's shard.
    edit = stranger.edit("make the left building Chinese eaves", parent=turns[1][1])
    assert holders(urls, prefix, edit.job_id) == [1]
    assert edit.wait(120).status is JobStatus.SUCCEEDED


def test_a_batch_and_its_rows_live_on_the_batch_shard(sharded: list[Cluster],
                                                      tmp_path: Path) -> None:
    urls, prefix = urls_of(sharded[0]), sharded[0].prefix
    client = Client(Settings.from_env(sharded[0].env))
    manifest = tmp_path / "rows.csv"
    manifest.write_text("sku,prompt\n" + "".join(f"S{i},item {i}\n" for i in range(6))
                        + "BAD,\n")
    batches = Batches(client)
    defaults = {"width": SIDE, "height": SIDE, "steps": 2}
    submission = batches.submit(manifest, defaults)
    home = shard_index(submission.batch_id, 2)
    rows = batches.results_light(submission.batch_id)
    assert len(rows) == 7 and submission.jobs == 6
    # Row ids alone would route to both shards; the batch keeps them together.
    spread = {shard_index(row.job_id, 2) for row in rows if row.job_id}
    assert spread == {0, 1}
    for row in rows:
        if row.job_id:
            assert holders(urls, prefix, row.job_id) == [home]
    assert redis.Redis.from_url(urls[home]).exists(f"{prefix}:batch:{submission.batch_id}")
    assert not redis.Redis.from_url(urls[1 - home]).exists(
        f"{prefix}:batch:{submission.batch_id}")

    start_workers([sharded[home]], (ModelType.TURBO,))
    finished = client.wait_all([row.job_id for row in rows if row.job_id], timeout_s=180)
    assert {r.status for r in finished} == {JobStatus.SUCCEEDED}
    assert batches.store(submission.batch_id).finished_at(submission.batch_id) is not None
    # Running the same manifest again enqueues nothing new, on either shard.
    again = batches.submit(manifest, defaults)
    assert again.batch_id == submission.batch_id
    assert {r.status for r in batches.results_light(again.batch_id) if r.job_id} == {
        JobStatus.SUCCEEDED.value}


def test_a_worker_on_a_redis_no_producer_routes_to_says_so(sharded: list[Cluster]) -> None:
    stray_url = sharded[0].redis_url.rsplit("/", 1)[0] + "/7"
    assert stray_url not in urls_of(sharded[0])
    stray = Cluster(env={**sharded[0].env, "ZQ_REDIS_URL": stray_url}, logs=sharded[0].logs,
                    redis_url=stray_url, prefix=sharded[0].prefix)
    try:
        worker = stray.start(ModelType.TURBO, name="turbo-stray@test")
        assert "is not one of ZQ_REDIS_SHARDS" in worker.log_text()
    finally:
        stray.stop_all()


def test_the_http_api_routes_follows_and_streams_jobs_on_any_shard(
        sharded: list[Cluster]) -> None:
    urls, prefix = urls_of(sharded[0]), sharded[0].prefix
    settings = Settings.from_env(sharded[0].env)
    conversation = conversation_on(1, "api")
    body = {"prompt": "a lantern", "width": SIDE, "height": SIDE, "conversation_id": conversation}
    with TestClient(create_app(settings, Client(settings), ApiKeys())) as api:
        root = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-root"})
        assert root.status_code == 201, root.text
        root_id = root.json()["job_id"]
        # The retry of the same request finds the job on its shard: 200, not a second job.
        again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-root"})
        assert (again.status_code, again.json()["job_id"]) == (200, root_id)
        child = api.post("/v1/jobs", json={"kind": "refine", "parent_id": root_id})
        assert child.status_code == 201, child.text
        child_id = child.json()["job_id"]
        assert child.json()["conversation_id"] == conversation
    assert holders(urls, prefix, root_id) == [1] and holders(urls, prefix, child_id) == [1]

    # Another replica, which never saw them, serves both and streams the root's end.
    with TestClient(create_app(settings, Client(settings), ApiKeys())) as other:
        assert other.get(f"/v1/jobs/{child_id}").json()["parent_id"] == root_id
        turns = other.get(f"/v1/conversations/{conversation}").json()
        assert turns["jobs"] == 2 and turns["turns"][0]["children"][0]["job"]["job_id"] == child_id
        shard1 = Client(settings).shards.shards[1].jobs
        spec = shard1.get(root_id).spec
        assert shard1.claim(spec, "w-api", 30, 3).outcome == "claimed"
        shard1.finish(spec, JobStatus.SUCCEEDED, image=f"img/{root_id}.png")
        with other.stream("GET", f"/v1/jobs/{root_id}/events") as events:
            text = "".join(events.iter_text())
        frames = [block.split("\n") for block in text.strip().split("\n\n")]
        assert frames[-1][0] == "event: end"
        assert '"succeeded"' in frames[-1][1]
        assert other.get("/v1/jobs/not-a-job").status_code == 404


def test_a_shard_going_down_stops_only_the_work_routed_to_it(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    with own_redis(tmp_path / "shard1") as shard1:
        env = {**cluster.env, "ZQ_REDIS_SHARDS": f"{cluster.redis_url},{shard1.url}"}
        client = Client(Settings.from_env(env))
        on_1 = client.generate("p", width=SIDE, height=SIDE,
                               conversation_id=conversation_on(1, "down")).job_id
        shard1.stop()
        on_0 = client.generate("p", width=SIDE, height=SIDE,
                               conversation_id=conversation_on(0, "up")).job_id
        stranger = Client(Settings.from_env(env))
        assert stranger.status(on_0).status is JobStatus.QUEUED
        with pytest.raises(redis.ConnectionError):
            stranger.status(on_1)  # it may be on the silent shard: not "unknown"
        with pytest.raises(redis.ConnectionError):
            client.generate("p", conversation_id=conversation_on(1, "down2"))
        run = subprocess.run([sys.executable, "-m", "zq", "status", on_1],
                             env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 3, run.stderr
        assert "cannot reach Redis (ZQ_REDIS_SHARDS)" in run.stderr
        assert "Traceback" not in run.stderr
