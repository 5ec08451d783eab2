"""Per-process caches: initial-noise latent templates and prompt embeddings.

Bulk jobs repeat prompts ("put every product on white marble"), so encoding a
prompt once saves a pass of the 4B text encoder per job. Both caches are plain
LRUs owned by the worker process; nothing is shared across processes.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from worker.lru import LRUCache

__all__ = ["LRUCache", "latent_shape", "make_latent_template"]

def latent_shape(height: int, width: int, channels: int, vae_scale_factor: int) -> tuple[int, ...]:
    """The text-to-image initial noise shape, as Z-Image pipelines compute it."""
    return (1, channels, 2 * (height // (vae_scale_factor * 2)),
            2 * (width // (vae_scale_factor * 2)))


def make_latent_template(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The initial noise for ``seed``, drawn exactly as the pipeline would draw it.

    Drawn on the CPU with a fresh generator, so the image for a seed is the same
    on every worker whether the template came from the cache or not.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    template: torch.Tensor = randn_tensor(shape, generator=generator,
                                          device=torch.device("cpu"), dtype=torch.float32)
    return template
