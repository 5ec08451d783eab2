"""Input images, bounded and normalised: the one door every source image, parent and mask uses.

The producer client checks a file with ``load_input`` before uploading it; the worker loads
every input through it again, since storage may hold bytes no client checked. The rules:

* Bounded before decoding: at most ``max_bytes`` bytes, then the header's width x height at
  most ``max_pixels`` (and under Pillow's own decompression-bomb limit), before any pixel is
  decoded. Only PNG (APNG), JPEG (MPO) and WebP files open, whatever their name says.
  Truncated files and PNG text or ICC chunks that decompress past Pillow's limits are
  refused. Animated images give their first frame.
* Never bigger than a render needs: an input larger than the render limits (``MAX_PIXELS``
  in area, ``MAX_SIDE_PX`` a side) is shrunk to fit, keeping its aspect ratio (a big JPEG
  is decoded at a reduced scale to begin with), or refused when ``oversize`` is "refuse".
* Normalised: EXIF orientation applied, an embedded ICC profile converted to sRGB,
  transparency composited onto ``background`` (masks: onto black, so a transparent mask
  pixel keeps the picture), every mode (CMYK, 16-bit, palette, grey) made 8-bit RGB, or
  8-bit L for masks.

Every refusal is a ``BadInputImage`` naming the field and the rule.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from common.errors import BadInputImage
from common.job import MAX_PIXELS, MAX_SIDE_PX
from common.settings import Settings

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# Pillow names a JPEG with several pictures (some cameras write them) MPO.
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp"}
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg",
                 "WEBP": "image/webp"}

# How PNG and JPEG files begin (WebP: RIFF, a size, then WEBP).
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
# EXIF orientations that swap width and height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
# warnings.catch_warnings swaps the process-wide filter list: two threads inside it at
# once can leave one's filter installed for good. Opening under one lock prevents that.
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class InputLimits:
    """What an input image may be, and what transparency turns into."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000
    oversize: str = "resize"
    background: tuple[int, int, int] = (255, 255, 255)

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        """The limits of ``ZQ_MAX_INPUT_BYTES``, ``ZQ_MAX_INPUT_PIXELS``, ``ZQ_OVERSIZE_INPUT``
        and ``ZQ_ALPHA_BACKGROUND``."""
        return cls(max_bytes=settings.max_input_bytes, max_pixels=settings.max_input_pixels,
                   oversize=settings.oversize_input, background=settings.alpha_background)

    @property
    def effective_max_pixels(self) -> int:
        """``max_pixels``, or Pillow's own bomb limit where that is lower."""
        pillow = Image.MAX_IMAGE_PIXELS
        return self.max_pixels if pillow is None else min(self.max_pixels, pillow)


@dataclass(frozen=True)
class InputImage:
    """A checked input: 8-bit RGB (masks: L) within the render limits."""

    image: Image.Image
    # (width, height) as displayed (EXIF orientation applied), before any shrinking.
    source_size: tuple[int, int]
    # Pillow's name of the file's format: PNG, JPEG, MPO or WEBP.
    format: str


def is_oversize(width: int, height: int) -> bool:
    """Whether a picture is larger than any render may be (area or a side)."""
    return width * height > MAX_PIXELS or max(width, height) > MAX_SIDE_PX


def fit_size(width: int, height: int, multiple: int = 1) -> tuple[int, int]:
    """The output size for an input of ``width`` x ``height``: the size rule.

    Keep the aspect ratio, scale down (never up) until the area is at most ``MAX_PIXELS``
    and each side at most ``MAX_SIDE_PX``, then round each side down to ``multiple``
    (at least one ``multiple``).
    """
    if width < 1 or height < 1:
        raise ValueError(f"not a picture size: {width}x{height}")
    scale = min(1.0, MAX_SIDE_PX / width, MAX_SIDE_PX / height,
                math.sqrt(MAX_PIXELS / (width * height)))
    fitted_w = max(multiple, int(width * scale) // multiple * multiple)
    fitted_h = max(multiple, int(height * scale) // multiple * multiple)
    # Floating point may leave the area a hair over the limit.
    while fitted_w * fitted_h > MAX_PIXELS:
        if fitted_w >= fitted_h:
            fitted_w -= multiple
        else:
            fitted_h -= multiple
    return fitted_w, fitted_h


def check_byte_size(size: int, field: str, limits: InputLimits) -> None:
    """Refuse more than ``limits.max_bytes`` bytes (checked before reading a file)."""
    if size > limits.max_bytes:
        raise BadInputImage(field, f"at most {limits.max_bytes} bytes", size)


def load_input(data: bytes, field: str, limits: InputLimits, *,
               mask: bool = False) -> InputImage:
    """Check, decode and normalise one input image; raises ``BadInputImage`` naming ``field``."""
    check_byte_size(len(data), field, limits)
    try:
        opened = _open(data, field, limits)
    except BadInputImage:
        raise
    except UnidentifiedImageError as exc:
        if data.startswith(_SIGNATURES) or (data[:4], data[8:12]) == (b"RIFF", b"WEBP"):
            raise BadInputImage(field, f"not a readable image: {_describe(exc)}") from None
        raise BadInputImage(field, "must be a readable PNG, JPEG or WebP image") from None
    except Exception as exc:  # whatever a hostile header makes a plugin raise
        raise BadInputImage(field, f"not a readable image: {_describe(exc)}") from None
    image_format = opened.format or ""
    _check_oversize(opened.size, field, limits)
    try:
        image, source_size = _decode(opened)
    except Exception as exc:  # truncated data, a text-chunk bomb after IDAT, bad EXIF
        raise BadInputImage(field, f"not a readable image: {_describe(exc)}") from None
    try:
        image = _normalise(image, mask, limits.background)
    except OSError as exc:  # a mode Pillow cannot convert
        raise BadInputImage(field, f"not a usable image: {_describe(exc)}") from None
    return InputImage(image=image, source_size=source_size, format=image_format)


def check_mask_size(image_size: tuple[int, int], mask_size: tuple[int, int],
                    field: str = "mask") -> None:
    """A mask must have its image's size, or its aspect ratio (it is then resized with it).

    Aspect ratios may differ by up to 1% (rounding when a mask was scaled elsewhere).
    """
    (image_w, image_h), (mask_w, mask_h) = image_size, mask_size
    if (image_w, image_h) != (mask_w, mask_h) and (
            abs(mask_w * image_h - mask_h * image_w) > 0.01 * mask_w * image_h):
        raise BadInputImage(field, f"must have the image's size or aspect ratio; the mask is "
                                   f"{mask_w}x{mask_h}, the image {image_w}x{image_h}")


def match_mask(image: InputImage, mask: InputImage, field: str = "mask") -> Image.Image:
    """The mask at the image's (normalised) size, after ``check_mask_size``."""
    check_mask_size(image.source_size, mask.source_size, field)
    if mask.image.size == image.image.size:
        return mask.image
    return mask.image.resize(image.image.size, Image.Resampling.NEAREST)


def _open(data: bytes, field: str, limits: InputLimits) -> Image.Image:
    """Open lazily (header only) and refuse a header past the pixel limit."""
    limit = limits.effective_max_pixels
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow only warns between its limit and twice it: that is a refusal here too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _BOMB_PIXELS.search(str(exc))
        raise BadInputImage(field, f"at most {limit} pixels",
                            int(found[1]) if found else None) from None
    width, height = opened.size
    if width < 1 or height < 1 or width * height > limit:
        opened.close()
        raise BadInputImage(field, f"at most {limit} pixels", width * height)
    return opened


def _check_oversize(size: tuple[int, int], field: str, limits: InputLimits) -> None:
    if limits.oversize == "refuse" and is_oversize(*size):
        raise BadInputImage(field, f"at most {MAX_PIXELS} pixels and {MAX_SIDE_PX} pixels a "
                                   f"side (ZQ_OVERSIZE_INPUT=refuse)",
                            f"{size[0]}x{size[1]}")


def _decode(opened: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    """The first frame's pixels, upright, at most the render limits in size; and the
    upright size before shrinking."""
    header = opened.size
    target = fit_size(*header)
    if opened.format in ("JPEG", "MPO") and target != header:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the memory; the
        # scale chosen still leaves at least ``target`` (the fit is symmetric in
        # width and height, so EXIF rotation does not change it).
        opened.draft(opened.mode, target)
    opened.load()
    turned = opened.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    ImageOps.exif_transpose(opened, in_place=True)
    upright = (header[1], header[0]) if turned else header
    target = fit_size(*upright)
    if opened.size == target:
        return opened, upright
    shrinkable = _resizable(opened)
    return shrinkable.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0), upright


def _resizable(image: Image.Image) -> Image.Image:
    """A mode Pillow resamples, converted before shrinking only where needed."""
    if image.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return image
    return _eight_bit(image)


def _eight_bit(image: Image.Image) -> Image.Image:
    """8-bit RGB, RGBA, L, LA or CMYK; alpha and palette transparency kept as RGBA."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples: scale 0..65535 to 0..255 (a plain convert would clip at 255).
        return image.convert("I").point(lambda value: value * (1 / 257)).convert("L")
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA") and ("transparency" in image.info or mode == "PA"):
        return image.convert("RGBA")
    if mode in ("RGBa", "La"):
        return image.convert("RGBA" if mode == "RGBa" else "LA")
    return image.convert("RGB")


def _normalise(image: Image.Image, mask: bool,
               background: tuple[int, int, int]) -> Image.Image:
    """8-bit sRGB RGB (masks: 8-bit L) with transparency composited away."""
    icc = image.info.get("icc_profile")
    image = _eight_bit(image)
    if "transparency" in image.info and image.mode in ("RGB", "L"):
        image = image.convert("RGBA")  # a tRNS colour key
    if image.mode == "LA":
        image = image.convert("RGBA")
    if not mask and icc:
        image = _to_srgb(image, icc)
    if image.mode == "RGBA":
        flat = Image.new("RGB", image.size, (0, 0, 0) if mask else background)
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    return image.convert("L" if mask else "RGB")


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Pixels converted from their embedded profile to sRGB.

    A profile LittleCMS cannot use (broken, or for another colour space than the
    pixels') is ignored: the pixels are taken as sRGB, as untagged ones are.
    """
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    source = image.convert("RGB") if image.mode == "RGBA" else image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(source, profile, ImageCms.createProfile("sRGB"),
                                              outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image
    if converted is None:
        return image
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
