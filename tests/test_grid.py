"""The labelled grid every picture of the pipeline is written with: its size is the label bands plus the tiles, the
bands hold drawn text, and the tiles are the images themselves (small ones enlarged by pixel repetition)."""

import numpy as np
import pytest
from grid_reading import read_grid, shown

from pipeline.core.grid import BACKGROUND, GAP, MIN_TILE, grid_layout, labelled_grid

TITLE = "what the grid shows, in a title long enough to need wrapping over a narrow grid"


def _tiles(size: int, rows: int, columns: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(size)
    return [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(columns)] for _ in range(rows)]


@pytest.mark.parametrize("size, shown_size", [(16, 96), (40, 120), (128, 128)])
def test_grid_is_label_bands_plus_untouched_tiles(size, shown_size):
    tiles = _tiles(size, 2, 3)
    row_labels, column_labels = ["input", "|error| x4"], ["crop 0", "crop 1", "crop 2"]
    png = labelled_grid(tiles, TITLE, row_labels, column_labels)
    grid = read_grid(png, size, rows=2, columns=3)

    layout = grid_layout(size, 2, TITLE, row_labels, column_labels)
    assert grid.tile == layout.tile == shown_size >= MIN_TILE
    assert grid.pixels.shape == (layout.top + 2 * shown_size + GAP, layout.left + 3 * shown_size + 2 * GAP, 3)
    assert (grid.left, grid.top) == (layout.left, layout.top) and layout.title_height > 0 and layout.header_height > 0
    for r in range(2):
        assert grid.row_label_inked(r)
        for c in range(3):
            np.testing.assert_array_equal(grid.tile_at(r, c), shown(tiles[r][c]))
    assert all(grid.column_label_inked(c) for c in range(3)) and grid.title_inked()
    # text stays in its bands: the gaps between tiles are background
    gap_column = grid.pixels[grid.top:, grid.left + shown_size:grid.left + shown_size + GAP]
    assert (gap_column == BACKGROUND).all()


def test_a_short_row_is_left_blank_and_empty_column_labels_take_no_band():
    tiles = _tiles(32, 2, 3)
    row_labels, column_labels = ["train (10 images)", "val (1 images)"], ["", "", ""]
    png = labelled_grid([tiles[0], tiles[1][:1]], "contact sheet", row_labels, column_labels)
    layout = grid_layout(32, 2, "contact sheet", row_labels, column_labels)
    assert layout.header_height == 0 and layout.title_height > 0
    grid = read_grid(png, 32, rows=2, columns=3)
    assert grid.top == layout.top and grid.row_label_inked(1)
    assert (grid.tile_at(1, 1) == BACKGROUND).all() and (grid.tile_at(1, 2) == BACKGROUND).all()
    np.testing.assert_array_equal(grid.tile_at(1, 0), shown(tiles[1][0]))


def test_mismatched_labels_are_refused():
    tiles = _tiles(16, 2, 2)
    with pytest.raises(ValueError, match="one label per row"):
        labelled_grid(tiles, "t", ["only one row label"], ["a", "b"])
    with pytest.raises(ValueError, match="one label per row"):
        labelled_grid(tiles, "t", ["a", "b"], ["one column"])
    with pytest.raises(ValueError, match=r"\(16, 16, 3\) uint8"):
        labelled_grid([[tiles[0][0], tiles[0][1][:8, :8]]], "t", ["a"], ["a", "b"])
