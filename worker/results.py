"""What a render takes and gives back; importable without torch (Flower, the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RenderInputs:
    """The decoded images a job starts from (already fetched from storage)."""

    image: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass
class RenderResult:
    """The picture, its final latents (before VAE decode) and phase timings."""

    image: Image.Image
    latents: torch.Tensor
    timings_s: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0
