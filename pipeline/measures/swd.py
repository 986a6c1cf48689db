"""Multi-scale sliced Wasserstein distance (SWD) between two image sets, a generation metric that needs no
pretrained network: Karras et al., "Progressive Growing of GANs for Improved Quality, Stability, and Variation",
ICLR 2018, Sec. 5 and App. D. It complements FID/KID, it never replaces them.

Protocol, implemented from App. D:
- each image (uint8, mapped to [-1, 1]) gets a Laplacian pyramid from the full resolution down to `min_resolution`
  (16x16), each level half the previous; a Gaussian level is the previous one blurred with the 5x5 binomial kernel
  and subsampled by 2, a Laplacian level is a Gaussian level minus the upsampled (zero insertion, then the same
  kernel times 4) next-coarser Gaussian level, and the coarsest level is the Gaussian level itself;
- from each level, `patches_per_image` (128) random 7x7x3 neighbourhoods per image; the positions come from a
  torch.Generator seeded by `seed` and are the same for the i-th image of either set, so swapping the sets swaps
  the patch sets exactly (the distance is exactly symmetric);
- each colour channel of a level's patches is normalised by the mean and std over BOTH sets' patches of that level
  (Karras et al.'s code normalises each set on its own; pooling keeps a global shift of colour or contrast
  visible and is just as symmetric);
- per level, `directions` (512) random unit vectors in the 147-dim patch space (seeded); both patch sets are
  projected, each projection sorted, and the 1-D Wasserstein-1 distance (mean absolute difference of the sorted
  values) is averaged over the directions.
The result is per level (finest first) and their mean, in normalised patch units: NOT multiplied by 1e3 as Karras
et al. display it. Both sets must hold the same number of images, and like FID the value depends on that count
(fewer images: larger sampling noise, a higher floor); compare SWDs only at equal N. The order of images in a set
changes which random positions each image gets, so the value is order independent only up to that sampling noise.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.measures.quality import from_uint8

CITATION = ('Karras et al., "Progressive Growing of GANs for Improved Quality, Stability, and Variation", ICLR 2018, '
            "Sec. 5 and App. D")
PROTOCOL = (
    "multi-scale sliced Wasserstein distance: Laplacian pyramid from full resolution down to 16x16, 128 random 7x7x3 "
    "patches per image per level, each channel normalised by mean/std pooled over both sets' patches of the level, "
    "512 random unit projections per level, mean of the sorted-projection absolute differences (1-D W1); reported "
    "per level (finest first) and their mean, unscaled (Karras et al. display x1e3); equal image counts on both "
    "sides, depends on that count like FID"
)

PATCH = 7
IMAGES_PER_CHUNK = 256  # images whose pyramid is built at once: ~0.3 GB of float32 levels at 256 px
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H, W), separable 5x5 binomial blur with reflected borders."""
    channels = images.shape[1]
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(images)[None, None].expand(channels, 1, 5, 5)  # (C, 1, 5, 5)
    return F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), kernel, groups=channels)


def _upsample(images: Tensor, size: torch.Size) -> Tensor:
    """(N, C, h, w) -> (N, C, *size), the size of the finer level that was subsampled to (h, w): 2h, or 2h - 1 when
    it was odd (subsampling by 2 keeps ceil(odd / 2)); zero insertion on that grid, then the binomial blur times 4."""
    up = images.new_zeros(*images.shape[:2], *size)
    up[:, :, ::2, ::2] = images
    return 4 * _blur(up)


def _level_sizes(height: int, width: int, min_resolution: int) -> list[tuple[int, int]]:
    """(height, width) of each pyramid level, finest first: halved (rounding up) while the shorter side of the next
    level is at least `min_resolution`."""
    sizes = [(height, width)]
    while min(sizes[-1]) // 2 >= min_resolution:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def laplacian_pyramid(images: Tensor, min_resolution: int = 16) -> list[Tensor]:
    """float (N, C, H, W) -> levels [(N, C, H, W), (N, C, H/2, W/2), ..., (N, C, min_resolution, ...)], finest
    first; every level but the last is Laplacian, the last is the Gaussian level."""
    gaussian = [images]
    for _ in _level_sizes(*images.shape[-2:], min_resolution)[1:]:
        gaussian.append(_blur(gaussian[-1])[:, :, ::2, ::2])
    return [fine - _upsample(coarse, fine.shape[-2:]) for fine, coarse in itertools.pairwise(gaussian)] + [gaussian[-1]]


def _patches(level: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """level (N, C, H, W), top-left corners rows, cols (N, P) -> (N * P, C, 7, 7)."""
    n, c = level.shape[:2]
    offsets = torch.arange(PATCH, device=level.device)
    image = torch.arange(n, device=level.device)[:, None, None, None]  # (N, 1, 1, 1)
    y = (rows[:, :, None, None] + offsets[None, None, :, None])  # (N, P, 7, 1)
    x = (cols[:, :, None, None] + offsets[None, None, None, :])  # (N, P, 1, 7)
    patches = level.permute(0, 2, 3, 1)[image, y, x]  # (N, P, 7, 7, C)
    return patches.reshape(-1, PATCH, PATCH, c).permute(0, 3, 1, 2)  # (N * P, C, 7, 7)


def _sliced_w1(a: Tensor, b: Tensor, directions: Tensor, chunk: int = 128) -> Tensor:
    """Descriptors a, b (M, D), unit directions (K, D) -> mean over directions of the 1-D W1 distance, scalar."""
    total = a.new_zeros(())
    for start in range(0, len(directions), chunk):
        d = directions[start:start + chunk].T  # (D, k)
        pa, pb = (a @ d).sort(dim=0).values, (b @ d).sort(dim=0).values  # (M, k)
        total = total + (pa - pb).abs().mean(dim=0).sum()
    return total / len(directions)


def sliced_wasserstein(a: Tensor, b: Tensor, seed: int = 0, patches_per_image: int = 128, directions: int = 512,
                       min_resolution: int = 16) -> dict:
    """SWD between uint8 image sets a, b (N, 3, H, W) of equal shape (protocol in the module doc).

    Returns {"per_level": [float] * L (finest first, L = log2(H / min_resolution) + 1), "mean": float}."""
    if a.dtype != torch.uint8 or b.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"expected two (N, 3, H, W) sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < max(min_resolution, PATCH):
        raise ValueError(f"images of {tuple(a.shape[-2:])} are smaller than the coarsest level {min_resolution}")
    generator = torch.Generator().manual_seed(seed)
    n = len(a)
    per_level = []
    for level, (h, w) in enumerate(_level_sizes(*a.shape[-2:], min_resolution)):
        rows = torch.randint(0, h - PATCH + 1, (n, patches_per_image), generator=generator).to(a.device)
        cols = torch.randint(0, w - PATCH + 1, (n, patches_per_image), generator=generator).to(a.device)
        pa = _level_patches(a, level, rows, cols, min_resolution)  # (N * P, 3, 7, 7)
        pb = _level_patches(b, level, rows, cols, min_resolution)
        _normalise_pooled(pa, pb)
        dirs = torch.randn(directions, 3 * PATCH * PATCH, generator=generator).to(a.device)  # (K, 147)
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        per_level.append(float(_sliced_w1(pa.flatten(1), pb.flatten(1), dirs)))  # (N * P, 147) each
    return {"per_level": per_level, "mean": sum(per_level) / len(per_level)}


def _level_patches(images: Tensor, level: int, rows: Tensor, cols: Tensor, min_resolution: int) -> Tensor:
    """uint8 images (N, 3, H, W), corners rows, cols (N, P) -> float patches (N * P, 3, 7, 7) of pyramid level
    `level`. The pyramid is built IMAGES_PER_CHUNK images at a time, so no float copy of the whole set (4 bytes per
    value) is ever held; the patches of one level are what the distance needs."""
    per_image = rows.shape[1]
    patches = torch.empty(len(images) * per_image, 3, PATCH, PATCH, device=images.device)
    for start in range(0, len(images), IMAGES_PER_CHUNK):
        stop = min(start + IMAGES_PER_CHUNK, len(images))
        pyramid = laplacian_pyramid(from_uint8(images[start:stop]), min_resolution)
        patches[start * per_image:stop * per_image] = _patches(pyramid[level], rows[start:stop], cols[start:stop])
    return patches


def _normalise_pooled(a: Tensor, b: Tensor) -> None:
    """Patches a, b (M, 3, 7, 7), in place: each channel minus its mean, over its std (unbiased), both taken over
    the two sets pooled; computed from each set's own moments, without concatenating them (exactly symmetric)."""
    var_a, mean_a = torch.var_mean(a, dim=(0, 2, 3), correction=0)  # (3,) each
    var_b, mean_b = torch.var_mean(b, dim=(0, 2, 3), correction=0)
    count = a.numel() // a.shape[1]  # values per channel in each set
    mean = (mean_a + mean_b) / 2
    # the union's sum of squared deviations: each set's own, plus count/2 x the squared gap between their means
    var = count * (var_a + var_b + (mean_a - mean_b).square() / 2) / (2 * count - 1)
    std = var.sqrt().clamp_min(1e-8)
    for patches in (a, b):
        patches.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))
