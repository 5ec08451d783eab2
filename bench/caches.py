"""The worker's two per-process caches: prompt embeddings and initial-noise templates.

One tiny turbo checkpoint is loaded once and warmed up on a throw-away Renderer; each
scenario then gets a fresh ``worker.render.Renderer`` (empty caches) and renders N
generate jobs:

* ``repeat``: the same prompt and seed for every job (all but the first job hit),
* ``distinct``: a different prompt and seed per job (every job misses),
* ``repeat, caches off``: the same prompt and seed with both cache sizes 0 (a control
  that encodes the same text every time).

Each job is classed as a prompt-cache hit or miss by the cache's hit counter, and the
mean ``text_encode`` time (``RenderResult.timings_s``) is reported per class, with the
cache hit/miss counts and the mean render time. The tiny text encoder is a 2-layer Qwen3
of width 32, so the saving per hit here is small; the real Qwen3-4B encoder costs far
more per prompt (not measured here). Run: ``python bench/caches.py -n 50``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _shared import mean_ms, median_ms, table, tiny_render_args, write_section

from common.job import JobKind, JobSpec, ModelType, new_job
from worker.acceleration import ModelOptions
from worker.boot import warm_up
from worker.caches import latent_shape
from worker.models import LoadedModel, load_model
from worker.render import Renderer
from worker.results import RenderInputs
from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint


def scenario_jobs(name: str, n: int, side: int, steps: int) -> list[JobSpec]:
    """The N job specs of one scenario."""

    def job(i: int) -> JobSpec:
        distinct = name == "distinct"
        return new_job(JobKind.GENERATE, steps=steps, width=side, height=side, model="turbo",
                       prompt=f"a red bicycle by a canal, variant {i if distinct else 0}",
                       seed=7 + (i if distinct else 0))

    return [job(i) for i in range(n)]


def run_scenario(model: LoadedModel, name: str, args: argparse.Namespace) -> list[object]:
    """Render one scenario on a fresh Renderer; returns its table row."""
    size = 0 if name.endswith("caches off") else 256
    renderer = Renderer(model, prompt_cache_size=size, latent_cache_size=size)
    hit_s: list[float] = []
    miss_s: list[float] = []
    denoise_s: list[float] = []
    started = time.perf_counter()
    for job in scenario_jobs(name, args.jobs, args.size, args.steps):
        hits = renderer.prompt_cache.hits
        result = renderer.render(job, RenderInputs(), lambda done, total: False)
        took = result.timings_s["text_encode"]
        (hit_s if renderer.prompt_cache.hits > hits else miss_s).append(took)
        denoise_s.append(result.timings_s["denoise"])
    wall = time.perf_counter() - started
    prompts, latents = renderer.prompt_cache, renderer.latent_cache
    return [name, args.jobs, f"{prompts.hits}/{prompts.misses}", f"{latents.hits}/{latents.misses}",
            f"{mean_ms(hit_s):.4f}" if hit_s else "-", mean_ms(miss_s) if miss_s else "-",
            median_ms(miss_s) if miss_s else "-", mean_ms(denoise_s), wall / args.jobs * 1000]


def main() -> None:
    """Run the three scenarios and write the ``caches`` section of RESULTS.md."""
    args = tiny_render_args(__doc__.splitlines()[0], jobs=50)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="zq-bench-") as tmp:
        path = make_tiny_checkpoint(Path(tmp) / "turbo", TINY_MODEL_SEEDS["turbo"])
        model = load_model(ModelType.TURBO, str(path), ModelOptions(device="cpu"))
    warm_up(Renderer(model))
    rows = [run_scenario(model, name, args)
            for name in ("repeat", "distinct", "repeat, caches off")]
    hit, miss = float(str(rows[0][4])), float(str(rows[1][5]))
    ratio = (f"A prompt-cache hit costs {hit * 1000:.1f} us against {miss:.2f} ms for a miss "
             f"on the tiny encoder; with hits, a job renders in "
             f"{float(str(rows[0][8])) / float(str(rows[2][8])):.2f}x the time of the same job "
             "with the caches off.")
    pipe = model.pipeline
    shape = "x".join(str(d) for d in latent_shape(
        args.size, args.size, int(pipe.transformer.config.in_channels),
        int(pipe.vae_scale_factor)))
    headers = ["scenario", "jobs", "prompt hits/misses", "latent hits/misses",
               "text_encode ms (hits, mean)", "text_encode ms (misses, mean)",
               "text_encode ms (misses, median)", "denoise ms (mean)", "render ms/job"]
    body = (f"{args.jobs} generate jobs per scenario, {args.size}x{args.size}, {args.steps} "
            f"steps, tiny turbo checkpoint, torch threads {args.threads}, one Renderer per "
            f"scenario.\n\n{table(headers, rows)}\n\n{ratio}\n\n"
            "Caveat: the tiny text encoder is a 2-layer Qwen3 of width 32, so a miss costs only "
            "a few ms here and the saving per hit is correspondingly tiny. The real Z-Image "
            "text encoder (Qwen3-4B) costs far more per prompt; this run does not measure it. "
            f"The latent-template cache saves one `randn` of the initial noise ({shape} at "
            f"{args.size}x{args.size}), which is far below timer noise here: its effect is "
            "only visible in the hit counts.")
    write_section("caches", "caches (prompt embeddings, latent templates)", body)


if __name__ == "__main__":
    main()
