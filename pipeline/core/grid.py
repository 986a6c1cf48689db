"""Labelled image grids written as PNG: a title, a label per row on the left and a label per column on top.

Every picture the pipeline writes (reconstructions, latent pictures, sample grids, the data contact sheet) goes
through `labelled_grid`, so all of them read the same way. Tiles are pasted unchanged; tiles smaller than
`MIN_TILE` px are first enlarged by an integer factor with nearest-neighbour repetition (each pixel becomes a
k x k block, so no value is invented) and the font grows with the tile, so labels stay legible at any size.
Text uses Pillow's built-in font (`ImageFont.load_default(size=...)`, Pillow >= 10.1): no font files needed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 2  # px of background between tiles
MIN_TILE = 96  # px: smaller tiles are enlarged (nearest neighbour) to at least this
FONT_RANGE = (12, 24)  # px: the font is 1/8 of the shown tile size, within this range
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """Where everything sits in a labelled grid (all in px)."""

    scale: int  # nearest-neighbour enlargement factor of the tiles
    tile: int  # shown tile size (input size x scale)
    left: int  # width of the row-label band
    title_height: int  # height of the title band (at the top)
    header_height: int  # height of the column-label band (below the title)
    width: int
    height: int

    @property
    def top(self) -> int:
        return self.title_height + self.header_height

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of tile (row, column)."""
        return self.top + row * (self.tile + GAP), self.left + column * (self.tile + GAP)


def enlargement(size: int) -> int:
    """The integer factor tiles of `size` px are enlarged by (1 from MIN_TILE px up)."""
    return math.ceil(MIN_TILE / size)


def grid_layout(size: int, rows: int, title: str, row_labels: list[str], column_labels: list[str]) -> GridLayout:
    """The layout of `rows` rows of len(column_labels) tiles of (size, size) px under those labels."""
    scale = enlargement(size)
    tile = size * scale
    font, pad, line = _font(tile)
    left = max((font.getlength(label) for label in row_labels), default=0)
    left = math.ceil(left) + 2 * pad if left else 0
    body_width = len(column_labels) * (tile + GAP) - GAP
    width = left + body_width
    title_lines = _wrap(title, font, width - 2 * pad)
    header_lines = max(len(_wrap(label, font, tile)) for label in column_labels)
    title_height = len(title_lines) * line + pad if title_lines else 0
    header_height = header_lines * line + pad // 2 if header_lines else 0
    height = title_height + header_height + rows * (tile + GAP) - GAP
    return GridLayout(scale, tile, left, title_height, header_height, width, height)


def labelled_grid(rows: list[list[np.ndarray]], title: str, row_labels: list[str],
                  column_labels: list[str]) -> bytes:
    """PNG bytes of a grid of (S, S, 3) uint8 tiles: one list of tiles per row (a row may be shorter than the
    others: the rest stays blank), one label per row and per column, and a title (wrapped to the grid's width)."""
    if not rows or len(row_labels) != len(rows) or any(len(row) > len(column_labels) for row in rows):
        raise ValueError(f"expected one label per row and at most {len(column_labels)} tiles (one per column label) "
                         f"per row; got {len(row_labels)} row labels for rows of {[len(r) for r in rows]} tiles")
    size = next((row[0].shape[0] for row in rows if row), None)
    if size is None:
        raise ValueError("expected at least one tile")
    if any(tile.shape != (size, size, 3) or tile.dtype != np.uint8 for row in rows for tile in row):
        raise ValueError(f"every tile must be a ({size}, {size}, 3) uint8 array")
    layout = grid_layout(size, len(rows), title, row_labels, column_labels)
    font, pad, line = _font(layout.tile)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, text in enumerate(_wrap(title, font, layout.width - 2 * pad)):
        draw.text((pad, pad // 2 + index * line), text, fill=INK, font=font)
    for column, label in enumerate(column_labels):
        centre = layout.origin(0, column)[1] + layout.tile // 2
        for index, text in enumerate(_wrap(label, font, layout.tile)):
            draw.text((centre, layout.title_height + index * line), text, fill=INK, font=font, anchor="ma")
    for row_index, (label, row) in enumerate(zip(row_labels, rows)):
        top = layout.origin(row_index, 0)[0]
        draw.text((pad, top + layout.tile // 2), label, fill=INK, font=font, anchor="lm")
        for column, tile in enumerate(row):
            shown = tile.repeat(layout.scale, axis=0).repeat(layout.scale, axis=1)  # (tile, tile, 3)
            canvas.paste(Image.fromarray(shown), layout.origin(row_index, column)[::-1])
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _font(tile: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, int]:
    """The font for tiles of `tile` px, the padding around labels and the line height."""
    size = min(max(tile // 8, FONT_RANGE[0]), FONT_RANGE[1])
    font = ImageFont.load_default(size=size)
    return font, size // 2, font.getbbox("Ag|")[3] + size // 4


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """`text` split at spaces into lines of at most `width` px (a longer single word gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines
