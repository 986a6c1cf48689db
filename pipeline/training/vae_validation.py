"""The fixed validation batch used during VAE training, its two reference baselines, and the recon grid.

Baselines, on exactly the same crops as the model:
- flat colour: every crop replaced by its own mean colour (what a model that learnt nothing spatial gets);
- bicubic x8: the crop downsampled 8x and upsampled back with bicubic filtering (a classical codec with
  the same spatial compression as the f=8 latent, but with 3 channels instead of nz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.autoencoder import Autoencoder
from pipeline.core.errors import MissingInputError
from pipeline.core.files import write_bytes
from pipeline.core.grid import enlargement, labelled_grid
from pipeline.data.shards import stream_images, to_model_range
from pipeline.measures.quality import psnr, ssim, to_uint8

GRID_WIDTH = 1024  # px of tiles: a lossless grid of photos this wide stays near 1 MB (the grids are git-tracked plots)
ERROR_GAIN = 4  # the grids' error row shows |input - reconstruction| x 4 so small errors are visible


def validation_crops(urls: list[str], resolution: int, count: int) -> Tensor:
    """Up to `count` non-overlapping `resolution` crops tiled over the val images in shard order, (N, 3, r, r) in
    [-1, 1]. Tiles are taken round-robin across images (every image's first tile, then every image's second, ...)
    so every image is represented.

    Streamed: the round-robin order restricted to the images read so far keeps the relative order of the final
    one, so a tile outside its first `count` can never return; only those are kept (memory: `count` crops and one
    image, whatever the number of val images)."""
    kept: list[list[np.ndarray]] = []  # per image read so far: its tiles still among the first `count`
    for _, pixels in stream_images(urls):
        height, width = pixels.shape[:2]
        rows, cols = height // resolution, width // resolution
        top0, left0 = (height - rows * resolution) // 2, (width - cols * resolution) // 2
        tiles = [pixels[top0 + r * resolution: top0 + (r + 1) * resolution,
                        left0 + c * resolution: left0 + (c + 1) * resolution].copy()  # not a view of the image
                 for r in range(rows) for c in range(cols)][:count]
        kept = [t for t in _first_round_robin([*kept, tiles], count) if t]  # images with no tile left go
    crops = [tile for per_image in _round_robin(kept) for tile in per_image][:count]
    if not crops:
        raise MissingInputError(f"no validation image is at least {resolution}px; lower the resolution or re-run prepare")
    return to_model_range(np.stack(crops))


def _round_robin(per_image: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Rounds of the round-robin order: round i holds the i-th tile of every image that has one."""
    return [[tiles[i] for tiles in per_image if i < len(tiles)] for i in range(max(map(len, per_image), default=0))]


def _first_round_robin(per_image: list[list[np.ndarray]], count: int) -> list[list[np.ndarray]]:
    """Each image's tiles cut to those among the first `count` of the round-robin order."""
    quota, cut = count, [0] * len(per_image)
    for i in range(max(map(len, per_image), default=0)):
        for index, tiles in enumerate(per_image):
            if i < len(tiles) and quota:
                cut[index], quota = i + 1, quota - 1
    return [tiles[:n] for tiles, n in zip(per_image, cut)]


def baselines(crops: Tensor) -> dict[str, float]:
    """PSNR/SSIM of the flat-colour and bicubic-x8 reconstructions of `crops` (B, 3, H, W) in [-1, 1]."""
    size = crops.shape[-1]
    flat = crops.mean(dim=(2, 3), keepdim=True).expand_as(crops)
    small = F.interpolate(crops, scale_factor=1 / 8, mode="bicubic", antialias=True, align_corners=False)
    bicubic = F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False)
    reference = to_uint8(crops)
    out = {}
    for name, images in (("flat", flat), ("bicubic_x8", bicubic)):
        out[f"baseline_{name}_psnr"] = float(psnr(reference, to_uint8(images)).mean())
        out[f"baseline_{name}_ssim"] = float(ssim(reference, to_uint8(images)).mean())
    return out


@torch.no_grad()
def reconstruct(model: Autoencoder, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Posterior-mode reconstructions of (N, 3, H, W) images, on CPU, in batches."""
    parts = [model(images[i:i + batch_size].to(device), sample=False).image.float().cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def score_reconstructions(model: Autoencoder, crops: Tensor, batch_size: int, device: torch.device) -> tuple[dict[str, float], Tensor]:
    """Val PSNR/SSIM (8-bit) of the model on `crops`; also returns the reconstructions."""
    recon = reconstruct(model, crops, batch_size, device)
    reference, output = to_uint8(crops), to_uint8(recon)
    return {"psnr": float(psnr(reference, output).mean()), "ssim": float(ssim(reference, output).mean())}, recon


def reconstruction_grid(inputs: np.ndarray, outputs: np.ndarray, title: str, column_labels: list[str]) -> bytes:
    """PNG bytes of (N, r, r, 3) uint8 inputs and their reconstructions as N columns, in rows input,
    reconstruction and |input - reconstruction| x ERROR_GAIN (8-bit values, clipped at 255)."""
    errors = np.clip(np.abs(inputs.astype(np.int16) - outputs) * ERROR_GAIN, 0, 255).astype(np.uint8)
    return labelled_grid([list(inputs), list(outputs), list(errors)], title,
                         ["input", "reconstruction", f"|error| x{ERROR_GAIN}"], column_labels)


def write_grid(path: Path, crops: Tensor, recon: Tensor, title: str) -> None:
    """The reconstruction grid of the first crops (B, 3, r, r) in [-1, 1] whose shown tiles fit in GRID_WIDTH px."""
    columns = max(1, GRID_WIDTH // (crops.shape[-1] * enlargement(crops.shape[-1])))
    inputs, outputs = (to_uint8(images[:columns]).permute(0, 2, 3, 1).numpy() for images in (crops, recon))
    write_bytes(path, reconstruction_grid(inputs, outputs, title, [f"crop {index}" for index in range(len(inputs))]))
