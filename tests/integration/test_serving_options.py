"""Serving options on a real model and a real worker: compile works, the impossible is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.job import JobKind, ModelType, new_job
from tests.integration.cluster import Cluster
from worker.acceleration import ModelOptions
from worker.boot import warm_up
from worker.models import load_model
from worker.render import Renderer
from worker.results import RenderInputs

pytestmark = pytest.mark.integration
EXIT_CANNOT_START = 78


# Inductor's own imports trip a torch deprecation, and it notes that it leaves the rotary
# embedding's complex multiply to eager code: nothing of ours is involved in either.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex "
                            "operators:UserWarning")
def test_compiled_bf16_transformer_renders_what_the_eager_one_does(
        tiny_models: dict[str, Path]) -> None:
    options = ModelOptions(device="cpu", dtype="bfloat16", compile=True,
                           attention_backend="_native_math")
    compiled = Renderer(load_model(ModelType.TURBO, str(tiny_models["turbo"]), options))
    eager = Renderer(load_model(ModelType.TURBO, str(tiny_models["turbo"]),
                                ModelOptions(device="cpu", dtype="bfloat16")))
    warm_up(compiled, ((64, 64),))  # compiles the transformer blocks for this shape
    job = new_job(JobKind.GENERATE, prompt="a lantern", width=64, height=64, steps=3, seed=3)
    fast = compiled.render(job, RenderInputs(), lambda done, total: False)
    slow = eager.render(job, RenderInputs(), lambda done, total: False)
    assert torch.isfinite(fast.latents).all()
    # Fused kernels round differently in bf16; the picture is the same one.
    assert torch.allclose(fast.latents, slow.latents, atol=0.1)
    assert not torch.equal(fast.latents, torch.zeros_like(fast.latents))
    described = compiled.model.describe()
    assert described["compiled"] is True and described["attention_backend"] == "_native_math"
    assert described["dtype"] == "bfloat16"


@pytest.mark.parametrize(("env", "message"), [
    ({"ZQ_FP8": "true"}, "ZQ_FP8 needs a CUDA GPU with FP8"),
    ({"ZQ_ATTENTION_BACKEND": "_flash_3"}, "ZQ_ATTENTION_BACKEND=_flash_3 needs a CUDA GPU"),
    ({"ZQ_CPU_OFFLOAD": "true"}, "ZQ_CPU_OFFLOAD needs a CUDA GPU"),
    ({"ZQ_DEVICE": "cuda"}, "ZQ_DEVICE asks for cuda but no GPU is visible"),
])
def test_worker_refuses_to_start_with_an_option_its_device_lacks(
        cluster: Cluster, env: dict[str, str], message: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    worker = cluster.start(ModelType.TURBO, wait=False, extra_env=env)
    assert worker.proc.wait(120) == EXIT_CANNOT_START
    log = worker.log_text()
    assert f"worker cannot start: {message}" in log
    assert "Traceback" not in log
    assert cluster.record(worker).get("ready") != "1"
