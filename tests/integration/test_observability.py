"""Audit trail, secrets kept out of logs, replay, health probes and queue load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis

from common.job import ModelType
from common.queueing import make_celery, publish
from common.queueload import read_loads
from common.settings import Settings
from producer.client import Client
from tests.integration.cluster import Cluster, WorkerProcess

pytestmark = pytest.mark.integration


def zq(cluster: Cluster, *args: str, env: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    """Run ``zq`` with the cluster's configuration."""
    return subprocess.run([sys.executable, "-m", "zq", *args],
                          env={**os.environ, **cluster.env, **(env or {})},
                          capture_output=True, text=True, timeout=180)


def audit_lines(worker: WorkerProcess) -> list[dict[str, object]]:
    """The worker's audit trail: its log lines that are JSON objects."""
    lines = []
    for line in worker.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def job_audit(worker: WorkerProcess, job_id: str, timeout_s: float = 10.0
              ) -> list[dict[str, object]]:
    """The job's audit lines, once the last one says how it ended.

    A waiting client hears of the end from the script that ends the job; the worker
    writes its audit line just after, so the test waits for it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        events = [e for e in audit_lines(worker) if e["job_id"] == job_id]
        if events and events[-1]["event"] in ("succeeded", "failed", "cancelled"):
            return events
        assert time.monotonic() < deadline, events
        time.sleep(0.05)


def test_audit_trail_records_every_state_change_without_secrets(cluster: Cluster) -> None:
    turbo = cluster.start(ModelType.TURBO)
    made = zq(cluster, "generate", "a lighthouse", "--width", "32", "--height", "32",
              "--steps", "8", "--seed", "5", "--wait", "--json")
    job = json.loads(made.stdout)
    url = zq(cluster, "get", job["job_id"], "--url")
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", url.stdout)
    assert signature, url.stdout

    events = job_audit(turbo, job["job_id"])
    assert [e["event"] for e in events] == ["started", "progress", "progress", "progress",
                                            "succeeded"]
    assert [e.get("percent") for e in events[1:4]] == [25, 50, 75]
    started, done = events[0], events[-1]
    assert started["revision"] == done["revision"] and str(done["revision"]).startswith("local-")
    assert (started["seed"], started["model"], started["conversation_id"]) == (
        5, "turbo", job["conversation_id"])
    assert set(done["timings_s"]) >= {"load_inputs", "text_encode", "denoise", "vae_decode",  # type: ignore[arg-type]
                                      "image_encode", "upload"}
    assert done["image"] == job["image"]

    secret = cluster.env["AWS_SECRET_ACCESS_KEY"]
    logs = turbo.log_text() + made.stderr + url.stderr
    assert secret not in logs
    assert signature.group(1) not in logs and "X-Amz-Signature" not in logs


def test_failures_and_cancels_are_audited_with_their_reason(cluster: Cluster,
                                                             client: Client) -> None:
    from common.job import JobKind, new_job

    edit = cluster.start(ModelType.EDIT)
    broken = client.submit(new_job(JobKind.EDIT, prompt="x", source_image="uploads/gone.png",
                                   width=32, height=32))
    broken.wait(60)
    failed = job_audit(edit, broken.job_id)[-1]
    assert failed["event"] == "failed" and failed["error_code"] == "input_invalid"
    assert "uploads/gone.png" in str(failed["error"])


def test_replay_reproduces_the_image_byte_for_byte(cluster: Cluster, client: Client) -> None:
    cluster.start_many(ModelType.TURBO, ModelType.EDIT)
    parent = client.generate("a red door", width=32, height=32, seed=4)
    child = client.edit("make it green", parent=parent.job_id, seed=8)
    child.wait(60)
    replayed = zq(cluster, "replay", child.job_id, "--json")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    result = json.loads(replayed.stdout)
    assert result["identical"] is True and result["same_revision"] is True
    assert client.status(result["replay_id"]).spec.tags["replay_of"] == child.job_id


def test_health_not_ready_while_warming_ready_while_busy_dead_when_killed(
        cluster: Cluster, client: Client) -> None:
    # A large warm-up keeps the worker visibly alive-but-not-ready for a while.
    worker = cluster.start(ModelType.TURBO, wait=False,
                           extra_env={"ZQ_WARMUP_SIZE_PX": "2048"})
    health_env = {"ZQ_HEALTH_DIR": str(worker.health_dir)}
    seen_loading = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready = zq(cluster, "health", "--model", "turbo", "--ready", env=health_env)
        if ready.returncode == 0:
            break
        alive = zq(cluster, "health", "--model", "turbo", env=health_env)
        if alive.returncode == 0 and "not ready" in ready.stdout:
            seen_loading = True
        time.sleep(0.1)
    assert seen_loading, "never saw the worker alive but not ready"
    cluster.wait_ready(worker)

    slow = client.generate("busy", width=512, height=512, steps=150)
    while slow.status().step < 2:
        time.sleep(0.05)
    # The health file is rewritten once per beat (1 s here): give it a few.
    for _ in range(50):
        busy = zq(cluster, "health", "--model", "turbo", "--ready", env=health_env)
        assert busy.returncode == 0, busy.stdout
        if slow.job_id in busy.stdout:
            break
    assert slow.job_id in busy.stdout
    worker.kill(signal.SIGKILL)
    time.sleep(5)  # three missed beats at a 1 s interval, plus slack
    dead = zq(cluster, "health", "--model", "turbo", env=health_env)
    assert dead.returncode == 1 and "not alive" in dead.stdout


def test_queue_load_sums_priority_lists_and_ages_the_oldest(cluster: Cluster,
                                                            client: Client) -> None:
    for priority in (1, 5, 9, 9):
        client.generate("waits", width=32, height=32, priority=priority)
    client.edit("waits too", image=_png())
    time.sleep(0.2)
    loads = {load.model: load for load in read_loads(
        redis.Redis.from_url(cluster.redis_url), cluster.prefix)}
    assert (loads[ModelType.TURBO].waiting, loads[ModelType.TURBO].load) == (4, 4)
    assert loads[ModelType.EDIT].waiting == 1 and loads[ModelType.BASE].waiting == 0
    assert loads[ModelType.TURBO].oldest_waiting_s >= 0.2
    assert loads[ModelType.BASE].oldest_waiting_s == 0.0
    # A message that is not ours (or unreadable) is counted but does not break the reading.
    publish(make_celery(Settings.from_env(cluster.env)),
            client.status(client.generate("x", width=32, height=32).job_id).spec)
    assert read_loads(redis.Redis.from_url(cluster.redis_url), cluster.prefix)[0].waiting == 6


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(out, format="PNG")
    return out.getvalue()
