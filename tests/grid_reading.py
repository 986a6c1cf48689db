"""Reading a labelled grid PNG back (pipeline/core/grid.py): its tiles, and where its labels were drawn.

The tiles sit in the bottom-right corner of the picture: the title and column labels are above them, the row labels
to their left, so the tiles can be found from the picture's size alone, without knowing the labels' text.
"""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.grid import BACKGROUND, GAP, enlargement


@dataclass
class ReadGrid:
    pixels: np.ndarray  # (H, W, 3) the whole picture
    tile: int  # shown tile size
    left: int  # width of the row-label band
    top: int  # height of the title and column-label bands
    rows: int
    columns: int

    def tile_at(self, row: int, column: int) -> np.ndarray:
        y, x = self.top + row * (self.tile + GAP), self.left + column * (self.tile + GAP)
        return self.pixels[y:y + self.tile, x:x + self.tile]

    def row_label_inked(self, row: int) -> bool:
        y = self.top + row * (self.tile + GAP)
        return _inked(self.pixels[y:y + self.tile, :self.left])

    def _last_line(self) -> tuple[int, int]:
        """Rows [start, end) of the lowest line of text above the tiles (the column labels, if any)."""
        inked = (self.pixels[:self.top] != BACKGROUND).any(axis=(1, 2))  # (top,)
        end = int(np.flatnonzero(inked)[-1]) + 1
        start = end
        while start > 0 and inked[start - 1]:
            start -= 1
        return start, end

    def column_label_inked(self, column: int) -> bool:
        start, end = self._last_line()
        x = self.left + column * (self.tile + GAP)
        return _inked(self.pixels[start:end, x:x + self.tile])

    def title_inked(self) -> bool:
        """Ink above the lowest line of text (the title, over the column labels)."""
        return _inked(self.pixels[:self._last_line()[0]])


def _inked(region: np.ndarray) -> bool:
    return region.size > 0 and bool((region != BACKGROUND).any())


def read_grid(png: Path | bytes, size: int, rows: int, columns: int) -> ReadGrid:
    """The grid of `rows` x `columns` tiles of `size` px (before enlargement) in a PNG file or its bytes."""
    data = png.read_bytes() if isinstance(png, Path) else png
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    tile = size * enlargement(size)
    height, width = pixels.shape[:2]
    left = width - (columns * (tile + GAP) - GAP)
    top = height - (rows * (tile + GAP) - GAP)
    assert left > 0 and top > 0, f"no label bands: a {width} x {height} picture for {rows} x {columns} tiles of {tile}"
    return ReadGrid(pixels, tile, left, top, rows, columns)


def shown(tile: np.ndarray) -> np.ndarray:
    """An (S, S, 3) tile as the grid shows it: enlarged by nearest-neighbour repetition."""
    scale = enlargement(tile.shape[0])
    return tile.repeat(scale, axis=0).repeat(scale, axis=1)
