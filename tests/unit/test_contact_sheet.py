"""Contact sheets: a PNG grid whose size follows from the tile count and layout."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from producer.contact_sheet import Tile, contact_sheet

PAD, LINE_PX = 8, 12


def _png(width: int, height: int, color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def _expected_size(tiles: int, thumb_px: int, columns: int, caption_lines: int) -> tuple[int, int]:
    cell_w = thumb_px + PAD
    cell_h = thumb_px + caption_lines * LINE_PX + 2 * PAD
    cols = min(columns, tiles)
    rows = -(-tiles // cols)
    return cols * cell_w + PAD, rows * cell_h + PAD


def _tiles(count: int) -> list[Tile]:
    colors = ["red", "green", "blue", "yellow", "purple"]
    return [Tile(_png(64, 32 + 16 * i, colors[i % len(colors)]), f"{i}. turbo 64x64: a fox")
            for i in range(count)]


def test_three_tiles_in_one_row() -> None:
    data = contact_sheet(_tiles(3), thumb_px=64)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == _expected_size(3, 64, 4, 4)
        assert sheet.size == (3 * 72 + 8, 64 + 48 + 16 + 8)
        rgb = sheet.convert("RGB")
    # The first thumbnail (pure red, 64x32, scaled to fit) sits at the top-left cell.
    assert rgb.getpixel((PAD + 32, PAD + 10)) == (255, 0, 0)
    # The second (green) is in the next cell to the right.
    assert rgb.getpixel((PAD + 72 + 32, PAD + 10)) == (0, 128, 0)


def test_three_tiles_wrap_to_two_rows() -> None:
    data = contact_sheet(_tiles(3), thumb_px=32, columns=2, caption_lines=2)
    with Image.open(io.BytesIO(data)) as sheet:
        assert sheet.size == _expected_size(3, 32, 2, 2)
        assert sheet.size == (2 * 40 + 8, 2 * (32 + 24 + 16) + 8)


def test_thumbnails_keep_aspect_and_fit() -> None:
    wide = Tile(_png(200, 50, "blue"), "wide")
    data = contact_sheet([wide], thumb_px=64, caption_lines=0)
    with Image.open(io.BytesIO(data)) as sheet:
        rgb = sheet.convert("RGB")
    # 200x50 scales to 64x16: blue inside that band, white below it.
    assert rgb.getpixel((PAD + 32, PAD + 8)) == (0, 0, 255)
    assert rgb.getpixel((PAD + 32, PAD + 40)) == (255, 255, 255)


def test_empty_list_raises() -> None:
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])
