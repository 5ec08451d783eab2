"""A corpus of hostile and awkward input images, generated in the test (no binaries checked in).

Bombs are written chunk by chunk with zlib, so making a 12000x12000 PNG costs the test
process a few KB of memory, not 144 MB.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, *, colour_type: int = 0, bit_depth: int = 8,
            row: Callable[[int], bytes] | None = None, extra: bytes = b"") -> bytes:
    """A PNG written by hand: ``row(y)`` gives each row's samples (default: zeros).

    ``extra`` chunks go between IHDR and IDAT. Rows are compressed as they are made.
    """
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row_bytes = width * channels * bit_depth // 8
    zero_row = b"\0" * (row_bytes + 1)
    compressor = zlib.compressobj(9)
    parts = []
    for y in range(height):
        line = zero_row if row is None else b"\0" + row(y)
        parts.append(compressor.compress(line))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    """``image`` saved in ``image_format`` with Pillow."""
    out = io.BytesIO()
    image.save(out, format=image_format, **options)
    return out.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Incompressible pixels, so truncating the file cuts into image data."""
    import os

    channels = len(mode)
    return Image.frombytes(mode, (width, height), os.urandom(width * height * channels))


def bomb_png(side: int = 12000) -> bytes:
    """A black ``side`` x ``side`` greyscale PNG: ~20 KB for 144 megapixels."""
    return raw_png(side, side)


def lying_header_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid 16x16 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed)."""
    small = raw_png(16, 16)
    ihdr_at = len(PNG_SIGNATURE)
    length = struct.unpack(">I", small[ihdr_at:ihdr_at + 4])[0]
    data = bytearray(small[ihdr_at + 8:ihdr_at + 8 + length])
    data[0:8] = struct.pack(">II", width, height)
    patched = chunk(b"IHDR", bytes(data))
    return small[:ihdr_at] + patched + small[ihdr_at + 12 + length:]


def text_bomb_png(megabytes: int = 64) -> bytes:
    """A 16x16 PNG with a zTXt chunk that inflates to ``megabytes`` MB of zeros."""
    text = zlib.compress(b"\0" * (megabytes * 1024 * 1024), 9)
    return raw_png(16, 16, extra=chunk(b"zTXt", b"Comment\0\0" + text))


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` share of a file."""
    return data[: int(len(data) * keep)]


def big_jpeg(width: int, height: int) -> bytes:
    """A plain-coloured JPEG of the given size (a few hundred KB at most)."""
    image = Image.new("RGB", (width, height), (90, 140, 200))
    return encode(image, "JPEG", quality=50)


def rotated_jpeg(width: int = 64, height: int = 32, orientation: int = 6) -> bytes:
    """A JPEG stored ``width`` x ``height`` whose EXIF says to rotate it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.new("RGB", (width, height), (200, 50, 50)), "JPEG", exif=exif)


def transparent_png(side: int = 32) -> bytes:
    """RGBA: a transparent frame around an opaque red square."""
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    return encode(image, "PNG")


def palette_transparent_png(side: int = 32) -> bytes:
    """Palette PNG whose index 0 (black) is transparent, with an opaque green middle."""
    image = Image.new("P", (side, side), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    return encode(image, "PNG", transparency=0)


def sixteen_bit_grey_png() -> bytes:
    """A 2x1 16-bit greyscale PNG: white (65535) and mid-grey (32896)."""
    return raw_png(2, 1, bit_depth=16, row=lambda _: struct.pack(">HH", 65535, 32896))


def sixteen_bit_rgb_png() -> bytes:
    """A 1x1 48-bit RGB PNG: (65535, 32896, 0)."""
    return raw_png(1, 1, colour_type=2, bit_depth=16,
                   row=lambda _: struct.pack(">HHH", 65535, 32896, 0))


def cmyk_jpeg() -> bytes:
    """A CMYK JPEG of pure cyan."""
    return encode(Image.new("CMYK", (32, 32), (255, 0, 0, 0)), "JPEG")


def animated_png() -> bytes:
    """A two-frame APNG: red, then blue."""
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def animated_gif() -> bytes:
    """A two-frame GIF (not an accepted format)."""
    frames = [Image.new("P", (32, 32), index) for index in (1, 2)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100000" '
       b'height="100000"><rect width="100%" height="100%"/></svg>')
HTML = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def _curve(gamma: float) -> bytes:
    return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def swapped_rgb_profile() -> bytes:
    """A minimal ICC v2 RGB profile: sRGB's primaries with red and blue exchanged.

    A pure red pixel tagged with it is pure blue in sRGB, so a conversion is visible.
    """
    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606,
                                                                            0.7141)
    tags = [(b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz(*blue)),
            (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*red)),
            (b"rTRC", _curve(2.2)), (b"gTRC", _curve(2.2)), (b"bTRC", _curve(2.2))]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    header = (struct.pack(">I", offset + len(body)) + b"none" + bytes([2, 0x10, 0, 0])
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


def icc_tagged_png() -> bytes:
    """A pure red PNG tagged with ``swapped_rgb_profile``."""
    return encode(Image.new("RGB", (16, 16), (255, 0, 0)), "PNG",
                  icc_profile=swapped_rgb_profile())
