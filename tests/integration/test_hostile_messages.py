"""A hostile world: malformed broker messages, several workers per host, error exits.

Messages are pushed straight onto the worker's Redis queue in kombu's envelope, the way a
non-Python producer (or a bug) would LPUSH them; real worker processes consume them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from common.deadletters import DeadLetterStore
from common.job import ModelType
from common.status import JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster, WorkerProcess
from zq.exporter import QueueLoadCollector

pytestmark = pytest.mark.integration

QUEUE = "zq.turbo"
NO_LINKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def envelope(body: bytes, content_type: str = "application/json",
             headers: dict[str, Any] | None = None, **extra: Any) -> bytes:
    """A message as kombu's Redis transport stores it: JSON, with the body in base64."""
    message = {
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"task": "zq.generate", "id": str(uuid.uuid4())} if headers is None
        else headers,
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": QUEUE},
                       "priority": 0},
    }
    message.update(extra)
    return json.dumps(message).encode()


def task(args: list[Any], kwargs: dict[str, Any], name: str = "zq.generate",
         **headers: Any) -> bytes:
    body = json.dumps([args, kwargs, NO_LINKS]).encode()
    return envelope(body, headers={"task": name, "id": str(uuid.uuid4()), **headers})


def hostile_messages(known_job: str) -> list[tuple[str, str, bytes]]:
    """(name, expected dead-letter reason, raw Redis item), in the order they are pushed."""
    no_properties = json.loads(task([], {"job_id": known_job}))
    del no_properties["properties"]
    list_headers = json.loads(task([], {"job_id": known_job}))
    list_headers["headers"] = ["zq.generate"]
    bad_base64 = json.loads(task([], {"job_id": known_job}))
    bad_base64["body"] = "@@@abc"
    huge = json.dumps([["x" * 20_000_000], {}, NO_LINKS]).encode()
    return [
        ("application/data", "content_type", envelope(b"\x00\x01\x02raw", "application/data")),
        ("application/text", "content_type", envelope(b"just text", "application/text")),
        ("pickle", "content_type", envelope(pickle.dumps(((known_job,), {}, {})),
                                            "application/x-python-serialize")),
        ("json null", "body", envelope(b"null")),
        ("json [1,2]", "body", envelope(b"[1, 2]")),
        ("json {}", "body", envelope(b"{}")),
        ("json string", "body", envelope(b'"a string"')),
        ("invalid utf-8 body", "body", envelope(b"\xff\xfe[[], {}, {}]")),
        ("unknown task", "unknown_task", task([known_job], {}, name="zq.nope")),
        ("celery builtin task", "unknown_task", task([], {}, name="celery.backend_cleanup")),
        ("0 args", "bad_args", task([], {})),
        ("2 args", "bad_args", task([known_job, known_job], {})),
        ("extra kwargs", "bad_args", task([], {"job_id": known_job, "steps": 500})),
        ("int id", "bad_job_id", task([42], {})),
        ("not an id", "bad_job_id", task(["../../etc/passwd"], {})),
        ("unknown job", "unknown_job", task(["no-such-job"], {})),
        ("bad eta", "rejected", task([known_job], {}, eta="not a date")),
        ("huge body", "bad_job_id", envelope(huge)),
        ("invalid utf-8 envelope", "envelope", b"\xff\xfe\x00garbage"),
        ("not json", "envelope", b"this is not a kombu message"),
        ("json list envelope", "envelope", b"[1, 2, 3]"),
        ("no properties", "envelope", json.dumps(no_properties).encode()),
        ("list headers", "envelope", json.dumps(list_headers).encode()),
        ("invalid base64", "envelope", json.dumps(bad_base64).encode()),
    ]


def wait_for(condition: Any, timeout_s: float, what: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode} while waiting "
                                 f"for {what}:\n{worker.log_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{worker.log_text()[-4000:]}")
        time.sleep(0.1)


def scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def zq(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zq", *args], capture_output=True, text=True,
                          env={**os.environ, **cluster.env}, timeout=60)


def test_a_worker_survives_every_malformed_message(cluster: Cluster, client: Client) -> None:
    worker = cluster.start(ModelType.TURBO)
    pid = worker.proc.pid
    first = client.generate("before the storm", width=32, height=32, steps=2)
    assert client.wait(first.job_id, 120).status is JobStatus.SUCCEEDED

    broker = redis.Redis.from_url(cluster.redis_url)
    letters = DeadLetterStore(broker, cluster.prefix)
    messages = hostile_messages(first.job_id)
    for _, _, raw in messages:
        broker.lpush(QUEUE, raw)
    wait_for(lambda: letters.count() == len(messages), 180, "every dead letter", worker)
    wait_for(lambda: broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0, 30,
             "an empty queue", worker)

    assert worker.proc.poll() is None and worker.proc.pid == pid
    kept = list(reversed(letters.newest(100)))  # one worker: dead letters in push order
    assert [(name, letter.reason) for (name, _, _), letter in zip(messages, kept, strict=True)] == [
        (name, reason) for name, reason, _ in messages]
    assert all(letter.queue == QUEUE and letter.worker == worker.name for letter in kept)
    by_name = {name: letter for (name, _, _), letter in zip(messages, kept, strict=True)}
    raw_items = {name: raw for name, _, raw in messages}
    for name in ("not json", "invalid utf-8 envelope", "json list envelope"):
        assert by_name[name].body == raw_items[name]  # the raw item, byte for byte
    assert by_name["application/data"].body == b"\x00\x01\x02raw"
    assert by_name["application/data"].content_type == "application/data"
    assert by_name["unknown task"].task == "zq.nope"
    huge = by_name["huge body"]
    assert huge.truncated and huge.body_size > 20_000_000 and len(huge.body) == 64 * 1024
    assert "20000000 characters" in huge.detail
    assert "no-such-job" in by_name["unknown job"].detail
    assert "eta" in by_name["bad eta"].detail.lower()
    # The job named by the hostile messages was never run again.
    assert client.status(first.job_id).deliveries == 1

    after = client.generate("after the storm", width=32, height=32, steps=2)
    assert client.wait(after.job_id, 120).status is JobStatus.SUCCEEDED
    assert worker.proc.poll() is None and worker.proc.pid == pid

    record = cluster.record(worker)
    metrics = scrape(record["metrics_addr"], int(record["metrics_port"]))
    assert 'zq_dead_letters_total{model="turbo",reason="content_type"} 3.0' in metrics
    assert 'zq_dead_letters_total{model="turbo",reason="envelope"} 6.0' in metrics
    exported = {m.name: m for m in QueueLoadCollector(broker, cluster.prefix).collect()}
    assert exported["zq_dead_letters"].samples[0].value == len(messages)

    status = zq(cluster, "status")
    assert status.returncode == 0, status.stderr
    assert f"dead letters: {len(messages)}" in status.stdout
    # The newest few, with their reasons.
    assert "envelope: the body cannot be decoded" in status.stdout
    assert "envelope: the envelope's headers are not an object" in status.stdout
    assert f"metrics {record['metrics_addr']}:{record['metrics_port']}" in status.stdout
    overview = json.loads(zq(cluster, "status", "--json").stdout)
    assert overview["dead_letters"]["count"] == len(messages)
    assert overview["dead_letters"]["newest"][0]["reason"] == "envelope"

    listed = zq(cluster, "dead-letters", "--json", "--limit", "3")
    assert [json.loads(line)["reason"] for line in listed.stdout.splitlines()] == [
        "envelope", "envelope", "envelope"]
    cleared = zq(cluster, "dead-letters", "--clear")
    assert cleared.stdout.strip() == f"cleared {len(messages)} dead letters"
    assert letters.count() == 0


def test_a_job_sent_to_the_wrong_model_queue_is_forwarded_not_run_there(
        cluster: Cluster, client: Client) -> None:
    turbo = cluster.start(ModelType.TURBO)
    image = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(image, "PNG")
    job = client.edit("make it blue", image=image.getvalue(), width=32, height=32, steps=2)
    broker = redis.Redis.from_url(cluster.redis_url)
    letters = DeadLetterStore(broker, cluster.prefix)

    def edit_messages() -> int:  # every priority list of the edit queue
        return sum(int(broker.llen(key)) for key in broker.keys("zq.edit*"))

    waiting = edit_messages()
    broker.lpush(QUEUE, task([job.job_id], {}))
    wait_for(lambda: letters.count() == 1, 60, "the dead letter", turbo)
    (letter,) = letters.newest(1)
    assert letter.reason == "wrong_queue" and job.job_id in letter.detail
    assert job.status().status is JobStatus.QUEUED  # not claimed by the turbo worker
    assert edit_messages() == waiting + 1  # sent on to the edit workers
    cluster.start(ModelType.EDIT)
    record = job.wait(120)
    assert (record.status, record.deliveries) == (JobStatus.SUCCEEDED, 1)
    assert record.worker != turbo.name


def test_three_workers_on_one_host_with_default_metrics_settings(
        cluster: Cluster, client: Client) -> None:
    cluster.env.pop("ZQ_METRICS_PORT", None)  # the defaults, as in the README
    workers = [cluster.start(model, wait=False) for model in ModelType]
    for worker in workers:
        cluster.wait_ready(worker)
    records = [cluster.record(worker) for worker in workers]
    ports = [int(record["metrics_port"]) for record in records]
    assert len(set(ports)) == 3, ports
    assert all(9400 <= port < 9432 and port != 9401 for port in ports), ports
    for worker, record, port in zip(workers, records, ports, strict=True):
        assert record["metrics_addr"] == "127.0.0.1"
        assert f"metrics at http://127.0.0.1:{port}/metrics" in worker.log_text()
        text = scrape("127.0.0.1", port)
        assert f'zq_worker_ready{{model="{worker.model.value}"}} 1.0' in text

    first = client.generate("three on one host", width=32, height=32, steps=2)
    edited = client.edit("and an edit", parent=first.job_id, steps=2)
    refined = client.refine(parent=edited.job_id, steps=2)
    assert client.wait(refined.job_id, 240).status is JobStatus.SUCCEEDED
    assert all(worker.proc.poll() is None for worker in workers)


def test_a_worker_stopped_by_an_error_exits_non_zero(cluster: Cluster) -> None:
    worker = cluster.start(ModelType.TURBO)
    # The queue's key turns into a string: every BRPOP now fails (WRONGTYPE), an error
    # Celery does not retry.
    broker = redis.Redis.from_url(cluster.redis_url)
    broker.delete(QUEUE)
    broker.set(QUEUE, "not a list")
    code = worker.proc.wait(120)
    assert code != 0, worker.log_text()[-3000:]
    assert "Unrecoverable error" in worker.log_text()


def test_sigterm_still_exits_zero(cluster: Cluster) -> None:
    worker = cluster.start(ModelType.TURBO)
    assert worker.kill(15, timeout_s=120) == 0


def test_dead_letter_store_caps_truncates_and_clears(redis_server: Any,
                                                     tmp_path: Path) -> None:
    from common.deadletters import DeadLetter

    client = redis.Redis.from_url(redis_server.url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = DeadLetterStore(client, prefix, max_len=3)
    assert store.key == f"{prefix}:dead_letters"
    for n in range(5):
        store.add(DeadLetter.of("body", f"letter {n}", QUEUE, b"x" * n, worker="w1"))
    assert store.count() == 3
    assert [letter.detail for letter in store.newest(10)] == ["letter 4", "letter 3", "letter 2"]
    assert store.newest(1)[0].body == b"xxxx"
    big = DeadLetter.of("envelope", "big", QUEUE, b"y" * 100_000, content_type=7,
                        task="t" * 1000)
    store.add(big)
    back = store.newest(1)[0]
    assert back == big
    assert back.truncated and back.body_size == 100_000 and len(back.body) == 64 * 1024
    assert back.content_type == "7" and back.task is not None and len(back.task) == 256
    client.lpush(store.key, b"not json")  # a corrupt entry is skipped, not fatal
    assert [letter.detail for letter in store.newest(2)] == ["big"]
    assert store.clear() == 4
    assert store.count() == 0 and store.newest() == []
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        DeadLetter.of("whatever", "", QUEUE, b"")
