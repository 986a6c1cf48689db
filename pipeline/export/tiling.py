"""Tiled application of a fully convolutional map (encoder or decoder) to inputs larger than a memory budget.

The input is cut into overlapping square tiles; each tile's output is weighted by a separable raised-cosine ramp
across the overlap on every side that borders another tile (weight 1 inside the tile and along the image border),
and the weighted outputs are summed and divided by the summed weights. Neighbouring tiles then cross-fade
smoothly instead of meeting at a hard edge, which hides the small differences between them (each tile sees less
context, and GroupNorm normalises each tile with its own statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Tiling:
    """Square tiles of `tile` input pixels on a side, neighbours overlapping by `overlap` input pixels; both are
    multiples of `align` (the encoder needs tiles on its 8-pixel grid)."""

    tile: int
    overlap: int

    @classmethod
    def for_budget(cls, max_tile_pixels: int, align: int) -> Tiling:
        """The largest square tile of at most `max_tile_pixels` pixels on the `align` grid, overlap a quarter
        of it."""
        tile = math.isqrt(max_tile_pixels) // align * align
        if tile < 4 * align:
            raise ValueError(f"max_tile_pixels: {max_tile_pixels} gives tiles under {4 * align} px on a side; "
                             f"allow at least {(4 * align) ** 2}")
        return cls(tile, tile // 4 // align * align)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles covering [0, length): every `tile - overlap`, the last one flush with the end."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def _ramp(size: int, ramp: int, rising: bool, falling: bool) -> Tensor:
    """(size,) weights: a raised cosine from ~0 to 1 over the first `ramp` values if `rising`, back down over the
    last `ramp` if `falling`, 1 elsewhere."""
    weights = torch.ones(size, dtype=torch.float64)
    edge = torch.sin(0.5 * math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp).square()  # (ramp,)
    if rising:
        weights[:ramp] = edge
    if falling:
        weights[size - ramp:] = torch.minimum(weights[size - ramp:], edge.flip(0))
    return weights


def apply_tiled(fn: Callable[[Tensor], Tensor], x: Tensor, tiling: Tiling, scale: float) -> Tensor:
    """fn((B, C, H, W)) -> (B, C', H * scale, W * scale), computed tile by tile and blended (module doc).

    scale: output pixels per input pixel (8 for a decoder, 1/8 for an encoder); tiles and overlaps must map to
    whole output pixels.
    """
    height, width = x.shape[-2:]
    rows = tile_starts(height, tiling.tile, tiling.overlap)
    columns = tile_starts(width, tiling.tile, tiling.overlap)
    ramp = round(tiling.overlap * scale)
    out = weight_sum = None
    for top in rows:
        for left in columns:
            piece = fn(x[..., top:top + tiling.tile, left:left + tiling.tile])  # (B, C', h, w)
            if out is None:
                out = piece.new_zeros((*piece.shape[:2], round(height * scale), round(width * scale)))
                weight_sum = piece.new_zeros(out.shape[-2:])
            h, w = piece.shape[-2:]
            top_out, left_out = round(top * scale), round(left * scale)
            weights = torch.outer(_ramp(h, ramp, top > 0, top + tiling.tile < height),
                                  _ramp(w, ramp, left > 0, left + tiling.tile < width)).to(piece)  # (h, w)
            out[..., top_out:top_out + h, left_out:left_out + w] += piece * weights
            weight_sum[top_out:top_out + h, left_out:left_out + w] += weights
    return out / weight_sum
