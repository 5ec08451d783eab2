"""The ``zq`` command line and a plainly started Celery worker, against real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from common.job import ModelType
from common.queueing import queue_name
from tests.integration.cluster import Cluster, WorkerProcess

pytestmark = pytest.mark.integration


def zq(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``zq`` command with the cluster's configuration."""
    return subprocess.run([sys.executable, "-m", "zq", *args], env={**os.environ, **cluster.env},
                          capture_output=True, text=True, timeout=180)


def test_generate_then_edit_with_wait_and_json(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(ModelType.TURBO, ModelType.EDIT)
    made = zq(cluster, "generate", "a lantern", "--width", "32", "--height", "32",
              "--seed", "3", "--tag", "sku=A-1", "--wait", "--json")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    for key in ("job_id", "status", "model", "kind", "parent_id", "conversation_id", "image",
                "manifest", "error"):
        assert key in job
    assert (job["status"], job["model"], job["kind"]) == ("succeeded", "turbo", "generate")
    edited = zq(cluster, "edit", "make it blue", "--parent", job["job_id"], "--wait", "--json")
    child = json.loads(edited.stdout)
    assert (child["status"], child["model"], child["parent_id"]) == (
        "succeeded", "edit", job["job_id"])
    assert child["conversation_id"] == job["conversation_id"]
    out = tmp_path / "got.png"
    got = zq(cluster, "get", child["job_id"], "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    url = zq(cluster, "get", child["job_id"], "--url")
    assert "X-Amz-Signature=" in url.stdout


def test_bad_input_exits_2_naming_the_field_and_queues_nothing(cluster: Cluster) -> None:
    bad = zq(cluster, "generate", "a lantern", "--width", "100", "--height", "64")
    assert bad.returncode == 2
    assert "width" in bad.stderr and "multiple of 16" in bad.stderr
    unknown = zq(cluster, "status", "no-such-job")
    assert unknown.returncode == 2 and "no-such-job" in unknown.stderr
    client = redis.Redis.from_url(cluster.redis_url)
    assert client.keys(f"{cluster.prefix}:job:*") == []
    assert client.llen(queue_name(ModelType.TURBO)) == 0


def test_plain_celery_command_starts_a_pinned_worker(cluster: Cluster) -> None:
    log = cluster.logs / "plain.log"
    cluster.logs.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
             "-Q", queue_name(ModelType.BASE), "--hostname", "plain@test"],
            env={**os.environ, **cluster.env}, stdout=out, stderr=subprocess.STDOUT)
    worker = WorkerProcess(ModelType.BASE, "plain@test", proc, log)
    cluster.workers.append(worker)
    cluster.wait_ready(worker)
    assert cluster.record(worker)["model"] == "base"
    made = zq(cluster, "generate", "a vase", "--model", "base", "--width", "32", "--height", "32",
              "--steps", "4", "--wait", "--json")
    assert json.loads(made.stdout)["status"] == "succeeded", made.stdout + made.stderr
    assert "solo" in worker.log_text()


LONG = "a" * 300


def bad_inputs(folder: Path) -> list[tuple[list[str], str]]:
    """(arguments, a word the one-line message must contain) for inputs that exit 2."""
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(folder / "photo.png")
    (folder / "a-folder").mkdir()
    (folder / "shop.csv").write_text("Handle,Image Src\nA,photo.png\n")
    (folder / "latin.csv").write_bytes("sku,prompt\nA,caf\u00e9\n".encode("cp1252"))
    photo, shop = str(folder / "photo.png"), str(folder / "shop.csv")
    return [
        (["generate", "a lantern", "--width", "x"], "--width"),
        (["generate", "a lantern", "--priority", "99"], "priority"),
        (["generate", "\udcff\udcfe"], "prompt"),  # bytes that are not UTF-8 in argv
        (["generate", "a lantern", "--negative-prompt", "\udced\udca0\udc80"],
         "negative_prompt"),
        (["generate", "a lantern", "--tag", "noequals"], "--tag"),
        (["generate", "a lantern", "--tag", "sku=\udcff"], "tags"),
        (["generate", "a lantern", "--nonsense"], "--nonsense"),
        (["edit", "make it blue", "--parent", "no-such-parent"], "parent_id"),
        (["refine", "--parent", "no-such-parent"], "parent_id"),
        (["edit", "make it blue", "--image", "/nonexistent/file.png"], "source_image"),
        (["edit", "make it blue", "--image", str(folder / "a-folder")], "source_image"),
        (["edit", "make it blue", "--image", LONG], "source_image"),
        (["edit", "make it blue", "--image", f"/tmp/{LONG}/x.png"], "source_image"),
        (["edit", "make it blue", "--image", photo, "--mask", "nowhere.png"], "mask"),
        (["edit", "make it blue", "--image", shop], "source_image"),
        (["status", "no-such-job"], "no-such-job"),
        (["batch", str(folder / "nope.csv")], "nope.csv"),
        (["batch", str(folder / "a-folder")], "a-folder"),
        (["batch", shop], "'sku' column"),
        (["batch", shop, "--columns", "sku"], "--columns"),
        (["batch", shop, "--columns", "sku=Handle,colour=Farbe"], "colour"),
        (["batch", shop, "--columns", "sku=Variant SKU"], "Variant SKU"),
        (["batch", shop, "--columns", "sku=Handle,image=Image Src"], "'prompt' column"),
        (["batch", str(folder / "latin.csv"), "--prompt", "x"], "--encoding"),
        (["batch", shop, "--encoding", "klingon"], "--encoding"),
        (["batch", "status", "a", "b"], "status a b"),
        (["batch", "status", "no-such-batch"], "no-such-batch"),
        (["campaign", "run", str(folder / "nope.yaml")], "campaign"),
        (["worker", "--model", "nope"], "--model"),
    ]


def test_every_bad_input_exits_2_with_one_line_naming_the_field(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    failures = []
    for args, word in bad_inputs(tmp_path):
        got = zq(cluster, *args)
        lines = got.stderr.strip().splitlines()
        if (got.returncode, len(lines)) != (2, 1) or word not in got.stderr \
                or "Traceback" in got.stderr:
            failures.append((args[:4], got.returncode, got.stderr[-600:]))
    assert failures == []
    client = redis.Redis.from_url(cluster.redis_url)
    assert client.keys(f"{cluster.prefix}:job:*") == []
    assert client.keys(f"{cluster.prefix}:batch:*") == []


@pytest.mark.parametrize(("env", "code", "word"), [
    ({"ZQ_REDIS_URL": "garbage"}, 2, "ZQ_REDIS_URL"),
    ({"ZQ_MAX_DELIVERIES": "abc"}, 2, "ZQ_MAX_DELIVERIES"),
    ({"ZQ_STORAGE_URL": "gs://bucket"}, 2, "ZQ_STORAGE_URL"),
    ({"AWS_PROFILE": "no-such-profile"}, 2, "no-such-profile"),
    ({"ZQ_REDIS_URL": "redis://127.0.0.1:1/0"}, 3, "Redis"),
])
@pytest.mark.parametrize("command", [["generate", "a lantern"], ["status", "some-job"],
                                     ["batch", "status", "some-batch"]])
def test_bad_settings_exit_with_one_line(cluster: Cluster, env: dict[str, str], code: int,
                                         word: str, command: list[str]) -> None:
    got = subprocess.run([sys.executable, "-m", "zq", *command],
                         env={**os.environ, **cluster.env, **env}, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == code, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1 and word in got.stderr, got.stderr
    assert "Traceback" not in got.stderr


def bucket_keys(cluster: Cluster) -> list[str]:
    """Every object in the cluster's bucket."""
    from tests.integration.conftest import client_for

    store = client_for(cluster).store
    listing = store.client.list_objects_v2(Bucket=store.bucket)  # type: ignore[attr-defined]
    return [item["Key"] for item in listing.get("Contents", [])]


def test_a_refused_spec_uploads_nothing(cluster: Cluster, tmp_path: Path) -> None:
    from PIL import Image

    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), "white").save(photo)
    Image.new("L", (32, 32), 255).save(mask)
    refusals = [
        ["--width", "100", "--height", "64"],
        ["--strength", "7"],
        ["--mask", str(mask), "--priority", "99"],
        ["--mask", str(tmp_path / "nowhere.png")],
        ["--mask", str(mask), "--tag", "noequals"],
        ["--mask", str(mask), "--webhook", "notaurl"],
    ]
    for extra in refusals:
        got = zq(cluster, "edit", "make it blue", "--image", str(photo), *extra)
        assert got.returncode == 2, (extra, got.stderr)
    assert bucket_keys(cluster) == []
    made = zq(cluster, "edit", "make it blue", "--image", str(photo), "--mask", str(mask),
              "--width", "32", "--height", "32")
    assert made.returncode == 0, made.stderr
    assert len(bucket_keys(cluster)) == 2  # now the image and the mask are stored
