"""GPU benchmark: the queue's cost, GPU idle time, memory and acceleration at real sizes.

Run on a GPU host with only the repository installed (``pip install -e .[worker]``):
``python bench/gpu.py`` (CUDA, full-depth real-shape checkpoint, about 7 minutes on one
H200). ``python bench/gpu.py --device cpu --tiny`` runs the same code paths on the CPU
with the tiny checkpoint in well under a minute (a smoke test, not a benchmark).

The checkpoint has the real Z-Image configs and random weights, built on the device
(no download): every figure is speed or memory, none says anything about image quality.
In one run, with one Redis, one ``zq worker --model turbo`` process and local storage:

(a) turbo generate p50/p95 per job in-process (``Renderer`` on a loaded model, no
    storage) against the queue (submit -> ``finished_at``, one job at a time);
(b) GPU idle share over N back-to-back queued jobs, from the worker manifests:
    ``1 - sum(text_encode + denoise + vae_decode) / (max(finished_at) - min(started_at))``;
(c) peak GPU memory of generate, edit, masked edit and refine on one loaded model, and
    its weights footprint, which must not grow (a silent fp32 upcast doubles it);
(d) in-process images/s per size for each attention backend, with ``torch.compile``
    and with FP8, in that order (compile and FP8 cannot be undone), each skipped when
    the global time budget would not cover it.

The table goes to stdout and to this run's section of ``bench/RESULTS.md``; progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _shared
from _shared import table, write_section

from common.errors import ConfigError, WorkerBroken
from common.job import JobKind, JobSpec, ModelType, new_job

# The budget starts here: the imports above are light, torch and diffusers come later.
STARTED = time.monotonic()

if TYPE_CHECKING:
    import torch

    from producer.client import Client
    from worker.acceleration import ModelOptions
    from worker.models import LoadedModel
    from worker.render import Renderer
    from worker.results import RenderInputs

#: Defaults per checkpoint: a real-shape run on a GPU, or the CPU smoke run.
PROFILES: dict[str, dict[str, Any]] = {
    "real": {"side": 1024, "sizes": "512,1024", "steps": 9, "jobs": 50, "latency_jobs": 10,
             "images": 5},
    "tiny": {"side": 128, "sizes": "64,128", "steps": 2, "jobs": 10, "latency_jobs": 5,
             "images": 3},
}
BACKENDS = ("native", "flash", "_flash_3")
BACKEND_LABELS = {"native": "sdpa/native"}
GPU_PHASES = ("text_encode", "denoise", "vae_decode")
# A guess at the first compile of the repeated block at two sizes; only used to decide
# whether the compile variant still fits the budget.
COMPILE_ESTIMATE_S = {"cuda": 150.0, "cpu": 60.0}
QUANTIZE_ESTIMATE_S = 30.0
RESERVE_S = 20.0  # shutdown, cleanup and the RESULTS.md write after the last variant
WORKER = "bench-gpu-turbo@bench"
NA_CPU = "n/a on cpu"


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"[gpu.py {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Report:
    """The one table this script prints: (measurement, value, notes) rows."""

    rows: list[tuple[str, object, str]] = field(default_factory=list)

    def add(self, label: str, value: object, notes: str = "") -> None:
        """Add a row; a string value is a status (``unavailable: ...``, ``n/a on cpu``)."""
        if isinstance(value, str):
            value = _cell(value)
        self.rows.append((label, value, _cell(notes)))

    def markdown(self) -> str:
        """The rows as a Markdown table."""
        return table(["measurement", "value", "notes"], self.rows)


def _cell(text: str, limit: int = 240) -> str:
    """One table cell: no pipes or newlines, and not a whole traceback."""
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Budget:
    """The global time budget: later variants are skipped rather than overrun it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = STARTED + seconds

    def left(self) -> float:
        """Seconds left before the deadline, less a reserve for shutting down."""
        return self.deadline - time.monotonic() - RESERVE_S

    def allows(self, estimate_s: float) -> bool:
        """Whether something expected to take ``estimate_s`` still fits."""
        return self.left() >= estimate_s


# -- arguments and set-up --------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes, steps and counts default per profile (real or tiny)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtype", default="auto", help="ZQ_DTYPE (auto: bf16 on cuda)")
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint (smoke test)")
    parser.add_argument("--layers", type=int, default=None,
                        help="real-shape checkpoint with N layers per stack (default: full)")
    parser.add_argument("--side", type=int, help="side of the (a)/(b) turbo jobs in px")
    parser.add_argument("--sizes", help="comma-separated sides for (d) throughput")
    parser.add_argument("--steps", type=int, help="scheduler steps per job (turbo: 9)")
    parser.add_argument("--jobs", type=int, help="back-to-back queued jobs for (b)")
    parser.add_argument("--latency-jobs", type=int, help="jobs per side for (a)")
    parser.add_argument("--images", type=int, help="timed images per size and variant (d)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads on both sides (default: 1 on cpu)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="global time budget")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for the worker to be ready or a job to end")
    parser.add_argument("--workdir", type=Path, help="parent folder for the checkpoint etc.")
    parser.add_argument("--results", type=Path, default=_shared.RESULTS,
                        help="the RESULTS.md to write this run's section into")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    for name, value in PROFILES["tiny" if args.tiny else "real"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.size_list = [int(side) for side in str(args.sizes).split(",") if side.strip()]
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    return args


def section_name(args: argparse.Namespace) -> str:
    """Only a full-depth CUDA run may write the ``gpu`` section; smoke runs get their own."""
    name = "gpu" if args.device.startswith("cuda") else f"gpu_{args.device.split(':')[0]}"
    if args.tiny:
        return f"{name}_tiny"
    return f"{name}_layers{args.layers}" if args.layers is not None else name


def checkpoint_label(args: argparse.Namespace) -> str:
    """Which checkpoint this run used, in words."""
    if args.tiny:
        return "tiny (worker.tiny_models.make_tiny_checkpoint)"
    depth = "full real depth" if args.layers is None else f"{args.layers} layer(s) per stack"
    return f"real-shape, {depth} (make_real_shape_checkpoint)"


def real_shape_builder() -> Callable[..., Path]:
    """``make_real_shape_checkpoint``, wherever it lives (it is being added in parallel)."""
    for module_name in ("worker.real_shape", "worker.tiny_models"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        builder = getattr(module, "make_real_shape_checkpoint", None)
        if builder is not None:
            return builder  # type: ignore[no-any-return]
    sys.exit("make_real_shape_checkpoint is in neither worker.real_shape nor "
             "worker.tiny_models; use --tiny")


def build_checkpoint(args: argparse.Namespace, path: Path) -> Path:
    """The turbo checkpoint: tiny, or real-shape random weights built on the device."""
    import torch

    if args.tiny:
        from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint

        return Path(make_tiny_checkpoint(path, TINY_MODEL_SEEDS["turbo"]))
    built = real_shape_builder()(path, seed=0, layers=args.layers, dtype=torch.bfloat16,
                                 device=args.device)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the builder's copy must not count against the runs
    return Path(built)


def model_options(args: argparse.Namespace, **changes: Any) -> ModelOptions:
    """This run's device and dtype, with the given serving options."""
    from worker.acceleration import ModelOptions

    return replace(ModelOptions(device=args.device, dtype=args.dtype), **changes)


def make_job(number: int, side: int | None, steps: int, kind: JobKind = JobKind.GENERATE,
             **extra: Any) -> JobSpec:
    """A job with its own prompt and seed, so every job misses the prompt cache."""
    if side is not None:
        extra.update(width=side, height=side)
    return new_job(kind, prompt=f"gpu bench prompt number {number}", seed=5000 + number,
                   steps=steps, **extra)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between samples; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- the queue: Redis, one worker, local storage -----------------------------------------


def worker_env(args: argparse.Namespace, redis_url: str, checkpoint: Path,
               workdir: Path) -> dict[str, str]:
    """What the worker and the producer share, plus the worker's serving settings."""
    env = {"ZQ_REDIS_URL": redis_url, "ZQ_STORAGE_URL": (workdir / "storage").as_uri(),
           "ZQ_KEY_PREFIX": f"zqg{uuid.uuid4().hex[:6]}", "ZQ_MODEL_TURBO": str(checkpoint),
           "ZQ_DEVICE": args.device, "ZQ_DTYPE": args.dtype,
           "ZQ_WARMUP_SIZE_PX": str(args.side), "ZQ_METRICS_PORT": "0",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def spawn_worker(stack: ExitStack, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``zq worker --model turbo``; stopped when ``stack`` closes, or by the caller."""
    from zq.processes import die_with_parent

    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zq", "worker", "--model", "turbo",
                                 "--name", WORKER, "--loglevel", "WARNING"],
                                env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent())
    stack.callback(stop_worker, proc)
    return proc


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker drains its finisher), then SIGKILL; safe to call twice."""
    from zq.processes import stop

    stop(proc, timeout_s=60)


def wait_ready(proc: subprocess.Popen[bytes], env: dict[str, str], log_path: Path,
               timeout_s: float) -> dict[str, str]:
    """Block until the worker has loaded and warmed up; returns its registry entry."""
    import redis

    registry = redis.Redis.from_url(env["ZQ_REDIS_URL"], decode_responses=True)
    key = f"{env['ZQ_KEY_PREFIX']}:worker:{WORKER}"
    deadline = time.monotonic() + timeout_s
    while registry.hget(key, "ready") != "1":
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"worker not ready (rc={proc.poll()}):\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return {str(k): str(v) for k, v in registry.hgetall(key).items()}


def queue_latency(client: Client, jobs: list[JobSpec], timeout_s: float) -> list[float]:
    """Seconds from submit to the worker's ``finished_at``, one job in flight at a time."""
    latencies = []
    for job in jobs:
        submitted = time.time()
        client.submit(job)
        record = _succeeded(client.wait(job.job_id, timeout_s, poll_s=0.005))
        latencies.append((record.finished_at or 0.0) - submitted)
    return latencies


def queue_burst(client: Client, jobs: list[JobSpec], timeout_s: float) -> list[dict[str, Any]]:
    """Submit every job at once, wait for all; returns their manifests."""
    for job in jobs:
        client.submit(job)
    for job in jobs:
        _succeeded(client.wait(job.job_id, timeout_s, poll_s=0.02))
    return [client.manifest(job.job_id) for job in jobs]


def _succeeded(record: Any) -> Any:
    from common.status import JobStatus

    if record.status is not JobStatus.SUCCEEDED:
        sys.exit(f"job {record.spec.job_id} {record.status.value}: {record.error}")
    return record


def idle_share(manifests: list[dict[str, Any]],
               phases: Sequence[str]) -> tuple[float, float, float]:
    """(idle %, busy s, wall s): busy is the sum of ``phases``, wall first start to last end."""
    busy = sum(m["timings_s"].get(phase, 0.0) for m in manifests for phase in phases)
    wall = max(m["finished_at"] for m in manifests) - min(m["started_at"] for m in manifests)
    return (1 - busy / wall) * 100 if wall > 0 else float("nan"), busy, wall


def run_queue(args: argparse.Namespace, proc: subprocess.Popen[bytes], env: dict[str, str]
              ) -> tuple[list[float], list[dict[str, Any]]]:
    """(a) queue latency one job at a time, then (b) N jobs back to back; stops the worker.

    Returns the latencies and the back-to-back jobs' manifests.
    """
    from common.settings import Settings
    from producer.client import Client

    client = Client(Settings.from_env(env))
    log(f"queue: {args.latency_jobs} jobs one at a time")
    latencies = queue_latency(
        client, [make_job(i, args.side, args.steps) for i in range(args.latency_jobs)],
        args.timeout)
    log(f"queue: {args.jobs} jobs back to back")
    burst = [make_job(1000 + i, args.side, args.steps) for i in range(args.jobs)]
    manifests = queue_burst(client, burst, args.timeout)
    stop_worker(proc)  # frees the GPU (and, on a CPU, the cores) for the in-process part
    return latencies, manifests


def report_idle(args: argparse.Namespace, manifests: list[dict[str, Any]],
                report: Report) -> None:
    """(b) rows: idle share of the queued run, and what the worker says it served."""
    for label, phases in (("GPU idle, text_encode+denoise+vae_decode busy (%)", GPU_PHASES),
                          ("GPU idle, denoise+vae_decode busy (%)", GPU_PHASES[1:])):
        idle, busy, wall = idle_share(manifests, phases)
        report.add(label, idle, f"{args.jobs} queued jobs: busy {busy:.2f} s of wall "
                   f"{wall:.2f} s (goal: idle <= 2%)")
    model = manifests[-1]["model"]
    report.add("worker weights footprint (MB, manifest parameter_bytes)",
               _parameter_total(model["parameter_bytes"]) / 1e6,
               f"{model['dtype']}, attention {model['attention_backend']}, compiled "
               f"{model['compiled']}, fp8 {model['fp8']}, cpu_offload {model['cpu_offload']}")


def _parameter_total(parameter_bytes: dict[str, dict[str, int]]) -> int:
    return sum(size for part in parameter_bytes.values() for size in part.values())


# -- in-process ---------------------------------------------------------------------------


def render_timed(renderer: Renderer, job: JobSpec, inputs: RenderInputs | None = None
                 ) -> tuple[float, Any]:
    """Render one job; returns (seconds, result). The decode to the CPU synchronises."""
    from worker.results import RenderInputs

    started = time.perf_counter()
    result = renderer.render(job, inputs or RenderInputs(), lambda done, total: False)
    return time.perf_counter() - started, result


def footprint_bytes(pipeline: Any) -> int:
    """The weights' bytes as they are now (a fresh guard takes a fresh footprint)."""
    from worker.model_state import ModelStateGuard

    return _parameter_total(ModelStateGuard(pipeline).parameter_bytes())


def is_cuda(device: torch.device) -> bool:
    """Whether measurements of GPU memory make sense on ``device``."""
    return device.type == "cuda"


def memory_jobs(args: argparse.Namespace, image: Any) -> list[tuple[str, JobSpec, RenderInputs]]:
    """Generate, edit, masked edit and refine: each pipeline the model serves."""
    from PIL import Image, ImageDraw

    from worker.results import RenderInputs

    mask = Image.new("L", image.size, 0)
    width, height = image.size
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4),
                                   fill=255)
    source = {"source_image": "bench/source.png"}
    return [
        ("turbo generate", make_job(2000, args.side, args.steps), RenderInputs()),
        ("edit", make_job(2001, None, args.steps, JobKind.EDIT, **source), RenderInputs(image)),
        ("masked edit", make_job(2002, None, args.steps, JobKind.EDIT, mask="bench/mask.png",
                                 **source), RenderInputs(image, mask)),
        ("refine (CFG)", make_job(2003, None, args.steps, JobKind.REFINE, **source),
         RenderInputs(image)),
    ]


def measure_memory(args: argparse.Namespace, loaded: LoadedModel, renderer: Renderer,
                   report: Report, image: Any) -> None:
    """(c) Peak memory per job kind on one model; the weights footprint must not grow."""
    import torch

    device = loaded.device
    loaded_bytes = _parameter_total(loaded.guard.parameter_bytes())
    report.add("weights footprint after load (MB, parameter_bytes)", loaded_bytes / 1e6,
               f"{loaded.dtype}; the worker refuses any change after a job")
    if image is None:  # no latency job ran: the edits need a picture to start from
        image = render_timed(renderer, make_job(1999, args.side, args.steps))[1].image
    before = torch.cuda.memory_allocated(device) / 1e9 if is_cuda(device) else 0.0
    report.add("GPU memory allocated before the jobs (GB)", before if is_cuda(device) else NA_CPU,
               "weights plus the prompt-embedding cache")
    for label, job, inputs in memory_jobs(args, image):
        if is_cuda(device):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds, _ = render_timed(renderer, job, inputs)
            broken = ""
        except WorkerBroken as exc:
            seconds, broken = float("nan"), str(exc)
        now = footprint_bytes(loaded.pipeline)
        notes = (f"render {seconds:.2f} s; weights {now / 1e6:.2f} MB, "
                 + ("unchanged" if now == loaded_bytes and not broken else
                    f"!!! WEIGHTS GREW from {loaded_bytes / 1e6:.2f} MB (fp32 upcast?) {broken}"))
        if "GREW" in notes:
            log(f"!!! {label}: {notes}")
        peak: object = NA_CPU
        if is_cuda(device):
            peak = torch.cuda.max_memory_allocated(device) / 1e9
            notes += f"; {peak - before:.2f} GB above the allocation before the jobs"
        report.add(f"peak GPU memory, {label} (GB)", peak, notes)


Throughput = dict[int, tuple[float, float, float]]
"""Per side: (images/s, the worker's warm-up seconds, the first job's seconds after it)."""


def throughput(renderer: Renderer, args: argparse.Namespace) -> Throughput:
    """Images/s per size, after the worker's warm-up and one untimed job.

    The untimed job has a prompt of a real job's length: a compiled model warmed up on
    the worker's short warm-up prompt recompiles for it, and that cost is reported apart.
    """
    from worker.boot import warm_up

    results = {}
    for side in args.size_list:
        warm_s = warm_up(renderer, ((side, side),))
        jobs = [make_job(3000 + side * 100 + i, side, args.steps) for i in range(args.images + 1)]
        first_s, _ = render_timed(renderer, jobs[0])
        started = time.perf_counter()
        for job in jobs[1:]:
            render_timed(renderer, job)
        results[side] = (args.images / (time.perf_counter() - started), warm_s, first_s)
    return results


@dataclass
class Variant:
    """One (d) configuration: options applied to the loaded model, or a fresh load."""

    label: str
    apply: dict[str, Any]
    fresh_load: bool = False
    compiles: bool = False
    # The variant whose model this one builds on; it runs only if that one ran.
    after: str = ""


VARIANTS = (
    *(Variant(BACKEND_LABELS.get(b, b), {"attention_backend": b}) for b in BACKENDS),
    Variant("compile (sdpa)", {"attention_backend": "native", "compile": True}, compiles=True),
    Variant("fp8", {"fp8": True}, fresh_load=True),
    Variant("fp8 + compile", {"compile": True}, compiles=True, after="fp8"),
)


@dataclass
class Bench:
    """The in-process state the variants share: the loaded model and what it cost."""

    args: argparse.Namespace
    budget: Budget
    report: Report
    loaded: LoadedModel | None
    renderer: Renderer | None
    # Seconds one eager pass over the sizes takes: guessed from the latency jobs, then
    # measured by the first variant that runs.
    eager_cost_s: float = 0.0
    eager_measured: bool = False
    # Each variant's outcome: "ok" or the status its rows show.
    outcomes: dict[str, str] = field(default_factory=dict)

    def estimate(self, variant: Variant) -> float:
        """Seconds the variant is expected to take: the eager pass plus its own costs."""
        estimate = self.eager_cost_s
        device_type = self.loaded.device.type if self.loaded else "cpu"
        if variant.compiles:
            estimate += COMPILE_ESTIMATE_S.get(device_type, 60.0)
        if variant.fresh_load and self.loaded is not None:
            estimate += self.loaded.load_seconds + QUANTIZE_ESTIMATE_S + self.eager_cost_s
        return estimate


def prepare(bench: Bench, variant: Variant) -> None:
    """Apply the variant's options to the loaded model, or load a fresh one for it.

    Raises ``ConfigError`` for what this device or install cannot do.
    """
    from worker.acceleration import accelerate, check_available
    from worker.models import load_model
    from worker.render import Renderer

    if bench.loaded is None:
        raise ConfigError("no model is loaded (an earlier fresh load failed)")
    options = model_options(bench.args, **variant.apply)
    if variant.fresh_load:
        check_available(options, bench.loaded.device, bench.loaded.dtype)
        model_type, source = bench.loaded.model, bench.loaded.source.requested
        free_model(bench)
        bench.loaded = load_model(model_type, source, options)
        bench.renderer = Renderer(bench.loaded)
        bench.report.add(f"{variant.label}: load + quantize (s)", bench.loaded.load_seconds)
        return
    check_available(options, bench.loaded.device, bench.loaded.dtype)
    accelerate(bench.loaded.pipeline, options)
    bench.loaded.options = replace(bench.loaded.options, **variant.apply)


def free_model(bench: Bench) -> None:
    """Drop the loaded model (and compiled graphs holding it) before a fresh load."""
    import torch

    bench.loaded = bench.renderer = None
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def blocked(bench: Bench, variant: Variant) -> str:
    """Why the variant cannot run now ("" if it can): budget, or its base variant missing."""
    if variant.after and bench.outcomes.get(variant.after) != "ok":
        base = bench.outcomes.get(variant.after, "not run")
        return base if base.startswith("skipped") else f"unavailable: needs {variant.after}"
    if not bench.budget.allows(bench.estimate(variant)):
        return (f"skipped: time budget (~{bench.estimate(variant):.0f} s needed, "
                f"{max(bench.budget.left(), 0):.0f} s left)")
    return ""


def measure_variant(bench: Bench, variant: Variant) -> Throughput | str:
    """The variant's throughput per size, or the status that replaces its numbers."""
    log(f"variant {variant.label}")
    started = time.perf_counter()
    try:
        prepare(bench, variant)
        assert bench.renderer is not None
        measured = throughput(bench.renderer, bench.args)
    except ConfigError as exc:
        return f"unavailable: {exc}"
    except Exception as exc:  # a variant that breaks at run time must not end the run
        return f"failed: {type(exc).__name__}: {exc}"
    if not bench.eager_measured:
        bench.eager_cost_s, bench.eager_measured = time.perf_counter() - started, True
    return measured


def run_variant(bench: Bench, variant: Variant) -> None:
    """Measure one variant, or say why not; never raises for the variant's own failure."""
    outcome = blocked(bench, variant) or measure_variant(bench, variant)
    bench.outcomes[variant.label] = outcome if isinstance(outcome, str) else "ok"
    if isinstance(outcome, str):
        for side in bench.args.size_list:
            bench.report.add(f"throughput {side}x{side}, {variant.label} (img/s)", outcome)
        return
    for side, (images_s, warm_s, first_s) in outcome.items():
        warm = "compile + warm-up" if variant.compiles else "warm-up"
        bench.report.add(f"throughput {side}x{side}, {variant.label} (img/s)", images_s,
                         f"{bench.args.images} images, {1000 / images_s:.1f} ms/img; "
                         f"{warm} {warm_s:.2f} s, then first job {first_s:.2f} s")
        if variant.compiles:
            bench.report.add(f"compile + warm-up {side}x{side}, {variant.label} (s)", warm_s,
                             f"worker.boot.warm_up; the first job after it took {first_s:.2f} s "
                             "(a recompile if its prompt length differs)")


def run_in_process(args: argparse.Namespace, loaded: LoadedModel, queue_s: list[float],
                   manifests: list[dict[str, Any]], budget: Budget, report: Report) -> None:
    """(a) in-process latency against the queue's, (c) memory, then the (d) variants."""
    from worker.boot import warm_up
    from worker.render import Renderer

    renderer = Renderer(loaded)
    warm_s = warm_up(renderer, ((args.side, args.side),))
    log(f"in-process: {args.latency_jobs} jobs (warm-up {warm_s:.2f} s)")
    local, last = [], None
    for i in range(args.latency_jobs):
        seconds, last = render_timed(renderer, make_job(i, args.side, args.steps))
        local.append(seconds)
    what = f"{args.latency_jobs} turbo jobs {args.side}x{args.side}, {args.steps} steps"
    report.add("in-process p50 (ms/job)", percentile(local, 50) * 1000,
               f"{what}; Renderer on the loaded model, no storage")
    report.add("in-process p95 (ms/job)", percentile(local, 95) * 1000, what)
    report.add("queue p50 (ms/job)", percentile(queue_s, 50) * 1000,
               f"{what}; submit -> finished_at, one job in flight, one worker, local storage")
    report.add("queue p95 (ms/job)", percentile(queue_s, 95) * 1000, what)
    report.add("queue / in-process, p50 (x)",
               percentile(queue_s, 50) / percentile(local, 50),
               "the queue's cost per job at this model size")
    report_idle(args, manifests, report)
    log("in-process: memory per job kind")
    measure_memory(args, loaded, renderer, report, last.image if last else None)
    # The largest size costs about a latency job per image (+ warm-up and first job).
    guess = percentile(local, 50) * (args.images + 2) * len(args.size_list)
    bench = Bench(args, budget, report, loaded, renderer, eager_cost_s=guess)
    for variant in VARIANTS:
        run_variant(bench, variant)


# -- the run ------------------------------------------------------------------------------


def header(args: argparse.Namespace) -> str:
    """Which device, libraries and checkpoint produced these numbers, and what they mean."""
    import diffusers
    import torch

    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(args.device).index or 0)
        device = (f"{props.name} (compute {props.major}.{props.minor}, "
                  f"{props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    else:
        device = f"CPU, torch threads {torch.get_num_threads()}"
    return (f"Device: {device}; torch {torch.__version__}; diffusers {diffusers.__version__}; "
            f"ZQ_DTYPE {args.dtype}.\n\nCheckpoint: {checkpoint_label(args)}, turbo "
            f"(ZImagePipeline). **Random weights: speed and memory only, nothing about image "
            f"quality.** Sizes {args.side}px for (a)-(c) and {args.sizes} for (d), "
            f"{args.steps} steps; budget {args.budget_s:.0f} s.")


def run(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    """Build the checkpoint, run the queue part, then everything in-process."""
    from worker.models import load_model
    from zq.embedded_redis import start_redis

    log(f"building checkpoint: {checkpoint_label(args)}")
    started = time.perf_counter()
    checkpoint = build_checkpoint(args, workdir / "models" / "turbo")
    report.add("checkpoint build (s)", time.perf_counter() - started, checkpoint_label(args))
    budget = Budget(args.budget_s)
    with ExitStack() as stack:
        server = start_redis(workdir / "redis")
        stack.callback(server.stop)
        env = worker_env(args, server.url, checkpoint, workdir)
        worker_log = workdir / "worker.log"
        proc = spawn_worker(stack, env, worker_log)
        log("loading the in-process model while the worker starts")
        loaded = load_model(ModelType.TURBO, str(checkpoint), model_options(args))
        report.add("model load, in-process (s)", loaded.load_seconds, str(loaded.dtype))
        entry = wait_ready(proc, env, worker_log, args.timeout)
        report.add("worker load + warm-up (s)",
                   float(entry.get("load_seconds", "nan")) + float(entry.get("warmup_seconds",
                                                                              "nan")),
                   f"warm-up at {args.side}px (ZQ_WARMUP_SIZE_PX)")
        queue_s, manifests = run_queue(args, proc, env)
    run_in_process(args, loaded, queue_s, manifests, budget, report)


def main(argv: Sequence[str] | None = None) -> None:
    """Run everything and print (and, unless ``--no-write``, record) the table."""
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from diffusers.utils import logging as diffusers_logging

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible; for a CPU smoke run: python bench/gpu.py --device cpu "
                 "--tiny")
    diffusers_logging.disable_progress_bar()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="zq-bench-gpu-", dir=args.workdir) as tmp:
        run(args, Path(tmp), report)
    total = time.monotonic() - STARTED
    report.add("total run time (s)", total, f"budget {args.budget_s:.0f} s")
    body = f"{header(args)}\n\n{report.markdown()}"
    log(f"done in {total:.1f} s")
    if args.no_write:
        print(body)
        return
    write_section(section_name(args), f"{section_name(args)} (queue cost, GPU idle, memory, "
                  f"acceleration; {checkpoint_label(args).split(' (')[0]} checkpoint)", body,
                  args.results)


if __name__ == "__main__":
    main()
