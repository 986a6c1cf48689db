"""The latent statistics `train_ldm` normalises with, measured on its own training stream before it trains.

Every process encodes the first `ldm.stats_crops` crops of its training stream: the random crops at
`ldm.resolution` and the flips its first steps train on (pipeline/ldm/latent_source.py, `first_moments`). Per
channel it sums, over the crops, each crop's spatial mean of the posterior mean, of its square and of the
posterior variance; under torchrun these sums (and the number of crops) are all-reduced, so every rank derives
the same statistics from the crops of all ranks. They are the exact moments of the posterior samples the LDM
trains on, free of sampling noise (law of total variance, as in pipeline/evaluation/latent_analysis.py):
mean = mean of the posterior means, variance = variance of the posterior means + mean posterior variance;
per channel (as EDM2) and over all channels (the scalar scale of Rombach et al.'s LDM). The stream is a pure
function of the seed, so a resumed run recomputes the same statistics.

`ldm.latent_norm` picks the per-channel or the scalar map; either way the normalised latents have mean 0 and std
`ldm.diffusion.sigma_data`, the data scale EDM's preconditioning and noise distribution assume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.distributed
from torch import Tensor

from models.autoencoder import Autoencoder
from models.gaussian import DiagonalGaussian
from pipeline.config.schema import LDMConfig
from pipeline.core.distributed import Distributed
from pipeline.core.errors import UserError
from pipeline.core.precision import Precision
from pipeline.ldm.latent_source import LatentNorm, first_moments


@dataclass(frozen=True)
class LatentStats:
    """Moments of the posterior samples of `crops` training crops (over every process).

    channel_mean, channel_std: (nz,) per latent channel. mean, std: over all the latent values.
    """

    crops: int
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    mean: float
    std: float

    def norm(self, kind: Literal["per_channel", "scalar"], target_std: float) -> LatentNorm:
        """The map x = (z - mean) / std * target_std, with this channel's moments or the overall ones."""
        if kind == "per_channel":
            return LatentNorm(self.channel_mean, tuple(target_std / std for std in self.channel_std))
        return LatentNorm(self.mean, target_std / self.std)

    @classmethod
    def from_dict(cls, values: dict) -> LatentStats:
        """The inverse of `as_dict`."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    def as_dict(self) -> dict:
        """Plain numbers and lists, for a checkpoint (weights_only-loadable) and the metrics JSON."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def moment_sums(moments: Tensor) -> Tensor:
    """Float64 (4, nz) sums over the crops of posterior moments (B, 2 nz, h, w): row 0 the number of crops (the
    same in every column), rows 1-3 the sums of each crop's spatial mean of the posterior mean, of its square and
    of the posterior variance. Sums of batches and of processes add up."""
    posterior = DiagonalGaussian(moments.double())
    per_crop = torch.stack([posterior.mean, posterior.mean.square(), posterior.logvar.exp()], dim=1)  # (B, 3, nz, h, w)
    sums = per_crop.mean(dim=(3, 4)).sum(dim=0)  # (3, nz)
    return torch.cat([sums.new_full((1, sums.shape[1]), len(moments)), sums])  # (4, nz)


def statistics(sums: Tensor) -> LatentStats:
    """The moments of posterior samples from their (4, nz) `moment_sums`."""
    crops, mean_sum, square_sum, variance_sum = sums.double().cpu()
    channel_mean = mean_sum / crops  # (nz,)
    channel_var = square_sum / crops - channel_mean.square() + variance_sum / crops  # law of total variance
    mean = channel_mean.mean()  # every channel holds the same number of values
    variance = (channel_var + (channel_mean - mean).square()).mean()
    return LatentStats(crops=int(crops[0]), channel_mean=tuple(channel_mean.tolist()),
                       channel_std=tuple(channel_var.sqrt().tolist()), mean=float(mean), std=float(variance.sqrt()))


@torch.no_grad()
def stream_statistics(autoencoder: Autoencoder, urls: list[str], cfg: LDMConfig, precision: Precision,
                      dist: Distributed) -> LatentStats:
    """Statistics of the first crops of every process's training stream (module doc): `cfg.stats_crops` of them, or
    with `latents: cache` the `cfg.cache_size` crops the cache holds, so the statistics describe exactly what
    training sees. Every process must call this, and all get the same result."""
    count = cfg.cache_size if cfg.latents == "cache" else cfg.stats_crops
    batches = first_moments(autoencoder, urls, cfg, precision, count, "latent statistics", dist.is_main)
    sums = sum(moment_sums(moments) for moments in batches)
    if dist.enabled:
        sums = sums.to(dist.device)  # gloo reduces CPU tensors, NCCL CUDA ones
        torch.distributed.all_reduce(sums)
    stats = statistics(sums)
    if not all(math.isfinite(std) and std > 0 for std in (*stats.channel_std, stats.std)):
        raise UserError(
            f"latent statistics of the training stream are unusable (std per channel {stats.channel_std}): a NaN "
            "means the autoencoder's encoding overflowed (set ldm.amp: off), a zero std a channel that is constant "
            "(use ldm.latent_norm: scalar)"
        )
    return stats
