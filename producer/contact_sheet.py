"""Contact sheets: a grid of captioned thumbnails, to look at results rather than list them."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class Tile:
    """One image on the sheet and its caption lines."""

    image: bytes
    caption: str


def contact_sheet(tiles: Sequence[Tile], thumb_px: int = 256, columns: int = 4,
                  caption_lines: int = 4) -> bytes:
    """A PNG with one thumbnail per tile (aspect kept) and its caption beneath."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one image")
    font = ImageFont.load_default()
    line_px = 12
    pad = 8
    chars = max(thumb_px // 6, 10)
    cell_w, cell_h = thumb_px + pad, thumb_px + caption_lines * line_px + 2 * pad
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for index, tile in enumerate(tiles):
        x = pad + (index % columns) * cell_w
        y = pad + (index // columns) * cell_h
        with Image.open(io.BytesIO(tile.image)) as opened:
            thumb = opened.convert("RGB")
        thumb.thumbnail((thumb_px, thumb_px))
        sheet.paste(thumb, (x + (thumb_px - thumb.width) // 2, y))
        lines = textwrap.wrap(tile.caption, chars)[:caption_lines]
        for number, line in enumerate(lines):
            draw.text((x, y + thumb_px + 4 + number * line_px), line, fill="black", font=font)
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()
