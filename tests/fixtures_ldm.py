"""Tiny stand-ins for the inputs of `train_ldm` and `eval_generation`: prepared shards of random images and a
randomly initialised autoencoder checkpoint in the VAE stages' format.

Registered for every test by `pytest_plugins` in conftest.py: request `ldm_assets` by name; import the tiny
configs (`tiny_ldm`, `TINY_UNET`, `LATENT_CHANNELS`) from this module.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.diffusion import DiffusionConfig
from models.ldm_unet import UNetConfig
from models.litevae_encoder import EncoderConfig, UNetSpec
from models.sd_vae import DecoderConfig
from pipeline.core.checkpoint import as_plain, save_checkpoint
from pipeline.config.schema import DataConfig, LDMConfig
from pipeline.data.prepare import prepare

LATENT_CHANNELS = 4
TINY_VAE = AutoencoderConfig(
    latent_channels=LATENT_CHANNELS,
    encoder=EncoderConfig(preset="S", extractor=UNetSpec(8, (1,)), aggregator=UNetSpec(8, (1,)), num_res_blocks=1),
    decoder=DecoderConfig(ch=8, ch_mult=(1, 1, 1, 2), num_res_blocks=1, mid_attention=False),
)
TINY_UNET = UNetConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                       num_heads=2)


def tiny_ldm(**overrides) -> LDMConfig:
    """32 px crops (4x4x4 latents), a 2-level UNet, statistics of 5 crops, 6 steps of batch 2 in-process, looks
    every 3 steps."""
    base = LDMConfig(unet=TINY_UNET, diffusion=DiffusionConfig(sampling_steps=2), resolution=32, cache_size=6,
                     stats_crops=5, steps=6, batch_size=2, lr=1e-3, ema_decay=0.9, num_workers=0, log_every=2,
                     val_every=3, checkpoint_every=3, val_images=2, grid_samples=3)
    return dataclasses.replace(base, **overrides)


@dataclass(frozen=True)
class LDMAssets:
    shards: Path
    autoencoder: Path


@pytest.fixture(scope="session")
def ldm_assets(tmp_path_factory) -> LDMAssets:
    root = tmp_path_factory.mktemp("ldm_assets")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        coarse = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)  # smooth, image-like content
        Image.fromarray(coarse).resize((48 + 4 * index, 40), Image.Resampling.BILINEAR).save(images / f"{index}.png")
    data = DataConfig(source="folder", path=str(images), storage_size=40, min_size=32, val_fraction=0.3,
                      shard_max_samples=2)
    prepare(data, root / "shards", root / "manifest.json", root / "sheet.png")

    torch.manual_seed(0)
    model = Autoencoder(TINY_VAE)
    autoencoder = root / "vae.pt"
    save_checkpoint(autoencoder, {"config": {"model": {"vae": as_plain(TINY_VAE)}}, "ema": model.state_dict(),
                                  "autoencoder": model.state_dict(), "step": 0})
    return LDMAssets(root / "shards", autoencoder)
