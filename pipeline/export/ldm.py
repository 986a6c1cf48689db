"""The exported latent diffusion model as a plain object: a sampler with its autoencoder.

    ldm = load_ldm("exports/ldm")      # finds the autoencoder export its config.json names
    images = ldm.sample(16, seed=0)    # (16, 3, r, r) in [0, 1]

Sample i starts from noise seeded by (seed, i), as in `eval_generation`, so a sample does not depend on how many
are drawn with it; EDM's deterministic Heun sampler runs the export's `sampling_steps` unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from models.diffusion import DiffusionConfig
from models.ldm_unet import UNet, UNetConfig
from pipeline.config.parsing import parse
from pipeline.core.errors import UserError
from pipeline.export.autoencoder import DEFAULT_MAX_TILE_PIXELS, LiteVAE, load_autoencoder
from pipeline.export.layout import (
    AUTOENCODER_FORMAT,
    CONFIG,
    LATENT_STATS,
    LDM_FORMAT,
    load_weights_into,
    read_config,
)
from pipeline.ldm.latent_source import LatentNorm
from pipeline.ldm.sampling import LatentDiffusion, sample_latents


class LatentDiffusionModel:
    """An exported LDM: the EMA UNet as an EDM sampler (`diffusion`) and the autoencoder that decodes it."""

    def __init__(self, diffusion: LatentDiffusion, autoencoder: LiteVAE):
        self.diffusion, self.autoencoder = diffusion, autoencoder

    @property
    def resolution(self) -> int:
        """Side of the images it samples, in pixels."""
        return self.diffusion.resolution

    def to(self, device: str | torch.device) -> LatentDiffusionModel:
        self.diffusion.unet.to(device)
        self.autoencoder.to(device)
        return self

    def sample_latents(self, n: int, seed: int = 0, steps: int | None = None, start: int = 0) -> Tensor:
        """Normalised latents (n, nz, h, w) of samples start .. start + n - 1 (`steps` Heun steps; None: the
        export's)."""
        return sample_latents(self.diffusion, range(start, start + n), seed,
                              steps or self.diffusion.diffusion.sampling_steps)

    def sample(self, n: int, seed: int = 0, steps: int | None = None, start: int = 0) -> Tensor:
        """Images (n, 3, r, r) in [0, 1] of samples start .. start + n - 1, decoded with the normalisation the LDM
        trained with."""
        latents = self.sample_latents(n, seed, steps, start)
        return self.autoencoder.decode_raw(self.diffusion.norm.denormalise(latents))


def load_ldm(path: str | Path, autoencoder: str | Path | None = None, device: str | torch.device = "cpu",
             max_tile_pixels: int | None = DEFAULT_MAX_TILE_PIXELS) -> LatentDiffusionModel:
    """The LDM of an export folder (written by the `export_ldm` stage) with its autoencoder export: `autoencoder`,
    or else the folder its config.json names (relative to `path`), checked to hold the weights it was trained on."""
    path = Path(path)
    config = read_config(path, LDM_FORMAT)
    needed = config["autoencoder"]
    folder = Path(autoencoder) if autoencoder is not None else path / needed["export"]
    if read_config(folder, AUTOENCODER_FORMAT)["weights_sha256"] != needed["weights_sha256"]:
        raise UserError(f"{folder}: not the autoencoder {path} was trained with (weights SHA-256 differs from "
                        f"{path / CONFIG}'s autoencoder.weights_sha256); pass the matching export as autoencoder=")
    unet = UNet(parse(UNetConfig, config["unet"], f"{path / CONFIG}:unet"), config["latent_shape"][0])
    load_weights_into(unet, path, config)
    norm = json.loads((path / LATENT_STATS).read_text())["normalisation"]
    diffusion = LatentDiffusion(unet.eval().requires_grad_(False),
                                parse(DiffusionConfig, config["diffusion"], f"{path / CONFIG}:diffusion"),
                                tuple(config["latent_shape"]), LatentNorm(norm["shift"], norm["scale"]))
    return LatentDiffusionModel(diffusion, load_autoencoder(folder, max_tile_pixels=max_tile_pixels)).to(device)
