"""The latents `train_ldm` learns: posteriors of the frozen fine-tuned autoencoder, in the normalised space
x = (z - shift) * scale whose shift and scale `analyze_latents` writes to `data/latent_stats.json`.

A training batch comes from one of two sources, both yielding the posterior moments (B, 2 nz, h, w) from which
the trainer draws the latent (a posterior sample, as LDM's `get_first_stage_encoding` does):
- `OnTheFlyLatents` (the default) encodes each batch of the training stream (pipeline/data/shards.py: random crops
  and flips, fresh every step) as it arrives. This is what a light encoder makes affordable: augmentation stays
  possible, and nothing is precomputed (paper §1).
- `CachedLatents` encodes the first `cache_size` crops of the same stream once, before training, and then draws
  every batch uniformly with replacement from them, from a generator seeded by (seed, rank, step): crops and
  flips are frozen at caching time, as in the precomputed-latents workflow. Under DDP each rank caches the crops
  of its own shards.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from models.autoencoder import Autoencoder
from pipeline.config.parsing import ConfigError
from pipeline.config.schema import LDMConfig
from pipeline.core.errors import MissingInputError
from pipeline.core.precision import Precision
from pipeline.core.seeds import derived_seed
from pipeline.data.shards import center_crop, load_images, to_model_range, train_loader


@dataclass(frozen=True)
class LatentNorm:
    """The affine map from the autoencoder's latents z to the LDM's: x = (z - shift) * scale."""

    shift: float
    scale: float

    def normalise(self, z: Tensor) -> Tensor:
        """(B, nz, h, w) latents -> (B, nz, h, w), about zero mean and unit variance."""
        return (z - self.shift) * self.scale

    def denormalise(self, x: Tensor) -> Tensor:
        """(B, nz, h, w) normalised latents -> (B, nz, h, w) latents the decoder takes."""
        return x / self.scale + self.shift


def read_latent_norm(path: Path, latent_channels: int) -> LatentNorm:
    """The global shift and scale of `analyze_latents`' statistics file, checked against the autoencoder's nz."""
    if not path.is_file():
        raise MissingInputError(f"{path}: no latent statistics; run the analyze_latents stage")
    stats = json.loads(path.read_text())
    scale, shift = stats.get("scale"), stats.get("shift")
    if not isinstance(scale, (int, float)) or not isinstance(shift, (int, float)) or not scale > 0:
        raise ConfigError(f"{path}: expected a positive 'scale' and a 'shift' number, got {scale!r} and {shift!r}; "
                          "re-run analyze_latents")
    shape = stats.get("latent_shape")
    if shape and shape[0] != latent_channels:
        raise ConfigError(f"{path}: statistics of {shape[0]}-channel latents, but the autoencoder has "
                          f"{latent_channels}; re-run analyze_latents on this autoencoder")
    return LatentNorm(shift=float(shift), scale=float(scale))


@torch.no_grad()
def posterior_moments(autoencoder: Autoencoder, images: Tensor, precision: Precision) -> Tensor:
    """(B, 3, r, r) images in [-1, 1] -> float32 (B, 2 nz, r/8, r/8) posterior mean and log-variance."""
    with precision.autocast():
        posterior = autoencoder.encode(images)
    return torch.cat([posterior.mean, posterior.logvar], dim=1).float()  # (B, 2 nz, h, w)


class OnTheFlyLatents:
    """Iterator of posterior moments (B, 2 nz, h, w) of fresh training crops, encoded as they arrive."""

    def __init__(self, autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, precision: Precision,
                 start_step: int):
        self.autoencoder, self.precision = autoencoder, precision
        self.device = next(autoencoder.parameters()).device
        self.batches = iter(train_loader(urls, cfg.resolution, cfg.batch_size, seed=cfg.seed,
                                         num_workers=cfg.num_workers, start_batch=start_step))

    def __iter__(self) -> OnTheFlyLatents:
        return self

    def __next__(self) -> Tensor:
        images = next(self.batches).to(self.device, non_blocking=True)
        return posterior_moments(self.autoencoder, images, self.precision)


class CachedLatents:
    """Iterator of posterior moments (B, 2 nz, h, w) drawn from a cache encoded once (module doc)."""

    def __init__(self, autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, precision: Precision,
                 rank: int, start_step: int):
        self.batch_size, self.seed, self.rank, self.step = cfg.batch_size, cfg.seed, rank, start_step
        self.device = next(autoencoder.parameters()).device
        stream = train_loader(urls, cfg.resolution, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
        batches = itertools.islice(stream, math.ceil(cfg.cache_size / cfg.batch_size))
        parts = [posterior_moments(autoencoder, images.to(self.device), precision).cpu()
                 for images in tqdm(batches, desc="caching latents", unit="batch", disable=rank != 0)]
        self.moments = torch.cat(parts)[:cfg.cache_size]  # (cache_size, 2 nz, h, w)

    def __iter__(self) -> CachedLatents:
        return self

    def __next__(self) -> Tensor:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.rank, self.step))
        index = torch.randint(len(self.moments), (self.batch_size,), generator=generator)
        self.step += 1
        return self.moments[index].to(self.device, non_blocking=True)


def latent_source(autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, precision: Precision, rank: int,
                  start_step: int) -> OnTheFlyLatents | CachedLatents:
    """The training batches `cfg.latents` asks for, continuing at batch `start_step`."""
    if cfg.latents == "cache":
        return CachedLatents(autoencoder, urls, cfg, precision, rank, start_step)
    return OnTheFlyLatents(autoencoder, urls, cfg, precision, start_step)


@torch.no_grad()
def held_out_latents(autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, norm: LatentNorm) -> Tensor:
    """Normalised latents (N, nz, h, w) of the central `cfg.resolution` crops of the first `cfg.val_images` val
    images (N may be fewer when the val split is smaller): posterior samples, like the training latents, drawn
    from a generator seeded by `cfg.seed`."""
    images = load_images(urls, cfg.val_images)
    if not images:
        raise MissingInputError(f"{urls}: the val shards hold no images; re-run prepare")
    crops = torch.stack([to_model_range(center_crop(pixels, cfg.resolution)) for _, pixels in images])
    device = next(autoencoder.parameters()).device
    generator = torch.Generator(device).manual_seed(cfg.seed)
    samples = [autoencoder.encode(chunk.to(device)).sample(generator).float() for chunk in crops.split(cfg.batch_size)]
    return norm.normalise(torch.cat(samples))  # (N, nz, h, w)
