"""A worker whose loaded weights change stops, and its job runs elsewhere (real processes).

Nothing in the shipped code changes the weights any more, so the change is injected:
the worker process is started through a launcher that makes the weight guard report a
change after the first job, exactly as it would after a silent fp32 upcast.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.job import ModelType
from common.status import JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration
EXIT_MODEL_CHANGED = 70

LAUNCHER = """
import sys
from common.errors import WorkerBroken
from worker.model_state import ModelStateGuard

checks = []
original = ModelStateGuard.check

def check(self, after):
    original(self, after)
    checks.append(after)
    if len(checks) > 1:  # the first check follows the one warm-up render
        raise WorkerBroken(f"the loaded model changed during {after}: "
                           "transformer: bfloat16 12.3 GB on cuda:0 -> float32 24.6 GB on cuda:0")

ModelStateGuard.check = check
from zq.cli import main
sys.exit(main(["worker", "--model", "turbo", "--name", "broken@test"]))
"""


def test_changed_weights_stop_the_worker_and_the_job_runs_on_another(
        cluster: Cluster, client: Client) -> None:
    log = cluster.logs / "broken.log"
    cluster.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **cluster.env, "ZQ_HEALTH_DIR": str(cluster.logs / "broken.health")}
    with log.open("wb") as out:
        broken = subprocess.Popen([sys.executable, "-c", LAUNCHER], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        job = client.generate("rendered by a healthy worker", width=64, height=64, steps=2)
        assert broken.wait(120) == EXIT_MODEL_CHANGED, log.read_text()[-3000:]
    finally:
        if broken.poll() is None:
            broken.kill()
    text = log.read_text()
    assert "stopping the worker: the loaded model changed during generate job" in text
    record = job.status()
    assert record.status is JobStatus.QUEUED and record.deliveries == 1
    cluster.start(ModelType.TURBO, name="healthy@test")
    done = job.wait(120)
    assert done.status is JobStatus.SUCCEEDED
    assert done.worker == "healthy@test" and done.deliveries == 2
