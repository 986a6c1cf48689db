"""Image grids with a header row naming the columns, written as PNG (reconstruction and latent pictures)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HEADER_HEIGHT = 18
GAP = 2


def labelled_grid(rows: list[list[np.ndarray]], headers: list[str]) -> bytes:
    """PNG bytes of a grid of (S, S, 3) uint8 tiles, one list of tiles per row, under one header per column."""
    if not rows or any(len(row) != len(headers) for row in rows):
        raise ValueError(f"expected rows of {len(headers)} tiles (one per header), got {[len(r) for r in rows]}")
    size = rows[0][0].shape[0]
    width = len(headers) * (size + GAP) - GAP
    height = HEADER_HEIGHT + len(rows) * (size + GAP)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for column, header in enumerate(headers):
        draw.text((column * (size + GAP) + 2, 2), header, fill="black", font=font)
    for row_index, row in enumerate(rows):
        for column, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile), (column * (size + GAP), HEADER_HEIGHT + row_index * (size + GAP)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
