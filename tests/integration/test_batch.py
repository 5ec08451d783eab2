"""Bulk catalogue editing end to end: manifests, bad rows, resuming, priorities."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from PIL import Image

from common.job import ModelType
from common.status import JobStatus
from producer.batch import Batches
from producer.client import Client
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration
ARGS = ["--prompt", "on a white marble background", "--width", "32", "--height", "32",
        "--steps", "2"]


def write_catalogue(folder: Path, good: int) -> Path:
    """``good`` product photos plus five rows that are wrong in five different ways."""
    rows = []
    for i in range(good):
        photo = folder / f"p{i}.png"
        Image.new("RGB", (32, 32), (i % 256, (i * 7) % 256, 90)).save(photo)
        rows.append({"sku": f"SKU-{i:03d}", "image": photo.name})
    (folder / "broken.png").write_text("not an image")
    rows[10:10] = [{"sku": "BAD-MISSING", "image": "nowhere.png"}]
    rows[20:20] = [{"sku": "BAD-UNREADABLE", "image": "broken.png"}]
    rows[30:30] = [{"sku": "BAD-SIZE", "image": "p1.png", "width": "100"}]
    rows[40:40] = [{"sku": "", "image": "p2.png"}]
    rows[50:50] = [{"sku": "BAD-SEED", "image": "p3.png", "seed": "many"}]
    manifest = folder / "catalogue.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sku", "image", "width", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def zq_batch(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "zq", "batch", *args],
                            env={**os.environ, **cluster.env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_manifest_with_bad_rows_interrupted_and_resumed(cluster: Cluster, client: Client,
                                                        tmp_path: Path) -> None:
    manifest = write_catalogue(tmp_path, good=195)
    results = tmp_path / "results.csv"
    first = zq_batch(cluster, str(manifest), *ARGS, "--results", str(results))
    rows_key = None
    store = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        keys = store.keys(f"{cluster.prefix}:batch:*:rows")
        if keys and store.hlen(keys[0]) >= 60:
            rows_key = keys[0]
            break
        time.sleep(0.005)
    assert rows_key is not None, first.communicate()
    first.send_signal(signal.SIGINT)  # Ctrl-C half-way through submitting
    first.communicate(timeout=30)
    submitted_before = store.hlen(rows_key)
    assert 60 <= submitted_before < 200

    worker = cluster.start(ModelType.EDIT)
    second = zq_batch(cluster, str(manifest), *ARGS, "--results", str(results))
    out, err = second.communicate(timeout=600)
    assert second.returncode == 1, err  # five rows were refused
    assert "195 jobs, 5 rows refused" in err

    with results.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    by_status: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert len(by_status["succeeded"]) == 195
    assert all(r["url"] and r["image"] for r in by_status["succeeded"])
    refused = {r["line"]: r["error"] for r in by_status["invalid"]}
    assert len(refused) == 5
    assert "no such file" in refused["12"] and "nowhere.png" in refused["12"]
    # Line numbers count the header as line 1.
    assert "readable" in refused["22"]
    assert "width" in refused["32"] and "multiple of 16" in refused["32"]
    assert "sku: missing" in refused["42"]
    assert "seed" in refused["52"]

    # Nothing ran twice: every job was delivered once, and the worker saw one message per
    # job (at most one more, if Ctrl-C landed between sending a message and noting it sent).
    batch_id = out.strip()
    job_ids = [r.job_id for r in Batches(client).results_light(batch_id) if r.job_id]
    assert len(set(job_ids)) == 195
    assert all(client.status(j).deliveries == 1 for j in job_ids)
    assert cluster.record(worker)["jobs_done"] == "195"
    received = worker.log_text().count("Task zq.edit[")  # "received" and "succeeded" lines
    assert 195 <= received // 2 <= 196

    # From any machine: status by batch id, with a contact sheet to look at.
    sheet = tmp_path / "sheet.png"
    status = zq_batch(cluster, "status", batch_id, "--json", "--sheet", str(sheet))
    out, err = status.communicate(timeout=120)
    assert json.loads(out)["counts"] == {"succeeded": 195, "invalid": 5}, err
    with Image.open(sheet) as picture:
        columns, rows = 8, -(-195 // 8)
        assert picture.width > columns * 160 and picture.height > rows * 160


def test_conversation_turn_overtakes_queued_bulk_work(cluster: Cluster, client: Client,
                                                      tmp_path: Path) -> None:
    photo = tmp_path / "shoe.png"
    Image.new("RGB", (32, 32), "white").save(photo)
    manifest = tmp_path / "bulk.jsonl"
    manifest.write_text("".join(
        f'{{"sku": "S{i}", "image": "shoe.png", "seed": {i}}}\n' for i in range(500)))
    submission = Batches(client).submit(manifest, {"prompt": "marble", "width": 32,
                                                   "height": 32, "steps": 2})
    assert (submission.jobs, submission.errors) == (500, [])
    cluster.start(ModelType.EDIT)
    time.sleep(1.0)  # let the worker get going on the bulk work
    parent = client.upload(_png(), "source_image")
    turn = client.edit("make it red", image=parent)
    turn_record = turn.wait(120)
    assert turn_record.status is JobStatus.SUCCEEDED
    submitted_at = turn_record.created_at
    bulk = Batches(client).results_light(submission.batch_id)
    starts = sorted([s for s in (client.status(r.job_id).started_at for r in bulk
                                 if r.job_id) if s is not None and s >= submitted_at]
                    + [turn_record.started_at or 0.0])
    assert starts.index(turn_record.started_at) <= 1
    Batches(client).cancel(submission.batch_id)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "grey").save(out, format="PNG")
    return out.getvalue()


def test_finished_batch_posts_one_signed_webhook(cluster: Cluster, client: Client,
                                                 tmp_path: Path) -> None:
    from producer.webhooks import verify
    from tests.integration.test_webhooks import Receiver

    receiver = Receiver(answer=lambda n: 503 if n == 1 else 200)  # fails at first
    secret = "batch-hook-secret"
    env = {**os.environ, **cluster.env, "ZQ_WEBHOOK_SECRET": secret}
    dispatcher = subprocess.Popen(
        [sys.executable, "-m", "zq", "webhooks", "--poll", "0.1", "--backoff-base", "0.2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        manifest = write_catalogue(tmp_path, good=3)
        cluster.start(ModelType.EDIT)
        args = [str(manifest), *ARGS, "--webhook", receiver.url]
        for _ in range(2):  # the same batch twice: still one webhook
            run = zq_batch(cluster, *args)
            run.communicate(timeout=300)
        deadline = time.monotonic() + 60
        while not any(r.answered == 200 for r in receiver.received()):
            assert time.monotonic() < deadline, receiver.received()
            time.sleep(0.1)
        time.sleep(1.0)  # would a second delivery follow? (none should)
        posts = receiver.received()
        assert [p.answered for p in posts] == [503, 200]
        delivered = posts[-1]
        assert verify(secret.encode(), delivered.body, delivered.headers["x-zq-signature"])
        body = delivered.json
        assert body["event"] == "batch.finished"
        data = body["data"]
        assert data["counts"] == {"succeeded": 3, "invalid": 5}
        assert sorted(r["sku"] for r in data["results"] if r["status"] == "succeeded") == [
            "SKU-000", "SKU-001", "SKU-002"]
        assert all(r["url"] for r in data["results"] if r["status"] == "succeeded")
    finally:
        dispatcher.terminate()
        _, err = dispatcher.communicate(timeout=30)
        receiver.stop()
    assert secret not in err and "token=" not in err


def test_single_job_webhook_is_delivered_once(cluster: Cluster, client: Client) -> None:
    from producer.webhooks import verify
    from tests.integration.test_webhooks import Receiver

    receiver = Receiver()
    env = {**os.environ, **cluster.env, "ZQ_WEBHOOK_SECRET": "s3cret-job"}
    dispatcher = subprocess.Popen([sys.executable, "-m", "zq", "webhooks", "--poll", "0.1"],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    try:
        cluster.start(ModelType.TURBO)
        job = client.generate("a kite", width=32, height=32, webhook=receiver.url)
        assert job.wait(60).status is JobStatus.SUCCEEDED
        deadline = time.monotonic() + 30
        while not receiver.received():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        posts = receiver.received()
        assert len(posts) == 1
        assert verify(b"s3cret-job", posts[0].body, posts[0].headers["x-zq-signature"])
        data = posts[0].json["data"]
        assert (posts[0].json["event"], data["job_id"], data["status"]) == (
            "job.finished", job.job_id, "succeeded")
        assert data["url"]
    finally:
        dispatcher.terminate()
        dispatcher.wait(30)
        receiver.stop()
