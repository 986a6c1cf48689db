"""The latents `train_ldm` learns: posteriors of the frozen fine-tuned autoencoder, in the normalised space
x = (z - shift) * scale (per channel or for all channels) whose statistics `train_ldm` measures on its own training
stream before it trains (pipeline/ldm/latent_stats.py).

A training batch comes from one of two sources, both yielding the posterior moments (B, 2 nz, h, w) from which
the trainer draws the latent (a posterior sample, as LDM's `get_first_stage_encoding` does):
- `OnTheFlyLatents` (the default) encodes each batch of the training stream (pipeline/data/shards.py: random crops
  and flips, fresh every step) as it arrives. This is what a light encoder makes affordable: augmentation stays
  possible, and nothing is precomputed (paper §1).
- `CachedLatents` encodes the first `cache_size` crops of the same stream once, before training, and then draws
  every batch uniformly with replacement from them, from a generator seeded by (seed, rank, step) for the stream
  `Stream.CACHE_INDEX` (independent of the step's posterior and diffusion noise): crops and
  flips are frozen at caching time, as in the precomputed-latents workflow. Under DDP each rank caches the crops
  of its own shards.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from models.autoencoder import Autoencoder
from models.gaussian import DiagonalGaussian
from pipeline.config.schema import LDMConfig
from pipeline.core.errors import MissingInputError
from pipeline.core.precision import Precision
from pipeline.core.seeds import Stream, stream_seed
from pipeline.data.shards import center_crop, load_images, to_model_range, train_loader


def _floats(values: float | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values) if isinstance(values, Sequence) else (float(values),)


@dataclass(frozen=True)
class LatentNorm:
    """The affine map from the autoencoder's latents z to the LDM's: x = (z - shift) * scale, channel by channel.

    shift, scale: nz values (one per latent channel) or one value for every channel; given as numbers, lists or
    tuples, stored as tuples of floats (a checkpoint holds them as lists, see `as_dict`). `train_ldm` sets
    shift = mean and scale = sigma_data / std (`LatentStats.norm`).
    """

    shift: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        shift, scale = _floats(self.shift), _floats(self.scale)
        if len(shift) != len(scale) or not all(s > 0 for s in scale):
            raise ValueError(f"latent norm: expected as many shifts as positive scales, got {shift} and {scale}")
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "scale", scale)

    def _per_channel(self, values: tuple[float, ...], z: Tensor) -> Tensor:
        if len(values) not in (1, z.shape[1]):
            raise ValueError(f"latent norm of {len(values)} channels applied to latents of shape {tuple(z.shape)}")
        return torch.tensor(values, dtype=z.dtype, device=z.device).view(-1, 1, 1)  # (nz or 1, 1, 1)

    def normalise(self, z: Tensor) -> Tensor:
        """(B, nz, h, w) latents -> (B, nz, h, w) with mean 0 and std sigma_data (per channel or overall)."""
        return (z - self._per_channel(self.shift, z)) * self._per_channel(self.scale, z)

    def denormalise(self, x: Tensor) -> Tensor:
        """(B, nz, h, w) normalised latents -> (B, nz, h, w) latents the decoder takes."""
        return x / self._per_channel(self.scale, x) + self._per_channel(self.shift, x)

    def as_dict(self) -> dict[str, list[float]]:
        """{"shift": [...], "scale": [...]}: plain lists for a checkpoint (weights_only-loadable)."""
        return {"shift": list(self.shift), "scale": list(self.scale)}


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


def first_moments(autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, precision: Precision, count: int,
                  desc: str, show_progress: bool) -> Iterator[Tensor]:
    """Posterior moments (b, 2 nz, h, w), b <= batch_size, of the first `count` crops of this process's training
    stream (the crops and flips its first steps train on), batch by batch, on the autoencoder's device."""
    device = next(autoencoder.parameters()).device
    stream = train_loader(urls, cfg.resolution, cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
    batches = itertools.islice(stream, math.ceil(count / cfg.batch_size))
    for index, images in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not show_progress)):
        # Whole batches are encoded, as training encodes them, and only the moments cut to `count`.
        moments = posterior_moments(autoencoder, images.to(device, non_blocking=True), precision)
        yield moments[:count - index * cfg.batch_size]  # (b, 2 nz, h, w)


class CachedLatents:
    """Iterator of posterior moments (B, 2 nz, h, w) drawn from a cache encoded once (module doc)."""

    def __init__(self, autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, precision: Precision,
                 rank: int, start_step: int):
        self.batch_size, self.seed, self.rank, self.step = cfg.batch_size, cfg.seed, rank, start_step
        self.device = next(autoencoder.parameters()).device
        parts = first_moments(autoencoder, urls, cfg, precision, cfg.cache_size, "caching latents", rank == 0)
        self.moments = torch.cat([part.cpu() for part in parts])  # (cache_size, 2 nz, h, w)

    def __iter__(self) -> CachedLatents:
        return self

    def __next__(self) -> Tensor:
        generator = torch.Generator().manual_seed(stream_seed(Stream.CACHE_INDEX, self.seed, self.rank, self.step))
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
def held_out_latents(autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, norm: LatentNorm,
                     precision: Precision) -> Tensor:
    """Normalised latents (N, nz, h, w) of the central `cfg.resolution` crops of the first `cfg.val_images` val
    images (N may be fewer when the val split is smaller): posterior samples of moments encoded under `precision`,
    like the training latents, drawn from a generator seeded by `cfg.seed` for `Stream.HELD_OUT_POSTERIOR`."""
    images = load_images(urls, cfg.val_images)
    if not images:
        raise MissingInputError(f"{urls}: the val shards hold no images; re-run prepare")
    crops = torch.stack([to_model_range(center_crop(pixels, cfg.resolution)) for _, pixels in images])
    device = next(autoencoder.parameters()).device
    generator = torch.Generator(device).manual_seed(stream_seed(Stream.HELD_OUT_POSTERIOR, cfg.seed))
    samples = [DiagonalGaussian(posterior_moments(autoencoder, chunk.to(device), precision)).sample(generator)
               for chunk in crops.split(cfg.batch_size)]
    return norm.normalise(torch.cat(samples))  # (N, nz, h, w)
