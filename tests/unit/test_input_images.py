"""The input-image door over a hostile corpus: bombs, lies, truncation, disguises, odd modes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from common.errors import BadInputImage, InvalidJob
from common.images import (
    InputLimits,
    check_mask_size,
    fit_size,
    is_oversize,
    load_input,
    match_mask,
)
from common.job import MAX_PIXELS, MAX_SIDE_PX
from tests import hostile_images as hostile

ROOT = Path(__file__).resolve().parents[2]
LIMITS = InputLimits()


def refused(data: bytes, field: str = "source_image", limits: InputLimits = LIMITS,
            mask: bool = False) -> BadInputImage:
    """The refusal ``load_input`` raises for ``data`` (fails the test if it accepts it)."""
    with pytest.raises(BadInputImage) as caught:
        load_input(data, field, limits, mask=mask)
    assert isinstance(caught.value, InvalidJob)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    return caught.value


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    """One pixel of an RGB image."""
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple) and len(pixel) == 3
    return pixel[0], pixel[1], pixel[2]


def test_bomb_by_dimensions_is_refused_from_its_header() -> None:
    data = hostile.bomb_png(12000)
    assert len(data) < 200_000  # 144 megapixels in ~140 KB: a bomb
    error = refused(data, "mask", mask=True)
    assert str(error) == "mask: at most 64000000 pixels (got 144000000)"


def test_bomb_under_pillows_limit_but_over_ours_is_refused() -> None:
    error = refused(hostile.raw_png(9000, 8000), limits=InputLimits(max_pixels=50_000_000))
    assert str(error) == "source_image: at most 50000000 pixels (got 72000000)"


def test_header_that_lies_is_refused_before_decoding() -> None:
    data = hostile.lying_header_png(100_000, 100_000)
    assert len(data) < 200
    assert "10000000000" in str(refused(data))


def test_header_that_lies_within_the_limit_is_a_truncated_file() -> None:
    error = refused(hostile.lying_header_png(4000, 4000))
    assert "not a readable image" in str(error)


def test_text_chunk_bomb_is_refused() -> None:
    data = hostile.text_bomb_png(64)
    assert len(data) < 100_000
    assert "MAX_TEXT_CHUNK" in str(refused(data))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_truncated_file_is_refused(image_format: str) -> None:
    whole = hostile.encode(hostile.noise(256, 256), image_format)
    assert load_input(whole, "source_image", LIMITS).image.size == (256, 256)
    assert "not a readable image" in str(refused(hostile.truncated(whole)))


@pytest.mark.parametrize("data", [hostile.SVG, hostile.HTML, hostile.animated_gif(),
                                  hostile.encode(Image.new("RGB", (8, 8)), "BMP"),
                                  hostile.encode(Image.new("RGB", (8, 8)), "TIFF"), b""],
                         ids=["svg", "html", "gif", "bmp", "tiff", "empty"])
def test_anything_but_png_jpeg_webp_is_refused_whatever_its_name(data: bytes) -> None:
    assert str(refused(data)) == "source_image: must be a readable PNG, JPEG or WebP image"


@pytest.mark.parametrize("data", [hostile.PNG_SIGNATURE + b" this is not a png",
                                  b"\xff\xd8\xff\xe0 not a jpeg", b"RIFF\0\0\0\0WEBPjunk"],
                         ids=["png", "jpeg", "webp"])
def test_broken_file_of_an_accepted_format_is_unreadable(data: bytes) -> None:
    assert str(refused(data)).startswith("source_image: not a readable image: ")


def test_byte_cap_comes_first() -> None:
    data = hostile.encode(hostile.noise(64, 64), "PNG")
    error = refused(data, limits=InputLimits(max_bytes=1024))
    assert str(error) == f"source_image: at most 1024 bytes (got {len(data)})"


def test_refusals_leave_no_warning_filter_behind() -> None:
    before = list(warnings.filters)
    refused(hostile.bomb_png(12000))
    refused(hostile.lying_header_png())
    assert warnings.filters == before


def test_studio_photo_is_accepted_and_shrunk_to_the_render_limits() -> None:
    data = hostile.encode(hostile.noise(6000, 4000), "JPEG", quality=70)
    loaded = load_input(data, "source_image", LIMITS)
    assert loaded.source_size == (6000, 4000)
    assert loaded.image.mode == "RGB"
    width, height = loaded.image.size
    assert width * height <= MAX_PIXELS and max(width, height) <= MAX_SIDE_PX
    assert abs(width / height - 1.5) < 0.01
    assert loaded.image.size == fit_size(6000, 4000)


def test_huge_jpeg_decodes_at_reduced_scale_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(hostile.big_jpeg(8000, 8000))
    # A fresh interpreter, so the peak RSS is the decode's alone. A full decode holds
    # 8000x8000x4 bytes (256 MB); the JPEG draft decodes at half scale (64 MB).
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from common.images import InputLimits, load_input\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "loaded = load_input(Path(sys.argv[1]).read_bytes(), 'image', InputLimits())\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'size': loaded.image.size, 'source': loaded.source_size,\n"
        "                  'grew_kb': after - before, 'pixel': loaded.image.getpixel((9, 9))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    assert report["size"] == [2048, 2048] and report["source"] == [8000, 8000]
    assert all(abs(a - b) <= 3 for a, b in zip(report["pixel"], (90, 140, 200), strict=True))
    assert report["grew_kb"] < 160 * 1024, report


def test_refuse_policy_refuses_what_resize_would_shrink() -> None:
    data = hostile.encode(hostile.noise(3000, 2000), "PNG")
    error = refused(data, limits=InputLimits(oversize="refuse"))
    assert "ZQ_OVERSIZE_INPUT=refuse" in str(error) and "3000x2000" in str(error)
    fitting = hostile.encode(hostile.noise(2048, 2048), "PNG")
    assert load_input(fitting, "image", InputLimits(oversize="refuse")).image.size == (2048,
                                                                                      2048)


def test_cmyk_jpeg_becomes_rgb() -> None:
    loaded = load_input(hostile.cmyk_jpeg(), "image", LIMITS)
    assert loaded.image.mode == "RGB"
    red, green, blue = rgb(loaded.image, (16, 16))
    assert red < 40 and green > 215 and blue > 215  # cyan


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = load_input(hostile.sixteen_bit_grey_png(), "image", LIMITS).image
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(channel - 128) <= 1 for channel in rgb(image, (1, 0)))
    mask = load_input(hostile.sixteen_bit_grey_png(), "mask", LIMITS, mask=True).image
    assert mask.mode == "L" and mask.getpixel((0, 0)) == 255


def test_48_bit_rgb_becomes_8_bit() -> None:
    image = load_input(hostile.sixteen_bit_rgb_png(), "image", LIMITS).image
    assert image.mode == "RGB"
    red, green, blue = rgb(image, (0, 0))
    assert red == 255 and abs(green - 128) <= 1 and blue == 0


def test_exif_rotation_is_applied() -> None:
    loaded = load_input(hostile.rotated_jpeg(64, 32, orientation=6), "image", LIMITS)
    assert loaded.image.size == (32, 64) and loaded.source_size == (32, 64)


def test_exif_rotation_of_a_drafted_jpeg_reports_the_upright_source_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = hostile.encode(Image.new("RGB", (6000, 3000), (10, 200, 10)), "JPEG", exif=exif)
    loaded = load_input(data, "image", LIMITS)
    assert loaded.source_size == (3000, 6000)
    assert loaded.image.size == fit_size(3000, 6000)


def test_transparent_png_is_composited_on_the_background() -> None:
    data = hostile.transparent_png(32)
    image = load_input(data, "image", LIMITS).image
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((16, 16)) == (255, 0, 0)
    grey = load_input(data, "image", InputLimits(background=(10, 20, 30))).image
    assert grey.getpixel((0, 0)) == (10, 20, 30) and grey.getpixel((31, 31)) == (10, 20, 30)


def test_transparent_mask_pixels_keep_the_picture() -> None:
    mask = load_input(hostile.transparent_png(32), "mask", LIMITS, mask=True).image
    assert mask.mode == "L"
    assert mask.getpixel((0, 0)) == 0  # transparent: black, not the white background
    assert mask.getpixel((16, 16)) not in (0, None)


def test_palette_png_with_transparency_gets_the_background() -> None:
    image = load_input(hostile.palette_transparent_png(32), "image", LIMITS).image
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((31, 0)) == (255, 255, 255)
    assert image.getpixel((16, 16)) == (0, 255, 0)


def test_animated_png_gives_its_first_frame() -> None:
    loaded = load_input(hostile.animated_png(), "image", LIMITS)
    assert loaded.image.getpixel((0, 0)) == (255, 0, 0)


def test_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = hostile.encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                          lossless=True)
    assert load_input(data, "image", LIMITS).image.getpixel((0, 0)) == (255, 0, 0)


def test_icc_profile_is_converted_to_srgb() -> None:
    image = load_input(hostile.icc_tagged_png(), "image", LIMITS).image
    red, green, blue = rgb(image, (0, 0))
    # Stored red, but the profile's "red" primary is sRGB's blue.
    assert blue > 200 and red < 30 and green < 30


def test_broken_icc_profile_is_ignored() -> None:
    data = hostile.encode(Image.new("RGB", (8, 8), (255, 0, 0)), "PNG",
                          icc_profile=b"not a profile" * 20)
    assert load_input(data, "image", LIMITS).image.getpixel((0, 0)) == (255, 0, 0)


def test_same_aspect_mask_is_resized_with_the_image() -> None:
    image = load_input(hostile.encode(hostile.noise(64, 32), "PNG"), "image", LIMITS)
    mask = load_input(hostile.encode(Image.new("L", (32, 16), 255), "PNG"), "mask", LIMITS,
                      mask=True)
    resized = match_mask(image, mask)
    assert resized.size == (64, 32) and resized.mode == "L"


def test_mask_of_a_shrunk_image_is_shrunk_with_it() -> None:
    image = load_input(hostile.encode(hostile.noise(3000, 2000), "PNG"), "image", LIMITS)
    mask = load_input(hostile.encode(Image.new("L", (3000, 2000), 255), "PNG"), "mask",
                      LIMITS, mask=True)
    assert match_mask(image, mask).size == image.image.size == fit_size(3000, 2000)


@pytest.mark.parametrize("mask_size", [(64, 64), (32, 64), (66, 32)])
def test_wrong_aspect_mask_is_refused_naming_both_sizes(mask_size: tuple[int, int]) -> None:
    with pytest.raises(BadInputImage) as caught:
        check_mask_size((64, 32), mask_size)
    message = str(caught.value)
    assert message.startswith("mask: ")
    assert f"{mask_size[0]}x{mask_size[1]}" in message and "64x32" in message


@pytest.mark.parametrize(("size", "expected"), [
    ((3000, 2000), (2496, 1664)),
    ((2048, 2048), (2048, 2048)),
    ((1000, 700), (992, 688)),
    ((8000, 8000), (2048, 2048)),
    ((20000, 1000), (4096, 192)),
    ((100000, 10), (4096, 16)),
    ((17, 17), (16, 16)),
])
def test_size_rule(size: tuple[int, int], expected: tuple[int, int]) -> None:
    width, height = fit_size(*size, 16)
    assert (width, height) == expected
    assert width * height <= MAX_PIXELS and max(width, height) <= MAX_SIDE_PX
    assert width % 16 == 0 and height % 16 == 0


def test_size_rule_keeps_the_aspect_ratio_over_many_sizes() -> None:
    for width in range(500, 12001, 733):
        for height in range(500, 12001, 977):
            fitted_w, fitted_h = fit_size(width, height, 16)
            assert fitted_w * fitted_h <= MAX_PIXELS
            assert max(fitted_w, fitted_h) <= MAX_SIDE_PX
            # Rounding each side down by < 16 px moves the ratio by at most ~16/side.
            assert abs(fitted_w / fitted_h - width / height) <= (width / height) * (
                16 / min(fitted_w, fitted_h) + 0.01)
            assert is_oversize(width, height) == ((width, height) != fit_size(width, height))
