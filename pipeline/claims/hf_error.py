"""The high-frequency error of a trained autoencoder: how far its reconstructions' fine detail is from the input's.

No stage reports it, so the claims code measures it on each arm's checkpoint, on the crops its training stage
validated on (pipeline/training/vae_validation.validation_crops: the same fixed val crops as val/psnr):

    HF-L1 = mean over Haar levels l = 1..3 of mean |D_l(x) - D_l(x_hat)|

where D_l are the level-l detail sub-bands (horizontal, vertical, diagonal) of the orthonormal Haar transform
(models/wavelets.haar_pyramid), x the 8-bit crop (values 0-255) and x_hat the 8-bit posterior-mode
reconstruction of the EMA autoencoder. Levels 1-3 cover detail at 2, 4 and 8 px, i.e. everything finer than the
f = 8 latent grid. Each level's mean counts equally, so the coarser, fewer coefficients are not outvoted; but
the unit is no grey level: the orthonormal transform's LL band is twice the 2x2 block means, so each level
doubles the scale, and an error of the same grey levels weighs 2^(l-1) times more at level l than at level 1.
A ±1 grey-level checkerboard of period 2, 4 or 8 px against a flat image scores 2/9, 4/9 or 8/9: the measure
leans on the coarsest (8 px) detail. The wavelet loss is a Charbonnier penalty on level 1 only, so this measure
is not the loss itself. Lower is better.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.wavelets import haar_pyramid
from pipeline.core.checkpoint import load_autoencoder
from pipeline.data.shards import shard_urls
from pipeline.measures.quality import to_uint8
from pipeline.training.vae_validation import reconstruct, validation_crops

HF_LEVELS = 3  # detail finer than the latent grid (2^3 = 8 px)


def hf_l1(reference: torch.Tensor, test: torch.Tensor, levels: int = HF_LEVELS) -> float:
    """HF-L1 of two uint8 (B, 3, H, W) batches, H and W divisible by 2**levels."""
    pyramid_ref = haar_pyramid(reference.double(), levels)  # level l: (B, 12, H/2^l, W/2^l), [LL, H, V, D]
    pyramid_test = haar_pyramid(test.double(), levels)
    channels = reference.shape[1]
    per_level = [(ref[:, channels:] - out[:, channels:]).abs().mean() for ref, out in zip(pyramid_ref, pyramid_test)]
    return float(torch.stack(per_level).mean())


def checkpoint_hf_l1(checkpoint: Path, shards: Path, resolution: int, crops: int, batch_size: int = 4) -> float:
    """HF-L1 of the EMA autoencoder in `checkpoint` on the first `crops` val crops of `resolution` px."""
    model, _ = load_autoencoder(checkpoint)
    images = validation_crops(shard_urls(shards, "val"), resolution, crops)  # (N, 3, r, r) in [-1, 1]
    recon = reconstruct(model, images, batch_size, torch.device("cpu"))
    return hf_l1(to_uint8(images), to_uint8(recon))
