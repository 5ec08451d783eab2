"""The GPU's dtype, on a CPU: every job type in bf16 (and fp32) leaves the weights as loaded.

diffusers' ``from_pipe`` without a dtype converts the modules it shares to float32: a
bf16 worker silently became an fp32 one after its first edit. These tests run each job
type on a loaded model and compare every weight's dtype and bytes before and after.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ZImageImg2ImgPipeline
from PIL import Image

from common.errors import WorkerBroken
from common.job import JobKind, JobSpec, ModelType, new_job
from worker.acceleration import ModelOptions
from worker.models import LoadedModel, load_model
from worker.render import Renderer
from worker.results import RenderInputs
from zq.demo import left_third_mask

SIDE = 64
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def weights(model: LoadedModel) -> dict[str, tuple[torch.dtype, int]]:
    """Every parameter and buffer of every module: (dtype, bytes), by qualified name."""
    found = {}
    for component, module in model.pipeline.components.items():
        if isinstance(module, torch.nn.Module):
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                found[f"{component}.{name}"] = (tensor.dtype, tensor.nbytes)
    return found


def job_matrix() -> list[tuple[str, JobSpec, bool, bool]]:
    """(name, spec, needs an image, needs a mask) for each job type a worker serves."""
    source = {"source_image": "uploads/s.png", "width": SIDE, "height": SIDE, "steps": 3}
    return [
        ("turbo", new_job(JobKind.GENERATE, prompt="a night city", width=SIDE, height=SIDE,
                          steps=3, seed=1), False, False),
        ("edit", new_job(JobKind.EDIT, prompt="add neon", seed=2, **source), True, False),
        ("masked edit", new_job(JobKind.EDIT, prompt="eaves", mask="uploads/m.png", seed=3,
                                **source), True, True),
        ("refine", new_job(JobKind.REFINE, prompt="HD", negative_prompt="blurry", guidance=4.0,
                           seed=4, **source), True, False),
    ]


@pytest.fixture(scope="module", params=list(DTYPES))
def loaded(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> LoadedModel:
    """The tiny edit checkpoint loaded in each dtype, offload off (there is no GPU here)."""
    return load_model(ModelType.EDIT, str(tiny_models["edit"]),
                      ModelOptions(device="cpu", dtype=request.param))


def test_every_job_type_leaves_dtypes_and_bytes_as_loaded(loaded: LoadedModel) -> None:
    wanted = loaded.dtype
    before = weights(loaded)
    # Everything the pipeline holds is in the requested dtype (Qwen3's rotary buffer excepted:
    # transformers keeps ``inv_freq`` in float32 on purpose).
    odd = {n for n, (dtype, _) in before.items() if dtype != wanted and "inv_freq" not in n}
    assert not odd, odd
    renderer = Renderer(loaded)
    image = Image.effect_noise((SIDE, SIDE), 64).convert("RGB")
    mask = Image.open(io.BytesIO(left_third_mask(SIDE)))
    for name, job, with_image, with_mask in job_matrix():
        inputs = RenderInputs(image=image if with_image else None,
                              mask=mask if with_mask else None)
        result = renderer.render(job, inputs, lambda done, total: False)
        pixels = np.asarray(result.image)
        assert result.image.size == (SIDE, SIDE), name
        assert np.isfinite(result.latents.float().numpy()).all(), name
        assert pixels.std() > 0, f"{name}: a flat image"
        assert weights(loaded) == before, f"weights changed during the {name} job"
    described = loaded.describe()
    assert described["dtype"] == str(wanted).removeprefix("torch.")
    dtype_name = str(wanted).removeprefix("torch.")
    for component in ("transformer", "vae"):
        assert set(described["parameter_bytes"][component]) == {dtype_name}


def test_derived_edit_pipelines_share_the_loaded_modules(loaded: LoadedModel) -> None:
    editor = loaded.editor
    for derived in (editor.img2img, editor.inpaint):  # type: ignore[attr-defined]
        for name in ("transformer", "vae", "text_encoder"):
            assert getattr(derived, name) is getattr(loaded.pipeline, name)


def test_the_guard_catches_the_from_pipe_upcast(tiny_models: dict[str, Path]) -> None:
    # A model of its own: this test breaks it on purpose.
    model = load_model(ModelType.EDIT, str(tiny_models["edit"]),
                       ModelOptions(device="cpu", dtype="bfloat16"))
    model.guard.check("nothing")
    ZImageImg2ImgPipeline.from_pipe(model.pipeline)  # the call the worker used to make
    assert model.pipeline.transformer.dtype == torch.float32
    with pytest.raises(WorkerBroken) as raised:
        model.guard.check("an edit job")
    message = str(raised.value)
    assert "during an edit job" in message
    assert "transformer: bfloat16" in message and "-> float32" in message
