"""Rendering on the real tiny diffusers pipelines, without the queue around it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import JobCancelled
from common.job import JobKind, ModelType, new_job
from worker.acceleration import ModelOptions
from worker.models import load_model
from worker.render import Renderer
from worker.results import RenderInputs
from zq.demo import left_third_mask

SIDE = 64


@pytest.fixture(scope="module")
def renderer(tiny_models: dict[str, Path]) -> Renderer:
    """A warm renderer over the tiny edit checkpoint."""
    return Renderer(load_model(ModelType.EDIT, str(tiny_models["edit"]), ModelOptions("cpu")))


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def never(done: int, total: int) -> bool:
    return False


def test_masked_edit_keeps_latents_outside_the_mask(renderer: Renderer) -> None:
    # Random weights do not keep pixels through the VAE, so compare latents.
    source = Image.effect_noise((SIDE, SIDE), 64).convert("RGB")
    mask = Image.open(io.BytesIO(left_third_mask(SIDE)))
    job = new_job(JobKind.EDIT, prompt="eaves", source_image="uploads/s.png",
                  mask="uploads/m.png", width=SIDE, height=SIDE, seed=5, strength=0.6, steps=8)
    result = renderer.render(job, RenderInputs(image=source, mask=mask), never)

    pipe = renderer.model.pipeline
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(source).to(torch.float32)
        # The pipeline encodes the image with the job's generator before anything else.
        reference = pipe.vae.encode(pixels).latent_dist.sample(
            torch.Generator("cpu").manual_seed(5))
    reference = (reference - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    white = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    latent_mask = torch.nn.functional.interpolate(white, size=reference.shape[-2:],
                                                  mode="nearest")
    keep = (latent_mask < 0.5).expand_as(reference)
    assert keep.any() and (~keep).any()
    assert torch.equal(result.latents[keep], reference[keep])
    assert not torch.equal(result.latents[~keep], reference[~keep])


def test_cached_latent_template_and_prompt_embeds_change_nothing(renderer: Renderer) -> None:
    job = new_job(JobKind.GENERATE, prompt="a kite", width=SIDE, height=SIDE, seed=9, steps=4)
    first = png(renderer.render(job, RenderInputs(), never).image)
    hits = (renderer.latent_cache.hits, renderer.prompt_cache.hits)
    second = png(renderer.render(job, RenderInputs(), never).image)
    assert (renderer.latent_cache.hits, renderer.prompt_cache.hits) == (hits[0] + 1, hits[1] + 1)
    assert first == second
    # The same image as the pipeline makes from the prompt and seed on its own.
    pipe = renderer.model.pipeline
    direct = pipe(prompt="a kite", width=SIDE, height=SIDE, num_inference_steps=4,
                  guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(9)).images[0]
    assert png(direct) == first


def test_guidance_uses_the_negative_prompt(renderer: Renderer) -> None:
    base = {"prompt": "a kite", "width": SIDE, "height": SIDE, "seed": 9, "steps": 3,
            "guidance": 4.0}
    plain = renderer.render(new_job(JobKind.GENERATE, **base), RenderInputs(), never)
    negative = renderer.render(new_job(JobKind.GENERATE, negative_prompt="blurry", **base),
                               RenderInputs(), never)
    assert not torch.equal(plain.latents, negative.latents)


def test_stop_request_cancels_after_the_current_step(renderer: Renderer) -> None:
    job = new_job(JobKind.GENERATE, prompt="x", width=SIDE, height=SIDE, steps=8)
    seen: list[int] = []

    def stop_at_three(done: int, total: int) -> bool:
        seen.append(done)
        return done == 3

    with pytest.raises(JobCancelled, match="step 3 of 8"):
        renderer.render(job, RenderInputs(), stop_at_three)
    assert seen == [1, 2, 3]


def test_edit_without_size_takes_the_input_size_rounded_to_the_rule(renderer: Renderer) -> None:
    job = new_job(JobKind.EDIT, prompt="x", source_image="uploads/s.png", steps=2)
    source = Image.new("RGB", (70, 50), "red")
    result = renderer.render(job, RenderInputs(image=source), never)
    assert result.image.size == (64, 48)


def test_edit_without_size_from_an_oversize_input_fits_the_limits(renderer: Renderer) -> None:
    job = new_job(JobKind.EDIT, prompt="x", source_image="uploads/s.png", steps=2)
    # Only the size matters here; mode "1" keeps the 24-megapixel stand-in at 3 MB.
    for size, expected in (((6000, 4000), (2496, 1664)), ((1000, 9000), (448, 4096))):
        inputs = RenderInputs(image=Image.new("1", size))
        assert renderer.output_size(job, inputs) == expected
