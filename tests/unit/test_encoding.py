"""Result encoding: fast PNG by default, lossless; quality for JPEG and WebP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from common.job import OutputFormat
from worker.encoding import encode_image


def photo(side: int = 256) -> Image.Image:
    """A smooth gradient with noise: compresses like a picture, not like a flat fill."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rng = np.random.default_rng(0)
    pixels = (ramp[None, :, None] + ramp[:, None, None] * 0.5 + rng.normal(0, 8, (side, side, 3)))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_png_is_lossless_at_every_level() -> None:
    image = photo()
    fast = encode_image(image, OutputFormat.PNG)
    small = encode_image(image, OutputFormat.PNG, png_compress_level=9)
    for data in (fast, small):
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.format == "PNG"
            assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert len(small) < len(fast)  # the level reached zlib


def test_quality_changes_lossy_formats() -> None:
    image = photo()
    for output_format, name in ((OutputFormat.JPEG, "JPEG"), (OutputFormat.WEBP, "WEBP")):
        low = encode_image(image, output_format, quality=10)
        high = encode_image(image, output_format, quality=95)
        default = encode_image(image, output_format)
        assert len(low) < len(default) < len(high)
        with Image.open(io.BytesIO(low)) as decoded:
            assert decoded.format == name and decoded.size == image.size
