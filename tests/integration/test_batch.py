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


SHOP_HEADER = ["Handle", "Title", "Body (HTML)", "Vendor", "Image Src", "Width", "Seed",
               "Strength", "Tags"]


def write_shop_export(folder: Path) -> tuple[Path, dict[str, str]]:
    """A Shopify-like ';' export with Excel's BOM, CRLF, blank lines, and hostile rows.

    Returns the manifest and, per bad SKU, the field its row error must name.
    """
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (32, 32), colour).save(folder / f"good{i}.png")
    # 144 million pixels, a few KB on disk: a decompression bomb.
    Image.new("1", (12000, 12000)).save(folder / "bomb.png")
    (folder / "broken.png").write_text("not an image")
    (folder / "a-folder").mkdir()
    rows = [
        ["GOOD-0", "Shoe", "<p>Nice</p>", "ACME", "good0.png", "32.0", "1", "0,6", "x"],
        ["BOMB", "Bomb", "", "ACME", "bomb.png", "32", "2", "", ""],
        [],
        ["BROKEN", "Broken", "", "ACME", "broken.png", "32", "3", "", ""],
        ["MISSING", "Missing", "", "ACME", "nowhere.png", "32", "4", "", ""],
        ["GOOD-1", "Shoe", "", "ACME", "good1.png", "", "5", "", ""],
        ["LONG", "Long", "", "ACME", "x" * 400 + ".png", "32", "6", "", ""],
        ["FOLDER", "Folder", "", "ACME", "a-folder", "32", "7", "", ""],
        ["BADURL", "Url", "", "ACME", "http://[oops/x.png", "32", "8", "", ""],
        ["SIZE", "Size", "", "ACME", "good2.png", "100", "9", "", ""],
        ["HALF", "Half", "", "ACME", "good2.png", "30.5", "10", "", ""],
        ["SEED", "Seed", "", "ACME", "good2.png", "32", "many", "", ""],
        ["STRENGTH", "Strength", "", "ACME", "good2.png", "32", "11", "7", ""],
        ["", "No sku", "", "ACME", "good2.png", "32", "12", "", ""],
        ["EXTRA", "Extra", "", "ACME", "good2.png", "32", "13", "", "", "surplus"],
        [";;;;;;;;"],
        ["GOOD-2", "Shoe", "", "ACME", "good2.png", "32", "14", "", ""],
    ]
    lines = [";".join(SHOP_HEADER)] + [";".join(row) for row in rows]
    manifest = folder / "shopify_export.csv"
    manifest.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    fields = {"BOMB": "image", "BROKEN": "image", "MISSING": "image", "LONG": "image",
              "FOLDER": "image", "BADURL": "image", "SIZE": "width", "HALF": "width",
              "SEED": "seed", "STRENGTH": "strength", "": "sku", "EXTRA": "row"}
    return manifest, fields


def test_shop_export_with_hostile_rows_seals_and_reruns_idempotently(
        cluster: Cluster, client: Client, tmp_path: Path) -> None:
    manifest, fields = write_shop_export(tmp_path)
    args = [str(manifest), "--columns", "sku=Handle,image=Image Src", "--prompt",
            "on a white marble background", "--width", "32", "--height", "32", "--steps", "2",
            "--no-wait"]
    first = zq_batch(cluster, *args)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "Traceback" not in err
    batch_id = out.strip()
    assert f"batch {batch_id}: 3 jobs, 12 rows refused" in err, err
    assert "note: ignoring 4 columns" in err and "'Vendor'" in err and "'Handle'" not in err

    batches = Batches(client)
    store = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    assert store.hget(f"{cluster.prefix}:batch:{batch_id}", "sealed") == "1"
    refused = {r.sku: r for r in batches.results_light(batch_id) if r.status == "invalid"}
    assert len(refused) == 12
    for sku, field in fields.items():
        error = refused[sku].error or ""
        assert error.startswith(f"{field}: "), (sku, error)
        assert f"line {refused[sku].line}: {sku or '-'}: {error}" in err
    assert "pixels" in (refused["BOMB"].error or "")
    assert "whole number" in (refused["HALF"].error or "")

    cluster.start(ModelType.EDIT)
    deadline = time.monotonic() + 300
    while batches.store(batch_id).finished_at(batch_id) is None:
        assert time.monotonic() < deadline, batches.counts(batch_id)
        time.sleep(0.2)
    results = batches.results_light(batch_id)
    done = {r.sku: r for r in results if r.status == JobStatus.SUCCEEDED.value}
    assert sorted(done) == ["GOOD-0", "GOOD-1", "GOOD-2"]
    good0 = client.status(done["GOOD-0"].job_id or "")
    assert (good0.spec.width, good0.spec.strength) == (32, 0.6)  # "32.0" and "0,6"
    assert good0.spec.tags == {"sku": "GOOD-0"}

    # The same command again: the same batch, nothing submitted or run twice.
    jobs_before = sorted(store.keys(f"{cluster.prefix}:job:*"))
    again = zq_batch(cluster, *args)
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0 and out2.strip() == batch_id, err2
    assert f"batch {batch_id}: 3 jobs, 12 rows refused" in err2
    assert sorted(store.keys(f"{cluster.prefix}:job:*")) == jobs_before
    assert batches.results_light(batch_id) == results
    assert all(client.status(r.job_id).deliveries == 1 for r in done.values() if r.job_id)


def test_redis_going_away_stops_the_batch_and_a_rerun_seals_it(tmp_path: Path) -> None:
    from tests.conftest import require
    from zq.embedded_redis import redis_executable, start_redis

    require(redis_executable() is not None, "redis-server")
    server = start_redis(tmp_path / "redis", appendonly=True)
    env = {**os.environ, "ZQ_REDIS_URL": server.url, "ZQ_KEY_PREFIX": "zqgone",
           "ZQ_STORAGE_URL": f"file://{tmp_path / 'store'}"}
    Image.new("RGB", (32, 32), "white").save(tmp_path / "shoe.png")
    manifest = tmp_path / "many.csv"
    manifest.write_text("sku,image,seed\n" + "".join(
        f"S{i},shoe.png,{i}\n" for i in range(1500)))
    command = [sys.executable, "-m", "zq", "batch", str(manifest), "--prompt", "marble",
               "--width", "32", "--height", "32", "--no-wait"]
    try:
        first = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        store = redis.Redis.from_url(server.url, decode_responses=True)
        deadline = time.monotonic() + 120
        while not any(store.hlen(k) >= 30 for k in store.keys("zqgone:batch:*:rows")):
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.005)
        server.stop()  # a clean shutdown keeps what was written (append-only file)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 3, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "Redis unreachable after" in err and "run the same command again" in err

        server = start_redis(tmp_path / "redis", appendonly=True, port=server.port)
        store = redis.Redis.from_url(server.url, decode_responses=True)
        [rows_key] = store.keys("zqgone:batch:*:rows")
        partial = store.hlen(rows_key)
        assert 30 <= partial < 1500
        assert store.hget(rows_key.removesuffix(":rows"), "sealed") is None
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert "1500 jobs, 0 rows refused" in second.stderr
        assert store.hlen(rows_key) == 1500
        assert store.hget(rows_key.removesuffix(":rows"), "sealed") == "1"
        assert len(store.keys("zqgone:job:*")) == 1500
    finally:
        server.stop()
