"""Serving options for the loaded model: dtype, placement, attention backend, compile, FP8.

All are off by default and all are recorded in every manifest. Each is checked against
the worker's device before the weights are touched: a worker asked for something its
device cannot do refuses to start with a ``ConfigError`` naming the setting, rather than
serving slower (or different) images than its manifests claim.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch

from common.errors import ConfigError
from common.settings import Settings

log = logging.getLogger("zq.worker")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# diffusers' names for PyTorch's own scaled-dot-product attention, usable on any device.
PORTABLE_BACKENDS = {"native", "_native_math", "flex"}
BACKEND_ALIASES = {"sdpa": "native"}
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: L4, L40S, H100, H200


@dataclass(frozen=True)
class ModelOptions:
    """How a worker loads and runs its model (``ZQ_DEVICE``, ``ZQ_DTYPE``, ``ZQ_*``)."""

    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    attention_backend: str = ""
    compile: bool = False
    fp8: bool = False
    # With compile: LoRA adapter slots prepared before compiling, and their rank.
    adapter_slots: int = 2
    adapter_max_rank: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelOptions:
        """The options a worker's settings ask for."""
        return cls(device=settings.device, dtype=settings.dtype,
                   cpu_offload=settings.cpu_offload,
                   attention_backend=settings.attention_backend, compile=settings.compile,
                   fp8=settings.fp8, adapter_slots=settings.adapter_slots,
                   adapter_max_rank=settings.adapter_max_rank)

    @property
    def backend(self) -> str:
        """The attention backend's diffusers name ("" for diffusers' default)."""
        name = self.attention_backend.strip().lower()
        return BACKEND_ALIASES.get(name, name)


def resolve_device(options: ModelOptions) -> tuple[torch.device, torch.dtype]:
    """The device and weight dtype: ``auto`` is CUDA + bf16 with a GPU, else CPU + fp32."""
    preference = options.device
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ConfigError(f"ZQ_DEVICE: not a torch device: {preference!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("ZQ_DEVICE asks for cuda but no GPU is visible")
    if options.dtype == "auto":
        return device, (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        return device, DTYPES[options.dtype]
    except KeyError:
        raise ConfigError(f"ZQ_DTYPE must be one of auto, {', '.join(DTYPES)}; "
                          f"got {options.dtype!r}") from None


def check_available(options: ModelOptions, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse options this device cannot serve, before any weight is loaded."""
    where = f"this worker's device is {device}"
    if options.cpu_offload and device.type != "cuda":
        raise ConfigError(f"ZQ_CPU_OFFLOAD needs a CUDA GPU; {where}")
    backend = options.backend
    if backend:
        from diffusers.models.attention_dispatch import AttentionBackendName

        known = sorted(b.value for b in AttentionBackendName)
        if backend not in known:
            raise ConfigError(f"ZQ_ATTENTION_BACKEND must be sdpa or one of diffusers' "
                              f"backends ({', '.join(known)}); got {options.attention_backend!r}")
        if backend not in PORTABLE_BACKENDS and device.type != "cuda":
            raise ConfigError(f"ZQ_ATTENTION_BACKEND={backend} needs a CUDA GPU; {where} "
                              f"(use sdpa)")
    if options.fp8:
        _check_fp8(device, dtype, where)


def _check_fp8(device: torch.device, dtype: torch.dtype, where: str) -> None:
    if device.type != "cuda":
        raise ConfigError(f"ZQ_FP8 needs a CUDA GPU with FP8 (compute capability 8.9+: "
                          f"L4, L40S, H100, H200); {where}")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ConfigError(f"ZQ_FP8 needs compute capability 8.9+; {device} is "
                          f"{capability[0]}.{capability[1]}")
    if dtype is not torch.bfloat16:
        raise ConfigError("ZQ_FP8 quantizes a bfloat16 transformer: set ZQ_DTYPE=bfloat16")
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("ZQ_FP8 needs torchao (pip install 'zimage-queue[gpu]')")


def place(pipeline: Any, options: ModelOptions, device: torch.device) -> None:
    """Move the weights to the device, or install CPU offload hooks."""
    if options.cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    else:
        pipeline.to(device)


def accelerate(pipeline: Any, options: ModelOptions) -> None:
    """FP8, attention backend and compile, in that order (compile sees the final modules).

    With compile, the LoRA adapter slots go in just before it, so that adapters are later
    hot-swapped into the compiled graph instead of changing it.
    """
    transformer = pipeline.transformer
    if options.fp8:
        quantize_fp8(transformer)
    if options.backend:
        try:
            transformer.set_attention_backend(options.backend)
        except (ImportError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"ZQ_ATTENTION_BACKEND={options.backend} is not available "
                              f"here: {exc}") from None
    if options.compile:
        if options.adapter_slots:
            from worker.adapters import AdapterSet

            AdapterSet.prepare_hotswap(pipeline, options.adapter_slots, options.adapter_max_rank)
        # Regional compilation: each transformer block is compiled once and reused for
        # every layer, which compiles in a fraction of the time of the whole model.
        transformer.compile_repeated_blocks(fullgraph=True)


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """FP8 weights and dynamic FP8 activations (per-row scales) for the transformer's linears.

    Layers whose sides are not multiples of 16 stay in bf16: FP8 matmuls need them.
    """
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    def eligible(module: torch.nn.Module, _fqn: str) -> bool:
        return (isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0
                and module.out_features % 16 == 0)

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=eligible)


def describe(options: ModelOptions) -> dict[str, Any]:
    """The serving options, as a manifest records them."""
    return {"attention_backend": options.backend or "default", "compiled": options.compile,
            "fp8": options.fp8, "cpu_offload": options.cpu_offload}
