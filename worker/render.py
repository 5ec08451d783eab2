"""Render one job on a loaded model: a plain function, testable without Celery."""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image

from common.errors import AdapterFailed, InputImageError, InvalidJob, JobCancelled
from common.images import fit_size
from common.job import JobKind, JobSpec
from worker.adapters import AdapterSet
from worker.caches import LRUCache, latent_shape, make_latent_template
from worker.models import LoadedModel, ProgressCallback
from worker.results import RenderInputs, RenderResult

PromptKey = tuple[str, str, bool]
Embeds = tuple[list[torch.Tensor], list[torch.Tensor]]


class Renderer:
    """Owns the warm model and its caches; renders jobs one at a time."""

    def __init__(self, model: LoadedModel, prompt_cache_size: int = 256,
                 latent_cache_size: int = 32, adapters: AdapterSet | None = None) -> None:
        self.model = model
        # LoRA adapters on the transformer (None: this renderer cannot apply any).
        self.adapters = adapters
        self.prompt_cache: LRUCache[PromptKey, Embeds] = LRUCache(prompt_cache_size)
        self.latent_cache: LRUCache[tuple[int, ...], torch.Tensor] = LRUCache(latent_cache_size)

    def output_size(self, job: JobSpec, inputs: RenderInputs) -> tuple[int, int]:
        """(width, height): the job's, or derived from its input image by ``fit_size``.

        The input's aspect ratio is kept, scaled down to fit the job limits (``MAX_PIXELS``,
        ``MAX_SIDE_PX``), each side rounded down to the model's size multiple.
        """
        multiple = self.model.size_multiple
        if job.width is not None and job.height is not None:
            for name, side in (("width", job.width), ("height", job.height)):
                if side % multiple:
                    raise InvalidJob(name, f"must be a multiple of {multiple} for this model", side)
            return job.width, job.height
        if inputs.image is None:
            raise InvalidJob("width", "a job without an input image needs width and height")
        width, height = inputs.image.size
        if width < multiple or height < multiple:
            raise InputImageError(f"input image {width}x{height} is smaller than {multiple}px")
        return fit_size(width, height, multiple)

    def render(self, job: JobSpec, inputs: RenderInputs, on_step: ProgressCallback) -> RenderResult:
        """Run the pipeline for ``job``; raises ``JobCancelled`` if ``on_step`` asks to stop.

        Afterwards, however the job ended, the loaded weights must be as they were
        loaded: ``WorkerBroken`` otherwise.
        """
        try:
            if self.adapters is not None:
                self.adapters.apply(job.adapters)  # none named: LoRA off
            elif job.adapters:
                raise AdapterFailed("this worker was started without LoRA adapter support")
            return self._render(job, inputs, on_step)
        finally:
            self.model.guard.check(f"{job.kind.value} job {job.job_id}")

    def _render(self, job: JobSpec, inputs: RenderInputs,
                on_step: ProgressCallback) -> RenderResult:
        timings: dict[str, float] = {}
        width, height = self.output_size(job, inputs)
        started = time.perf_counter()
        prompt_embeds, negative_embeds = self._embeds(job)
        timings["text_encode"] = time.perf_counter() - started
        generator = torch.Generator("cpu").manual_seed(job.seed)
        steps = _StepCounter(on_step, job.steps)
        kwargs: dict[str, Any] = {
            "prompt_embeds": list(prompt_embeds),
            "negative_prompt_embeds": list(negative_embeds) or None,
            "guidance_scale": job.guidance,
            "num_inference_steps": job.steps,
            "height": height,
            "width": width,
            "generator": generator,
            "callback_on_step_end": steps,
            "output_type": "latent",
        }
        started = time.perf_counter()
        with torch.inference_mode():
            if job.kind is JobKind.GENERATE:
                latents = self._generate(job, kwargs)
            else:
                latents = self._edit(job, inputs, kwargs, width, height)
        timings["denoise"] = time.perf_counter() - started
        if steps.stopped:
            raise JobCancelled(f"cancelled at step {steps.done} of {job.steps}")
        started = time.perf_counter()
        pixels = self.decode(latents)
        timings["vae_decode"] = time.perf_counter() - started
        return RenderResult(pixels=pixels, latents=latents, timings_s=timings,
                            steps_run=steps.done)

    def _embeds(self, job: JobSpec) -> Embeds:
        cfg = job.guidance > 0
        key = (job.prompt, job.negative_prompt if cfg else "", cfg)
        return self.prompt_cache.get_or_make(key, lambda: self._encode(*key))

    def _encode(self, prompt: str, negative: str, cfg: bool) -> Embeds:
        pipe = self.model.pipeline
        with torch.inference_mode():
            # encode_prompt mutates list arguments: hand it fresh strings only.
            positive, negative_embeds = pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative if cfg else None,
                do_classifier_free_guidance=cfg, device=pipe._execution_device,
            )
        return list(positive), list(negative_embeds or [])

    def _generate(self, job: JobSpec, kwargs: dict[str, Any]) -> torch.Tensor:
        pipe = self.model.pipeline
        shape = latent_shape(kwargs["height"], kwargs["width"],
                             int(pipe.transformer.config.in_channels), int(pipe.vae_scale_factor))
        template = self.latent_cache.get_or_make(
            (*shape, job.seed), lambda: make_latent_template(shape, job.seed))
        latents: torch.Tensor = pipe(latents=template.clone(), **kwargs).images
        return latents

    def _edit(self, job: JobSpec, inputs: RenderInputs, kwargs: dict[str, Any],
              width: int, height: int) -> torch.Tensor:
        if inputs.image is None:
            raise InputImageError(f"{job.kind.value} job {job.job_id} has no input image")
        image = inputs.image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        mask = None
        if inputs.mask is not None:
            mask = inputs.mask.convert("L")
            if mask.size != (width, height):
                mask = mask.resize((width, height), Image.Resampling.NEAREST)
        strength = job.strength if job.strength is not None else 1.0
        return self.model.editor(image, mask, strength=strength, **kwargs)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1] on the CPU, as the pipelines' own final step does it.

        Turning them into an image is left to ``RenderResult.image``, off the GPU's path.
        """
        vae = self.model.pipeline.vae
        with torch.inference_mode():
            scaled = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            decoded: torch.Tensor = vae.decode(scaled, return_dict=False)[0]
        return decoded.cpu()


class _StepCounter:
    """The pipeline's step callback: reports progress, stops when asked."""

    def __init__(self, on_step: ProgressCallback, total: int) -> None:
        self.on_step = on_step
        self.total = total
        self.done = 0
        self.stopped = False

    def __call__(self, pipe: Any, step: int, timestep: Any,
                 tensors: dict[str, Any]) -> dict[str, Any]:
        self.done = step + 1
        # Image-to-image runs only the last ``strength`` share of the schedule.
        self.total = int(getattr(pipe, "_num_timesteps", self.total))
        if self.on_step(self.done, self.total):
            self.stopped = True
            # Z-Image pipelines skip the remaining steps once this is set.
            pipe._interrupt = True
        return {}
