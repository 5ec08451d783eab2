"""Serving options are checked against the device before any weight loads."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from common.settings import Settings
from worker.acceleration import ModelOptions, check_available, describe, resolve_device

CPU = torch.device("cpu")


def test_options_come_from_settings() -> None:
    settings = Settings.from_env({"ZQ_DTYPE": "bf16", "ZQ_ATTENTION_BACKEND": "SDPA",
                                  "ZQ_COMPILE": "true", "ZQ_DEVICE": "cpu"})
    options = ModelOptions.from_settings(settings)
    assert options == ModelOptions(device="cpu", dtype="bfloat16", attention_backend="SDPA",
                                   compile=True)
    assert options.backend == "native"
    assert describe(options) == {"attention_backend": "native", "compiled": True,
                                 "fp8": False, "cpu_offload": False}
    assert describe(ModelOptions())["attention_backend"] == "default"


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.float32),
                                                  ("bfloat16", torch.bfloat16),
                                                  ("float16", torch.float16),
                                                  ("float32", torch.float32)])
def test_dtype_on_a_cpu(dtype: str, expected: torch.dtype) -> None:
    assert resolve_device(ModelOptions(device="cpu", dtype=dtype)) == (CPU, expected)


def test_a_gpu_that_is_not_there_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no GPU is visible"):
        resolve_device(ModelOptions(device="cuda"))
    with pytest.raises(ConfigError, match="ZQ_DEVICE: not a torch device"):
        resolve_device(ModelOptions(device="gpu0"))


@pytest.mark.parametrize(("options", "message"), [
    (ModelOptions(cpu_offload=True),
     "ZQ_CPU_OFFLOAD needs a CUDA GPU; this worker's device is cpu"),
    (ModelOptions(attention_backend="flash"), "ZQ_ATTENTION_BACKEND=flash needs a CUDA GPU"),
    (ModelOptions(attention_backend="_flash_3"),
     "ZQ_ATTENTION_BACKEND=_flash_3 needs a CUDA GPU"),
    (ModelOptions(attention_backend="warp-speed"), "ZQ_ATTENTION_BACKEND must be sdpa or one of"),
    (ModelOptions(fp8=True), "ZQ_FP8 needs a CUDA GPU with FP8 (compute capability 8.9+"),
])
def test_options_a_cpu_cannot_serve_are_refused_by_name(options: ModelOptions,
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_available(options, CPU, torch.float32)
    assert message in str(raised.value)


@pytest.mark.parametrize("backend", ["", "sdpa", "native", "_native_math"])
def test_portable_backends_and_compile_are_allowed_on_a_cpu(backend: str) -> None:
    check_available(ModelOptions(attention_backend=backend, compile=True), CPU, torch.bfloat16)
