# transformers ships untyped constructors mypy cannot see through.
# mypy: disable-error-code="no-untyped-call,attr-defined,no-any-return"
"""A tiny random-weight safety classifier for tests and offline demos.

A ``ViTForImageClassification`` with the labels ``{0: "normal", 1: "nsfw"}`` and its
``ViTImageProcessor``, saved with ``save_pretrained`` in the real on-disk format: the worker
loads it with the same ``pipeline("image-classification", model=path)`` call it uses for a
real one. The classifier head's weights are zero and its bias is set so that "nsfw" scores
exactly ``nsfw_score`` on every image: a threshold at or below it blocks every image, one
above it passes every image, deterministically. Only worker code and tests import this.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from worker.tiny_models import write_folder

LABELS = {0: "normal", 1: "nsfw"}


def is_complete_classifier(path: Path) -> bool:
    """True when ``path`` holds a config, weights and an image processor config."""
    path = Path(path)
    return all((path / name).is_file() for name in
               ("config.json", "model.safetensors", "preprocessor_config.json"))


def make_tiny_safety_classifier(path: Path, nsfw_score: float = 0.5, seed: int = 0) -> Path:
    """Write the tiny classifier to ``path`` (atomically; kept if already complete).

    ``nsfw_score`` (strictly between 0 and 1) is what "nsfw" scores on every image.
    """
    if not 0.0 < nsfw_score < 1.0:
        raise ValueError(f"nsfw_score must be strictly between 0 and 1, got {nsfw_score}")

    def save(folder: Path) -> None:
        _build(nsfw_score, seed).save_pretrained(folder, safe_serialization=True)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)

    return write_folder(Path(path), save, is_complete_classifier)


def _build(nsfw_score: float, seed: int) -> ViTForImageClassification:
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        # softmax([0, b])[1] == nsfw_score  <=>  b == logit(nsfw_score)
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, math.log(nsfw_score / (1 - nsfw_score))]))
    return model
