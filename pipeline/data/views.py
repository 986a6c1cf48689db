"""The evaluation views of the val images, shared by `eval_recon` and `analyze_latents`.

Each val image gives `count` square views: view 0 is its central square (side = the shorter side: the standard
"resize and center-crop" evaluation protocol), views 1.. are squares with a side drawn uniformly from
[1/2, 1] x the shorter side at a uniform position, from a generator seeded by (seed, image index), so every
run and every resolution sees the same views. A view is then resized to r x r with PIL's bicubic filter,
which is antialiased when it shrinks; a view smaller than r is upsampled (and counted as such by callers).

Images are streamed from the shards one at a time in shard order, so memory does not grow with the val set.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from pipeline.data.shards import stream_images

MIN_VIEW_FRACTION = 0.5


def iter_images(urls: list[str], limit: int | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 images of the shards `urls`, in shard order, at most `limit`."""
    return (pixels for _, pixels in stream_images(urls, limit))


def square_views(pixels: np.ndarray, count: int, seed: int, index: int) -> list[np.ndarray]:
    """`count` square crops (S_i, S_i, 3) of an (H, W, 3) image: the central square, then seeded random ones."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    boxes = [((height - side) // 2, (width - side) // 2, side)]
    rng = np.random.default_rng([seed, index])
    for _ in range(count - 1):
        size = int(rng.integers(int(side * MIN_VIEW_FRACTION), side + 1))
        boxes.append((int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1)), size))
    return [pixels[top:top + size, left:left + size] for top, left, size in boxes]


def resize_square(square: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) uint8 -> (size, size, 3) uint8, bicubic (antialiased when shrinking)."""
    if square.shape[0] == size:
        return square
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC))
