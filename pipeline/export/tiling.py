"""Tiled application of a fully convolutional map (encoder or decoder) to inputs larger than a memory budget.

The input is cut into overlapping square tiles; each tile's output is weighted by a separable raised-cosine ramp
across the overlap on every side that borders another tile (weight 1 inside the tile and along the image border),
and the weighted outputs are summed and divided by the summed weights. Neighbouring tiles then cross-fade
smoothly instead of meeting at a hard edge, which hides the small differences left between them (each tile sees
less context).

GroupNorm would normalise each tile with its own statistics, which shifts every tile's colours and contrast (a
tiny decoder's tiled reconstruction was 24 dB from its untiled one). So every GroupNorm normalises all tiles with
the statistics of one pass over the whole input shrunk to fit the budget (`shared_group_norm_statistics`, the
"fast" mode of Tiled VAE in multidiffusion-upscaler): on a 768 x 1024 photo, statistics from the input at half
size keep the tiled result 41 dB from the untiled one, at a quarter size 36 dB; the exact statistics would give
57 dB, but need a pass per GroupNorm layer.

Those figures (and tests/test_export_tiling.py) are of a decoder without mid-block attention, which is purely
local. With `mid_attention: true` (the paper profile's decoder, and the SD-VAE encoder) each tile's attention sees
only that tile's latents, not the whole image's, so tiled and untiled results differ by more than the figures
above, by an amount not measured here; raise `max_tile_pixels` (or pass None) to keep such a model untiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def shrink_to_budget(x: Tensor, max_pixels: int, align: int) -> Tensor:
    """(B, C, H, W) -> (B, C, h, w) area-averaged, h * w * pixels_per_value <= max_pixels with pixels_per_value =
    `align`^2 for latents (`align` = 8) or 1 for images (`align` = 1 keeps any size; 8 keeps multiples of 8)."""
    height, width = x.shape[-2:]
    factor = math.sqrt(height * width / max_pixels)
    if factor <= 1:
        return x
    size = [max(align, int(side / factor) // align * align) for side in (height, width)]
    return F.adaptive_avg_pool2d(x, size)


@contextmanager
def shared_group_norm_statistics(module: nn.Module, whole: Callable[[], object]) -> Iterator[None]:
    """Within the block, each GroupNorm of `module` normalises with the per-group mean and variance it saw while
    `whole()` ran (called once, on entering), not with those of its own input (module doc). A GroupNorm called
    several times per forward (a shared extractor) keeps one set of statistics per call, used in the same order."""
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    seen: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in norms}

    def capture(norm: nn.GroupNorm, inputs: tuple[Tensor], _output: Tensor) -> None:
        groups = inputs[0].reshape(inputs[0].shape[0], norm.num_groups, -1).double()  # (B, G, C/G * H * W)
        seen[norm].append((groups.mean(-1), groups.var(-1, unbiased=False)))  # (B, G) each

    handles = [m.register_forward_hook(capture) for m in norms]
    try:
        with torch.inference_mode():
            whole()
    finally:
        for handle in handles:
            handle.remove()
    calls = dict.fromkeys(norms, 0)

    def normalise(norm: nn.GroupNorm, x: Tensor) -> Tensor:
        mean, var = seen[norm][calls[norm] % len(seen[norm])]
        calls[norm] += 1
        groups = x.reshape(x.shape[0], norm.num_groups, -1)  # (B, G, C/G * H * W)
        y = ((groups - mean[..., None].to(x.dtype)) * torch.rsqrt(var[..., None].to(x.dtype) + norm.eps)).reshape_as(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)  # (1, C, 1, 1)
        return y * norm.weight.view(shape) + norm.bias.view(shape) if norm.affine else y

    for norm in norms:
        norm.forward = lambda x, norm=norm: normalise(norm, x)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward
