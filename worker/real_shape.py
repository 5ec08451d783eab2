# diffusers ships untyped constructors and torch.nn.Module methods mypy cannot see.
# mypy: disable-error-code="no-untyped-call,attr-defined"
"""Random-weight Z-Image checkpoints with the released models' widths, at any depth.

Every config value comes from ``zimage_configs.json``, the released components' configs
shipped inside this package, so nothing is fetched from a model hub. ``layers=1`` keeps
every width (3840-wide transformer blocks, the 2560-wide Qwen3-4B text encoder, the
whole FLUX VAE) with one block of each kind: a ~1.7 GB bfloat16 checkpoint that a CPU
can run, with the real tensor shapes, dtypes and per-layer footprint. ``layers=None``
is the full 6B-parameter transformer and 4B-parameter text encoder, for benchmarks
that build it straight on a GPU. Only worker code (and tests) may import this module.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from transformers import Qwen3Config, Qwen3Model

from worker.tiny_models import fill_pad_tokens, make_tokenizer, write_checkpoint

#: The released component configs (full depth, full vocabulary), package data.
CONFIGS_PATH = Path(__file__).with_name("zimage_configs.json")

ComponentConfigs = dict[str, dict[str, Any]]
"""Constructor arguments by pipeline component: transformer, vae, text_encoder, scheduler."""


def real_configs() -> ComponentConfigs:
    """The released Z-Image component configs, as shipped in ``zimage_configs.json``."""
    data: dict[str, Any] = json.loads(CONFIGS_PATH.read_text())
    return {name: config for name, config in data.items() if not name.startswith("_")}


def real_shape_configs(layers: int | None = 1, vocab_size: int | None = None
                       ) -> ComponentConfigs:
    """The released configs cut to ``layers`` depth; every width stays as released.

    ``layers=N`` keeps N main transformer blocks, ``min(N, 2)`` refiner blocks of each
    kind, and N + 1 text encoder layers: the pipeline reads the encoder's second-to-last
    hidden state, so exactly N layers feed the transformer. ``layers=None`` keeps the
    released depth. ``vocab_size`` replaces the text encoder's vocabulary size. The VAE
    and scheduler are never changed.
    """
    configs = copy.deepcopy(real_configs())
    transformer, text_encoder = configs["transformer"], configs["text_encoder"]
    if layers is not None:
        if not 1 <= layers <= transformer["n_layers"]:
            raise ValueError(f"layers must be 1 to {transformer['n_layers']} or None (full "
                             f"depth), got {layers}")
        transformer["n_layers"] = layers
        transformer["n_refiner_layers"] = min(layers, transformer["n_refiner_layers"])
        text_encoder["num_hidden_layers"] = min(layers + 1, text_encoder["num_hidden_layers"])
    if vocab_size is not None:
        text_encoder["vocab_size"] = vocab_size
    return configs


def make_real_shape_pipeline(seed: int = 0, layers: int | None = 1,
                             dtype: torch.dtype = torch.bfloat16,
                             device: str | torch.device = "cpu") -> ZImagePipeline:
    """A ``ZImagePipeline`` with the released widths and random weights.

    Reduced depth (``layers`` not None) also reduces the text encoder's vocabulary to
    the byte-level tokenizer's few hundred ids; ``layers=None`` keeps the released
    depth and vocabulary. Every module is created on ``device`` in ``dtype``: no
    float32 or CPU copy of the model ever exists. The weights depend only on ``seed``
    and the kind of ``device`` (a GPU's random generator draws other numbers than the
    CPU's). ``device="meta"`` builds the modules without any memory, to count their
    weights.
    """
    tokenizer = make_tokenizer()
    configs = real_shape_configs(layers, None if layers is None else len(tokenizer))
    target = torch.device(device)
    # PyTorch's default inits already keep a 2-step generate finite in bfloat16 at these
    # widths (checked at 64x64 with layers=1), so no init of our own is applied.
    with _seeded(seed, target), target, _default_dtype(dtype):
        transformer = ZImageTransformer2DModel(**configs["transformer"])
        fill_pad_tokens(transformer)
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = Qwen3Model(
            Qwen3Config(**configs["text_encoder"], pad_token_id=tokenizer.pad_token_id))
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


def make_real_shape_checkpoint(path: Path, seed: int = 0, layers: int | None = 1,
                               dtype: torch.dtype = torch.bfloat16,
                               device: str | torch.device = "cpu") -> Path:
    """Write a real-width Z-Image checkpoint to ``path`` in ``dtype``; return ``path``.

    ``layers=1`` (default): one block of each kind, ~1.7 GB in bfloat16.
    ``layers=None``: the released depth and vocabulary (~20 GB in bfloat16), meant to be
    built with ``device="cuda"``. See :func:`make_real_shape_pipeline` for the weights.
    Written atomically, and kept when ``path`` already holds a complete checkpoint
    (whatever its depth: give each depth its own path).
    """
    return write_checkpoint(path, lambda: make_real_shape_pipeline(seed, layers, dtype, device))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the generator that draws on ``device``; the caller's RNG states come back after."""
    if device.type in ("cpu", "meta"):
        devices, device_type = [], "cpu"
    else:
        module = torch.get_device_module(device.type)
        devices = [device.index if device.index is not None else module.current_device()]
        device_type = device.type
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point parameters in ``dtype`` (process-wide while it lasts)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
