# diffusers ships untyped constructors and torch.nn.Module methods mypy cannot see.
# mypy: disable-error-code="no-untyped-call,attr-defined"
"""Tiny random-weight Z-Image checkpoints for tests and offline demos.

The checkpoints use the real diffusers on-disk layout (``save_pretrained``), so the
worker loads them with the same ``DiffusionPipeline.from_pretrained(path)`` call it
uses for real models. They are ~2 MB each and generate a 64x64 image in well under
a second on a CPU. Only worker code (and tests) may import this module: it pulls in
torch, diffusers and transformers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model
from transformers.utils import logging as transformers_logging

#: Seeds of the three checkpoints written by :func:`make_tiny_models`.
TINY_MODEL_SEEDS: dict[str, int] = {"turbo": 0, "edit": 1, "base": 2}

#: Component folders every complete checkpoint has, besides ``model_index.json``.
_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

#: The Qwen2/Qwen3 special tokens, in their real id order.
_QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)  # fmt: skip

#: A reduced Qwen3 chat template: same text for user turns and the generation
#: prompt, and the same ``enable_thinking`` switch, as the real one.
_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def make_tokenizer() -> Qwen2Tokenizer:
    """Build a byte-level Qwen2 tokenizer in memory: 256 byte symbols, no merges."""
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in _QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        additional_special_tokens=list(_QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=131072,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def fill_pad_tokens(transformer: ZImageTransformer2DModel) -> None:
    """Give the transformer's ``*pad_token`` parameters values (all ones).

    No weight init touches them, so they would stay as the constructor made them
    (zeros), unlike a trained checkpoint's.
    """
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if name.endswith("pad_token"):
                param.fill_(1.0)


def _make_pipeline(seed: int) -> ZImagePipeline:
    """Build a tiny ZImagePipeline whose random weights depend only on ``seed``."""
    tokenizer = make_tokenizer()
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            cap_feat_dim=32,
            axes_dims=[8, 4, 4],
            axes_lens=[1024, 512, 512],
        )
        fill_pad_tokens(transformer)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        text_encoder = Qwen3Model(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=1024,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


def is_complete_checkpoint(path: Path) -> bool:
    """True when ``path`` holds a ``model_index.json`` and every component folder."""
    path = Path(path)
    return (path / "model_index.json").is_file() and all(
        (path / name).is_dir() and any((path / name).iterdir()) for name in _COMPONENTS
    )


def write_checkpoint(path: Path, build: Callable[[], ZImagePipeline]) -> Path:
    """Save the pipeline ``build()`` returns as a checkpoint at ``path``; return ``path``.

    Does nothing (and does not call ``build``) when ``path`` already holds a complete
    one; see :func:`write_folder`.
    """
    return write_folder(path, lambda tmp: build().save_pretrained(tmp, safe_serialization=True),
                        is_complete_checkpoint)


def write_folder(path: Path, save: Callable[[Path], None],
                 complete: Callable[[Path], bool]) -> Path:
    """Have ``save`` write a folder, then rename it to ``path``; return ``path``.

    Written to a temporary sibling and renamed into place, so a half-written folder
    never appears under ``path``; a ``complete`` one already there is kept.
    """
    path = Path(path)
    if complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is readable like any folder
        transformers_logging.disable_progress_bar()  # callers print paths, not progress bars
        save(tmp)
        # safetensors writes its files owner-only: a worker running as another user (the
        # image's uid 10001, say) could not read a checkpoint made by root.
        for written in tmp.rglob("*"):
            written.chmod(0o755 if written.is_dir() else 0o644)
        if complete(path):  # another process finished it meanwhile
            return path
        if path.exists():  # an incomplete leftover: replace it
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError:
            # Another process finished the same folder first.
            if not complete(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def make_tiny_checkpoint(path: Path, seed: int) -> Path:
    """Write one tiny Z-Image text-to-image checkpoint to ``path`` and return ``path``.

    The same ``seed`` always gives the same weights. Written atomically, and kept when
    ``path`` already holds a complete checkpoint (see :func:`write_checkpoint`).
    """
    return write_checkpoint(path, lambda: _make_pipeline(seed))


def make_tiny_models(root: Path) -> dict[str, Path]:
    """Write the ``turbo``, ``edit`` and ``base`` tiny checkpoints under ``root``.

    All three are ``ZImagePipeline`` checkpoints with different seeds (no official edit
    checkpoint exists: the edit worker derives img2img/inpaint pipelines with
    ``from_pipe``). Complete checkpoints already present are kept. Returns the paths by
    model type.
    """
    root = Path(root)
    return {
        model_type: make_tiny_checkpoint(root / model_type, seed)
        for model_type, seed in TINY_MODEL_SEEDS.items()
    }
