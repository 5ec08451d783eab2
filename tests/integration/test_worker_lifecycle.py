"""Worker start-up and shutdown: model sources, soft shutdown, jobs never published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.job import JobKind, ModelType, new_job
from common.status import JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster
from zq.processes import free_port

pytestmark = pytest.mark.integration


def test_sigterm_lets_the_running_job_finish_then_exits(cluster: Cluster,
                                                         client: Client) -> None:
    worker = cluster.start(ModelType.TURBO)
    job = client.generate("finish me", width=512, height=512, steps=60)
    deadline = time.monotonic() + 60
    while job.status().step < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(120) == 0
    record = job.status()
    assert record.status is JobStatus.SUCCEEDED, record
    assert record.deliveries == 1


def test_job_recorded_but_never_published_is_published_by_recovery(
        cluster: Cluster, client: Client) -> None:
    # A producer that crashed between recording a job and sending its message.
    spec = new_job(JobKind.GENERATE, prompt="orphan", width=32, height=32)
    client.jobs.submit(spec)
    assert client.jobs.is_unpublished(spec)
    cluster.start(ModelType.TURBO)
    assert client.wait(spec.job_id, 60).status is JobStatus.SUCCEEDED
    assert not client.jobs.is_unpublished(spec)


def test_make_tiny_models_command_writes_loadable_checkpoints(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "zq", "make-tiny-models", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    listed = dict(line.split("\t") for line in made.stdout.splitlines())
    assert sorted(listed) == ["base", "edit", "turbo"]
    for path in listed.values():
        index = json.loads((Path(path) / "model_index.json").read_text())
        assert index["_class_name"] == "ZImagePipeline"
        # Readable by a worker running as another user (weights included).
        for written in Path(path).rglob("*"):
            assert written.stat().st_mode & 0o004, f"{written} is not world-readable"


def test_hub_id_resolves_from_an_offline_cache_to_its_snapshot_revision(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--Tongyi-MAI--Z-Image-Turbo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / revision).symlink_to(tiny_models["turbo"], target_is_directory=True)
    script = ("from worker.models import load_model; from common.job import ModelType;"
              "from worker.acceleration import ModelOptions;"
              "m = load_model(ModelType.TURBO, 'Tongyi-MAI/Z-Image-Turbo', ModelOptions('cpu'));"
              "print(m.source.revision, m.source.pipeline_class)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [revision, "ZImagePipeline"]
    missing = subprocess.run([sys.executable, "-c", script.replace("Turbo", "Nope")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0
    assert "neither a directory nor a reachable hub checkpoint" in missing.stderr


def test_worker_that_cannot_load_its_model_exits_before_consuming(cluster: Cluster,
                                                                   client: Client,
                                                                   tmp_path: Path) -> None:
    job = client.generate("waits for a working worker", width=32, height=32)
    broken = cluster.start(ModelType.TURBO, wait=False,
                           extra_env={"ZQ_MODEL_TURBO": str(tmp_path / "no-such-model")})
    assert broken.proc.wait(120) == 78
    assert "no-such-model" in broken.log_text()
    assert job.status().status is JobStatus.QUEUED
    cluster.start(ModelType.TURBO)
    assert job.wait(60).status is JobStatus.SUCCEEDED


def test_worker_that_cannot_reach_redis_exits_69_in_one_line(cluster: Cluster) -> None:
    nobody = free_port()
    worker = cluster.start(ModelType.TURBO, wait=False,
                           extra_env={"ZQ_REDIS_URL": f"redis://:hunter2@127.0.0.1:{nobody}/0"})
    assert worker.proc.wait(180) == 69
    log = worker.log_text()
    assert f"worker cannot start: Redis at redis://127.0.0.1:{nobody}" in log
    assert "Traceback" not in log and "hunter2" not in log
