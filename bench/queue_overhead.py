"""What the queue adds per job: the same N renders in-process and through the real queue.

(a) In-process: the tiny turbo checkpoint is loaded once with ``worker.models.load_model``,
    warmed up like a worker (``worker.boot.warm_up``), then a ``worker.render.Renderer``
    renders N generate jobs back to back (no image encoding, no storage).
(b) Queue: an embedded Redis (``zq.embedded_redis.start_redis``), a local-directory store
    (or Ceph RGW S3 with ``--s3``) and one real ``python -m zq worker --model turbo``
    process. Once the worker is ready (model loaded and warmed up), the same N specs are
    submitted with ``producer.client.Client`` and waited for. The wall time runs from the
    first submit to the last ``finished_at`` the worker recorded.

Both sides run torch with ``--threads`` intra-op threads (OMP_NUM_THREADS for the worker,
``torch.set_num_threads`` here; default 1) so the model work is comparable and the
producer, Redis and RGW keep a core for themselves. Overhead ms/job is
``(queue wall - in-process wall) / N``; the worker manifests' ``timings_s`` break a
queued job into phases. Run: ``python bench/queue_overhead.py -n 50 [--s3]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from _shared import mean_ms, table, write_section

from common.job import JobKind, JobSpec, ModelType, new_job
from common.settings import Settings
from common.status import JobStatus

PHASES = ("load_inputs", "text_encode", "denoise", "vae_decode", "handoff_wait", "image_encode",
          "upload")
WORKER = "bench-turbo@bench"


def make_jobs(n: int, side: int, steps: int) -> list[JobSpec]:
    """N generate jobs with distinct prompts and seeds (so every job misses the caches)."""
    return [new_job(JobKind.GENERATE, prompt=f"bench prompt number {i}", seed=1000 + i,
                    steps=steps, width=side, height=side, model="turbo") for i in range(n)]


def in_process(checkpoint: Path, jobs: list[JobSpec]) -> tuple[float, list[dict[str, float]]]:
    """Wall seconds for rendering ``jobs`` on one warm Renderer, and each job's timings."""
    from worker.acceleration import ModelOptions
    from worker.boot import warm_up
    from worker.models import load_model
    from worker.render import Renderer
    from worker.results import RenderInputs

    renderer = Renderer(load_model(ModelType.TURBO, str(checkpoint), ModelOptions("cpu")))
    warm_up(renderer)
    timings = []
    started = time.perf_counter()
    for job in jobs:
        timings.append(renderer.render(job, RenderInputs(), lambda done, total: False).timings_s)
    return time.perf_counter() - started, timings


def storage_env(stack: ExitStack, workdir: Path, s3: bool) -> dict[str, str]:
    """ZQ_* storage variables: a local directory, or a fresh bucket on a private Ceph RGW."""
    if not s3:
        return {"ZQ_STORAGE_URL": (workdir / "storage").as_uri()}
    import boto3
    from botocore.config import Config

    from tests.services.ceph_rgw import rgw_available, start_rgw

    if not rgw_available():
        sys.exit("--s3 needs the Ceph binaries (scripts/install-system-deps)")
    rgw = start_rgw(workdir / "rgw")
    stack.callback(rgw.stop)
    boto3.client("s3", endpoint_url=rgw.endpoint_url, region_name=rgw.region,
                 aws_access_key_id=rgw.access_key, aws_secret_access_key=rgw.secret_key,
                 config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                 ).create_bucket(Bucket="zq-bench")
    return {"ZQ_STORAGE_URL": "s3://zq-bench/results", "ZQ_S3_ENDPOINT_URL": rgw.endpoint_url,
            "ZQ_S3_REGION": rgw.region, "AWS_ACCESS_KEY_ID": rgw.access_key,
            "AWS_SECRET_ACCESS_KEY": rgw.secret_key}


def start_worker(stack: ExitStack, env: dict[str, str], log: Path, timeout_s: float) -> None:
    """Start ``zq worker --model turbo``, stopped (SIGTERM, then SIGKILL) when ``stack`` closes."""
    import redis

    from zq.processes import stop

    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zq", "worker", "--model", "turbo",
                                 "--name", WORKER, "--loglevel", "WARNING"],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)

    stack.callback(stop, proc, 30)
    registry = redis.Redis.from_url(env["ZQ_REDIS_URL"], decode_responses=True)
    deadline = time.monotonic() + timeout_s
    while registry.hget(f"{env['ZQ_KEY_PREFIX']}:worker:{WORKER}", "ready") != "1":
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"worker not ready (rc={proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def through_queue(args: argparse.Namespace, checkpoint: Path, jobs: list[JobSpec],
                  workdir: Path) -> tuple[float, float, list[float], list[dict[str, float]]]:
    """Wall and submit seconds for ``jobs`` through the queue, per-job worker s, timings."""
    from producer.client import Client
    from zq.embedded_redis import start_redis

    with ExitStack() as stack:
        server = start_redis(workdir / "redis")
        stack.callback(server.stop)
        env = {"ZQ_REDIS_URL": server.url, "ZQ_MODEL_TURBO": str(checkpoint),
               "ZQ_DEVICE": "cpu", "ZQ_KEY_PREFIX": f"zqb{uuid.uuid4().hex[:6]}",
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
               **storage_env(stack, workdir, args.s3)}
        start_worker(stack, env, workdir / "worker.log", args.timeout)
        client = Client(Settings.from_env(env))
        started = time.time()
        for job in jobs:
            client.submit(job)
        submit = time.time() - started
        records = [client.wait(job.job_id, args.timeout, poll_s=0.02) for job in jobs]
        bad = [r for r in records if r.status is not JobStatus.SUCCEEDED]
        if bad:
            sys.exit(f"{len(bad)} jobs did not succeed, e.g. {bad[0].status}: {bad[0].error}")
        wall = max(r.finished_at or 0.0 for r in records) - started
        per_job = [(r.finished_at or 0.0) - (r.started_at or 0.0) for r in records]
        timings = [client.manifest(job.job_id)["timings_s"] for job in jobs]
    return wall, submit, per_job, timings


def main() -> None:
    """Run both modes and write the ``queue_overhead`` section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=50, help="jobs per mode")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--s3", action="store_true", help="store results on a private Ceph RGW")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint

    torch.set_num_threads(args.threads)
    n = args.jobs
    with tempfile.TemporaryDirectory(prefix="zq-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = make_tiny_checkpoint(workdir / "models" / "turbo", TINY_MODEL_SEEDS["turbo"])
        jobs = make_jobs(n, args.size, args.steps)
        local_wall, local_timings = in_process(checkpoint, jobs)
        queue_wall, submit, per_job, queue_timings = through_queue(args, checkpoint, jobs, workdir)
    store = "Ceph RGW (S3)" if args.s3 else "local directory"
    summary = table(
        ["mode", "jobs", "wall s", "jobs/s", "mean ms/job (wall/N)", "mean worker ms/job"],
        [["in-process Renderer", n, local_wall, n / local_wall, local_wall / n * 1000, "-"],
         [f"queue ({store})", n, queue_wall, n / queue_wall, queue_wall / n * 1000,
          mean_ms(per_job)]])
    overhead = (queue_wall - local_wall) / n * 1000
    phase_rows: list[list[object]] = [
        [p, mean_ms(t[p] for t in local_timings) if p in local_timings[0] else "-",
         mean_ms(t.get(p, 0.0) for t in queue_timings)] for p in PHASES]
    phased = sum(sum(t.get(p, 0.0) for p in PHASES) for t in queue_timings) / n
    phase_rows.append(["sum of phases", mean_ms(sum(t.values()) for t in local_timings),
                       phased * 1000])
    phase_rows.append(["rest of worker time (claim, manifest PUT, finish, hooks)", "-",
                       mean_ms(per_job) - phased * 1000])
    body = (f"{n} generate jobs, {args.size}x{args.size}, {args.steps} steps, tiny turbo "
            f"checkpoint, torch threads {args.threads} on both sides, one worker.\n\n"
            f"{summary}\n\n**Queue overhead: {overhead:.2f} ms/job** "
            f"(queue throughput = {local_wall / queue_wall:.2f}x in-process). Submitting took "
            f"{submit / n * 1000:.2f} ms/job in the producer, overlapped with the worker.\n\n"
            f"Mean per-job phases (ms):\n\n"
            f"{table(['phase', 'in-process', 'queue worker (manifest timings_s)'], phase_rows)}"
            "\n\n'mean worker ms/job' is `finished_at - started_at` (claim to finish, as the "
            "worker records it); wall/N also includes Celery delivery, ack and the gaps "
            "between jobs. The queue's denoise includes one Redis progress report per step. "
            "Storing (handoff_wait, image_encode, upload, the manifest PUT, finish) runs on the "
            "worker's finisher thread while the next job renders, so a job's claim-to-finish "
            "time overlaps the next one's; with jobs this small on 2 cores (the model, the "
            "finisher and, with --s3, Ceph's daemons share the CPU) the overlap gains little. "
            "`bench/handoff.py` measures the hand-off itself.")
    write_section(f"queue_overhead{'_s3' if args.s3 else ''}",
                  f"queue_overhead ({store})", body)


if __name__ == "__main__":
    main()
