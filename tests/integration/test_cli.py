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
    cluster.start(ModelType.TURBO)
    cluster.start(ModelType.EDIT)
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
