"""Tiled encode/decode of the exported autoencoder on a 768 x 1024 photo: the same reconstruction as untiled (PSNR
>= 40 dB between the two) and no seam (the error along tile borders is no larger than elsewhere).

The model is a tiny autoencoder trained here for a few seconds on crops of the photo: a randomly initialised one
reconstructs noise, whose error is the same everywhere and would hide a seam. Trained, its error follows the
image, as a real model's does, and the GroupNorm statistics that differ from tile to tile matter, as they do for
the pipeline's decoder."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_ldm import TINY_VAE
from PIL import Image
from skimage import data

from models.autoencoder import Autoencoder
from pipeline.export.autoencoder import LiteVAE
from pipeline.export.inputs import quantise
from pipeline.export.tiling import Tiling, apply_tiled, tile_starts
from pipeline.ldm.latent_source import LatentNorm
from pipeline.measures.quality import psnr

HEIGHT, WIDTH = 768, 1024
TILE_PIXELS = HEIGHT * WIDTH // 4  # tiles of 440 px, overlap 104: 2 x 3 tiles; GroupNorm statistics at half size
BAND = 4  # pixels either side of a tile border


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """scikit-image's coffee photo (400 x 600), centre-cropped to 4:3 and resized to 768 x 1024: (1, 3, H, W) uint8."""
    pixels = data.coffee()[:, 33:567]  # (400, 534, 3)
    resized = np.asarray(Image.fromarray(pixels).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def trained(photo) -> Autoencoder:
    """TINY_VAE after 80 Adam steps of L1 on random 64 px crops of the photo at half size."""
    torch.manual_seed(0)
    model = Autoencoder(TINY_VAE)
    small = F.interpolate(photo.float() / 127.5 - 1, scale_factor=0.5, mode="area")  # (1, 3, 384, 512)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        tops = torch.randint(0, 384 - 64, (4,), generator=generator)
        lefts = torch.randint(0, 512 - 64, (4,), generator=generator)
        batch = torch.cat([small[..., t:t + 64, l:l + 64] for t, l in zip(tops, lefts)])
        loss = (model(batch, sample=False).image - batch).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_raised_cosine_weights_blend_an_affine_map_exactly():
    x = torch.randn(1, 2, 40, 56, dtype=torch.float64)
    tiling = Tiling(16, 8)
    assert tile_starts(40, 16, 8) == [0, 8, 16, 24] and tile_starts(10, 16, 8) == [0]
    assert torch.allclose(apply_tiled(lambda t: 3 * t + 1, x, tiling, 1), 3 * x + 1)
    up = apply_tiled(lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2), x, tiling, 2)
    assert torch.allclose(up[..., ::2, ::2], x)
    with pytest.raises(ValueError, match="max_tile_pixels"):
        Tiling.for_budget(600, 8)


def test_tiled_reconstruction_matches_untiled_without_seams(photo, trained):
    norm = LatentNorm((0.0,), (1.0,))
    untiled = quantise(LiteVAE(trained, norm, None).reconstruct(photo))
    tiled_vae = LiteVAE(trained, norm, TILE_PIXELS)
    tiled = quantise(tiled_vae.reconstruct(photo))
    assert tiled.shape == untiled.shape == photo.shape
    assert tiled_vae.tiling == Tiling(440, 104)
    assert float(psnr(untiled, tiled)[0]) >= 40
    assert not torch.equal(tiled, untiled)  # tiles were used

    error = (tiled.double() - photo.double()).abs().mean(dim=(0, 1))  # (H, W)
    band = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    for length, axis in ((HEIGHT, 0), (WIDTH, 1)):
        starts = tile_starts(length, 440, 104)
        borders = {edge for start in starts for edge in (start, start + 440)} - {0, length}
        for edge in borders:
            index = slice(edge - BAND, edge + BAND)
            if axis == 0:
                band[index, :] = True
            else:
                band[:, index] = True
    band_error, other_error = float(error[band].mean()), float(error[~band].mean())
    assert band_error <= 1.5 * other_error, (band_error, other_error)
    print(f"tiled vs untiled PSNR {float(psnr(untiled, tiled)[0]):.2f} dB; error at borders {band_error:.3f}, "
          f"elsewhere {other_error:.3f}; vs input {float(psnr(photo, tiled)[0]):.2f} dB")
