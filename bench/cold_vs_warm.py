"""Cold start against a warm job: the ratio that justifies keeping model weights loaded.

Measured on the tiny turbo checkpoint, on CPU, with ``--threads`` torch threads:

* imports: a fresh ``python`` importing ``worker.models`` and ``worker.render`` (torch,
  diffusers, transformers), median of ``--import-runs`` processes;
* load: ``LoadedModel.load_seconds`` of ``worker.models.load_model``, ``--loads`` times in
  this process (the first pays diffusers' lazy imports, later ones hit the page cache);
* warm-up: ``worker.boot.warm_up`` (one small render) right after each load;
* warm job: the mean render of N generate jobs (distinct prompts) after warm-up;
* worker ready: with ``--worker`` (default), the seconds from starting a real
  ``python -m zq worker --model turbo`` (embedded Redis, local storage) until it reports
  ready, and the load/warm-up seconds it recorded in its registry entry.

Every cold figure is also given in warm jobs (cold seconds / warm job seconds).
Run: ``python bench/cold_vs_warm.py -n 50``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import torch
from _shared import table, write_section
from queue_overhead import WORKER, make_jobs, start_worker

from common.job import ModelType
from common.keys import Keys
from worker.acceleration import ModelOptions
from worker.boot import warm_up
from worker.models import load_model
from worker.render import Renderer
from worker.results import RenderInputs
from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint

IMPORTS = ("import time; t = time.perf_counter(); import worker.models, worker.render; "
           "print(time.perf_counter() - t)")


def import_seconds(runs: int, threads: int) -> float:
    """Median seconds a fresh interpreter spends importing the worker's model stack."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True,
                             text=True, check=True).stdout.split()[-1]) for _ in range(runs))


def worker_ready(checkpoint: Path, workdir: Path, threads: int) -> dict[str, float]:
    """Start-to-ready seconds of a real worker, and the load/warm-up seconds it recorded."""
    import redis

    from zq.embedded_redis import start_redis

    with ExitStack() as stack:
        server = start_redis(workdir / "redis")
        stack.callback(server.stop)
        prefix = f"zqb{uuid.uuid4().hex[:6]}"
        env = {"ZQ_REDIS_URL": server.url, "ZQ_MODEL_TURBO": str(checkpoint),
               "ZQ_DEVICE": "cpu", "ZQ_KEY_PREFIX": prefix, "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": str(threads),
               "ZQ_STORAGE_URL": (workdir / "storage").as_uri()}
        started = time.perf_counter()
        start_worker(stack, env, workdir / "worker.log", 120.0)
        ready = time.perf_counter() - started
        fields = redis.Redis.from_url(server.url, decode_responses=True).hgetall(
            Keys(prefix).worker(WORKER))
    return {"ready": ready, "load": float(fields["load_seconds"]),
            "warmup": float(fields["warmup_seconds"])}


def main() -> None:
    """Measure cold and warm costs and write the ``cold_vs_warm`` section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=50, help="warm jobs to average")
    parser.add_argument("--loads", type=int, default=5, help="model loads in this process")
    parser.add_argument("--import-runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--worker", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a real zq worker from start to ready")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="zq-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = make_tiny_checkpoint(workdir / "models" / "turbo", TINY_MODEL_SEEDS["turbo"])
        imports = import_seconds(args.import_runs, args.threads)
        loads, warmups = [], []
        for _ in range(args.loads):
            model = load_model(ModelType.TURBO, str(checkpoint), ModelOptions(device="cpu"))
            renderer = Renderer(model)
            loads.append(model.load_seconds)
            warmups.append(warm_up(renderer))
        renders = []
        for job in make_jobs(args.jobs, args.size, args.steps):
            started = time.perf_counter()
            renderer.render(job, RenderInputs(), lambda done, total: False)
            renders.append(time.perf_counter() - started)
        worker = worker_ready(checkpoint, workdir, args.threads) if args.worker else None
    warm = statistics.fmean(renders)
    later = loads[1:] or loads

    def row(name: str, seconds: float) -> list[object]:
        return [name, seconds * 1000, seconds / warm]

    rows = [row("warm job (mean render after warm-up)", warm),
            row("imports in a fresh process (median)", imports),
            row("first load_model (load_seconds)", loads[0]),
            row(f"later load_model (mean of {len(later)})", statistics.fmean(later)),
            row("warm-up render after the first load", warmups[0]),
            row(f"warm-up render after later loads (mean of {len(warmups[1:] or warmups)})",
                statistics.fmean(warmups[1:] or warmups)),
            row("first load + warm-up", loads[0] + warmups[0]),
            row("imports + first load + warm-up", imports + loads[0] + warmups[0])]
    if worker:
        rows += [row("zq worker: load_seconds it recorded", worker["load"]),
                 row("zq worker: warmup_seconds it recorded", worker["warmup"]),
                 row("zq worker: process start to ready", worker["ready"])]
    body = (f"Tiny turbo checkpoint on CPU, torch threads {args.threads}, jobs "
            f"{args.size}x{args.size} with {args.steps} steps, {args.jobs} warm jobs, "
            f"{args.loads} loads.\n\n{table(['what', 'ms', 'in warm jobs'], rows)}\n\n"
            "Here `make_tiny_checkpoint` has already imported the pipeline classes, so the "
            "in-process loads do not pay diffusers' lazy imports; the worker's recorded "
            "load_seconds comes from a fresh process and does.\n\n"
            "'in warm jobs' = seconds / mean warm job: how many jobs a worker could have "
            "rendered in the time a cold start costs. With real multi-GB checkpoints both the "
            "load and the per-job time are far larger; this run says nothing about their "
            "ratio on a GPU.")
    write_section("cold_vs_warm", "cold_vs_warm (model load + warm-up vs warm job)", body)


if __name__ == "__main__":
    main()
