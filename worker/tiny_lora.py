"""Tiny LoRA adapters for the tiny checkpoints, built offline in the real on-disk format.

PEFT adds a random low-rank adapter to the checkpoint's transformer attention, and
``ZImagePipeline.save_lora_weights`` writes it exactly as a brand's trained adapter is
shipped (``pytorch_lora_weights.safetensors``, diffusers' key layout), so
``zq adapters add`` and the worker's loader meet the real thing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import ZImagePipeline, ZImageTransformer2DModel
from peft import LoraConfig, get_peft_model_state_dict

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_tiny_lora(checkpoint: Path, path: Path, seed: int, rank: int = 2) -> Path:
    """Write a random LoRA for ``checkpoint``'s transformer to ``path``; returns ``path``.

    The same checkpoint and ``seed`` always give the same file.
    """
    transformer = ZImageTransformer2DModel.from_pretrained(  # type: ignore[no-untyped-call]
        Path(checkpoint) / "transformer")
    torch.manual_seed(seed)
    # Random A and B (PEFT's default B is zero: an adapter that changes nothing).
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS,
                        init_lora_weights=False)
    transformer.add_adapter(config, adapter_name="tiny")
    layers = get_peft_model_state_dict(transformer, adapter_name="tiny")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=".lora-"))
    try:
        ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=layers)
        (folder / "pytorch_lora_weights.safetensors").replace(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path
