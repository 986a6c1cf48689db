"""The exported autoencoder as a plain object: images of any size in, latents the LDM expects out, and back.

    vae = load_autoencoder("exports/autoencoder")
    z = vae.encode("photo.jpg")        # (1, nz, ceil(H/8), ceil(W/8)) normalised latents (posterior mean)
    image = vae.decode(z)              # (1, 3, 8 h, 8 w) in [0, 1]; decode(z, size=(H, W)) crops back

Latents are in the LDM's normalised space, x = (z - shift) * scale with the export's `latent_stats.json` map
(per channel or scalar, to std sigma_data), which is the map `train_ldm` measured on the same training stream.
Images whose sides are not multiples of 8 are padded (edge pixels repeated) before encoding. Inputs larger than
`max_tile_pixels` are encoded and decoded in blended overlapping tiles (pipeline/export/tiling.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from models.autoencoder import DOWNSAMPLING, Autoencoder, AutoencoderConfig
from models.gaussian import DiagonalGaussian
from pipeline.config.parsing import parse
from pipeline.export.inputs import ImageInput, to_tensor
from pipeline.export.layout import AUTOENCODER_FORMAT, CONFIG, LATENT_STATS, load_weights_into, read_config
from pipeline.export.tiling import Tiling, apply_tiled, shared_group_norm_statistics, shrink_to_budget
from pipeline.ldm.latent_source import LatentNorm

DEFAULT_MAX_TILE_PIXELS = 1024 * 1024  # larger images are tiled; a decoder at ch 128 needs ~6 GB at 1024 x 1024


@dataclass(frozen=True)
class LatentDistribution:
    """The posterior over normalised latents, N(mean, std^2) per value; mean, std: (B, nz, h, w).

    image_size: (H, W) of the encoded images, before padding to a multiple of 8 (for `decode(..., size=)`).
    """

    mean: Tensor
    std: Tensor
    image_size: tuple[int, int]

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """A posterior sample (B, nz, h, w), as `train_ldm` draws its training latents."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        """The posterior mean (B, nz, h, w)."""
        return self.mean


class LiteVAE:
    """An exported autoencoder (EMA weights, eval mode) with its latent normalisation (module doc).

    latent_norm: the map from the autoencoder's own latents to the LDM's. tiling: the tiles inputs above
    max_tile_pixels are cut into (None: never tiled).
    """

    def __init__(self, model: Autoencoder, latent_norm: LatentNorm, max_tile_pixels: int | None):
        self.model = model.eval().requires_grad_(False)
        self.latent_norm = latent_norm
        self.max_tile_pixels = max_tile_pixels
        self.tiling = Tiling.for_budget(max_tile_pixels, DOWNSAMPLING) if max_tile_pixels else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> LiteVAE:
        self.model.to(device)
        return self

    def _tiled(self, pixels: int) -> bool:
        return self.tiling is not None and pixels > self.max_tile_pixels

    @torch.inference_mode()
    def _moments(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """(B, 2 nz, h, w) posterior moments of the padded image, and the image's (H, W)."""
        pixels = to_tensor(image).to(self.device)  # (B, 3, H, W) in [0, 1]
        height, width = pixels.shape[-2:]
        padded = F.pad(pixels * 2 - 1, (0, -width % DOWNSAMPLING, 0, -height % DOWNSAMPLING), mode="replicate")

        def encode(tile: Tensor) -> Tensor:
            posterior = self.model.encode(tile)
            return torch.cat([posterior.mean, posterior.logvar], dim=1)  # (B, 2 nz, h, w)

        if self._tiled(height * width):
            whole = shrink_to_budget(padded, self.max_tile_pixels, DOWNSAMPLING)
            with shared_group_norm_statistics(self.model.encoder, lambda: self.model.encode(whole)):
                return apply_tiled(encode, padded, self.tiling, 1 / DOWNSAMPLING), (height, width)
        return encode(padded), (height, width)

    def encode_distribution(self, image: ImageInput) -> LatentDistribution:
        """The posterior over normalised latents of an image file, PIL image, (H, W, 3) uint8 array or (B, 3, H, W)
        tensor (uint8 or float in [0, 1]) of any size."""
        moments, size = self._moments(image)
        posterior = DiagonalGaussian(moments)
        scale = torch.tensor(self.latent_norm.scale, device=moments.device).view(-1, 1, 1)  # (nz or 1, 1, 1)
        return LatentDistribution(self.latent_norm.normalise(posterior.mean), posterior.std * scale, size)

    def encode(self, image: ImageInput) -> Tensor:
        """Normalised latents (B, nz, ceil(H/8), ceil(W/8)), the posterior mean, of an image (see
        `encode_distribution` for what it accepts)."""
        return self.encode_distribution(image).mode()

    @torch.inference_mode()
    def decode_raw(self, z: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Latents in the autoencoder's own (unnormalised) space (B, nz, h, w) -> (B, 3, 8 h, 8 w) in [0, 1],
        cropped to `size` = (H, W) if given."""
        z = z.to(self.device)

        def decode(tile: Tensor) -> Tensor:
            return self.model.decode(tile)[0]  # (B, 3, 8 h, 8 w) in [-1, 1]

        height, width = z.shape[-2:]
        if self._tiled(height * width * DOWNSAMPLING**2):
            latent_tiling = Tiling(self.tiling.tile // DOWNSAMPLING, self.tiling.overlap // DOWNSAMPLING)
            whole = shrink_to_budget(z, self.max_tile_pixels // DOWNSAMPLING**2, 1)
            with shared_group_norm_statistics(self.model.decoder, lambda: decode(whole)):
                images = apply_tiled(decode, z, latent_tiling, DOWNSAMPLING)
        else:
            images = decode(z)
        if size is not None:
            images = images[..., :size[0], :size[1]]
        # clamp, then (x + 1) / 2: x 255 and rounding then gives eval_recon's 8-bit values bit for bit
        return (images.clamp(-1, 1) + 1) / 2

    def decode(self, latents: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Normalised latents (B, nz, h, w), as `encode` returns and the LDM samples -> images (B, 3, 8 h, 8 w) in
        [0, 1], cropped to `size` = (H, W) if given."""
        return self.decode_raw(self.latent_norm.denormalise(latents.to(self.device)), size)

    def reconstruct(self, image: ImageInput) -> Tensor:
        """Encode to the posterior mean and decode: (B, 3, H, W) in [0, 1], the input's size. Skips the
        normalisation's round trip, so it scores exactly what eval_recon scores."""
        moments, size = self._moments(image)
        return self.decode_raw(DiagonalGaussian(moments).mode(), size)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu",
                     max_tile_pixels: int | None = DEFAULT_MAX_TILE_PIXELS) -> LiteVAE:
    """The autoencoder of an export folder (written by the `export_vae` stage) on `device`; inputs of more than
    `max_tile_pixels` pixels are processed in tiles (None: never)."""
    path = Path(path)
    config = read_config(path, AUTOENCODER_FORMAT)
    model = Autoencoder(parse(AutoencoderConfig, config["autoencoder"], f"{path / CONFIG}:autoencoder"))
    load_weights_into(model, path, config)
    norm = json.loads((path / LATENT_STATS).read_text())["normalisation"]
    return LiteVAE(model, LatentNorm(norm["shift"], norm["scale"]), max_tile_pixels).to(device)
