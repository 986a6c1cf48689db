"""Sampling a trained latent diffusion model, and loading one from its `train_ldm` checkpoint.

Sample i starts from N(0, I) noise drawn by a generator seeded with (seed, i), so a sample depends on the seed and
its index only, not on the batch size; EDM's deterministic Heun sampler maps the noise to a normalised latent,
which is denormalised with the map it was trained with (z = x / scale + shift, per channel or scalar), decoded by
the frozen EMA autoencoder and quantised to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.autoencoder import DOWNSAMPLING, Autoencoder
from models.diffusion import DiffusionConfig, edm_sample
from models.ldm_unet import UNet
from pipeline.config.parsing import ConfigError, parse
from pipeline.config.schema import LDMConfig
from pipeline.core.checkpoint import file_sha256, load_autoencoder, load_checkpoint
from pipeline.core.grid import labelled_grid
from pipeline.core.seeds import derived_seed
from pipeline.ldm.latent_source import LatentNorm
from pipeline.measures.quality import to_uint8

GRID_COLUMNS = 8


@dataclass
class LatentDiffusion:
    """What sampling needs: the raw EDM network F (EMA weights), its EDM config and the latent space."""

    unet: UNet
    diffusion: DiffusionConfig
    latent_shape: tuple[int, int, int]  # (nz, h, w)
    norm: LatentNorm

    @property
    def resolution(self) -> int:
        return self.latent_shape[-1] * DOWNSAMPLING


def initial_noise(indices: range, shape: tuple[int, ...], seed: int) -> Tensor:
    """(len(indices), *shape) float32 standard normal noise; row k comes from a generator seeded with
    (seed, indices[k]), so it does not depend on which other samples share its batch."""
    draws = [torch.randn(shape, generator=torch.Generator().manual_seed(derived_seed(seed, i)))
             for i in indices]
    return torch.stack(draws)  # (len(indices), *shape)


@torch.no_grad()
def sample_latents(model: LatentDiffusion, indices: range, seed: int, steps: int) -> Tensor:
    """Normalised latents (len(indices), nz, h, w) of samples `indices`, with `steps` Heun steps."""
    device = next(model.unet.parameters()).device
    noise = initial_noise(indices, model.latent_shape, seed).to(device)
    return edm_sample(model.unet, noise, model.diffusion, steps)


@torch.no_grad()
def generate(model: LatentDiffusion, autoencoder: Autoencoder, indices: range, seed: int, steps: int) -> Tensor:
    """uint8 (len(indices), 3, r, r) images of samples `indices`, on the CPU (r = 8 x the latent size)."""
    images, _ = autoencoder.decode(model.norm.denormalise(sample_latents(model, indices, seed, steps)))
    return to_uint8(images).cpu()


def sample_grid(images: Tensor, what: str, seed: int) -> bytes:
    """PNG bytes of uint8 (N, 3, r, r) images, samples 0..N-1 of `seed`, in rows of up to 8: each row is labelled
    with its sample indices, each column with the offset in the row, and the title says `what` they are and how
    sample i's noise was seeded."""
    tiles = list(images.permute(0, 2, 3, 1).numpy())  # N x (r, r, 3)
    columns = min(GRID_COLUMNS, len(tiles))
    starts = range(0, len(tiles), columns)
    ends = [min(start + columns, len(tiles)) - 1 for start in starts]
    row_labels = [f"samples {start}-{end}" if end > start else f"sample {start}" for start, end in zip(starts, ends)]
    title = f"{what}. Sample i (row start + column) starts from noise seeded by (seed {seed}, i)"
    return labelled_grid([tiles[start:start + columns] for start in starts], title, row_labels,
                         [f"+{column}" for column in range(columns)])


def load_ldm(path: Path) -> tuple[LatentDiffusion, str]:
    """The EMA UNet of a `train_ldm` checkpoint as a sampler (eval mode, frozen, on the CPU), and the SHA-256 of
    the autoencoder checkpoint whose latents it learnt."""
    state = load_checkpoint(path)
    config = state["config"]
    cfg = parse(LDMConfig, config["ldm"], f"{path}:config.ldm")
    latent_shape = tuple(config["latent_shape"])
    unet = UNet(cfg.unet, latent_shape[0])
    unet.load_state_dict(state["ema"])
    model = LatentDiffusion(unet.eval().requires_grad_(False), cfg.diffusion, latent_shape,
                            LatentNorm(**state["latent_norm"]))
    return model, config["autoencoder_sha256"]


def load_sampler(ldm_path: Path, autoencoder_path: Path) -> tuple[LatentDiffusion, Autoencoder]:
    """The trained LDM and the EMA autoencoder that decodes its latents, checked to be the one it learnt."""
    model, expected = load_ldm(ldm_path)
    if file_sha256(autoencoder_path) != expected:
        raise ConfigError(f"{autoencoder_path}: not the autoencoder checkpoint {ldm_path} was trained on (SHA-256 "
                          "differs); re-run train_ldm (dvc repro train_ldm)")
    autoencoder, _ = load_autoencoder(autoencoder_path)
    return model, autoencoder
