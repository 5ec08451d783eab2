"""What a render takes and gives back; importable without torch (Flower, the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
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
    """A render's decoded pixels (on the CPU, in [-1, 1]), final latents and phase timings.

    The picture itself is made from ``pixels`` on first use: off the GPU's critical
    path, in the worker's finisher thread.
    """

    pixels: torch.Tensor
    latents: torch.Tensor
    timings_s: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0

    @cached_property
    def image(self) -> Image.Image:
        """The RGB image, converted exactly as diffusers' ``postprocess(..., "pil")`` does."""
        import numpy as np

        array = (self.pixels[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).float().numpy()
        return Image.fromarray((array * 255).round().astype(np.uint8))
