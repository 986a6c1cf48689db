from dataclasses import replace

import pytest
import torch

from models.autoencoder import build_encoder
from models.litevae_encoder import (
    PAPER_ENCODER_PARAMS_M,
    EncoderConfig,
    LiteVAEEncoder,
    UNetSpec,
)
from models.sd_vae import SDEncoderSpec, SDVAEEncoder
from models.wavelets import haar_dwt

TINY = EncoderConfig(extractor=UNetSpec(8, (1, 2)), aggregator=UNetSpec(8, (1, 2)), num_res_blocks=1)


def param_count(cfg: EncoderConfig, latent_channels: int) -> int:
    with torch.device("meta"):  # shapes only: no allocation, no initialisation
        return sum(p.numel() for p in build_encoder(cfg, latent_channels).parameters())


@pytest.mark.parametrize("preset", ["S", "B", "M", "L"])
def test_litevae_param_counts_match_table_2(preset):
    count = param_count(EncoderConfig(preset=preset), latent_channels=12)
    assert count / 1e6 == pytest.approx(PAPER_ENCODER_PARAMS_M[preset], rel=0.01)


def test_sd_vae_encoder_param_count():
    assert param_count(EncoderConfig(kind="sd_vae"), latent_channels=4) == 34_163_592  # paper: 34.16M


def test_vae_small_is_a_downscaled_sd_vae_near_litevae_b():
    count = param_count(EncoderConfig(kind="vae_small"), latent_channels=4)
    assert count / 1e6 == pytest.approx(PAPER_ENCODER_PARAMS_M["vae_small"], rel=0.03)


def test_shared_extractor_removes_two_extractors():
    separate = param_count(EncoderConfig(preset="B"), 12)
    shared = param_count(EncoderConfig(preset="B", shared_extractor=True), 12)
    with torch.device("meta"):
        one_extractor = sum(p.numel() for p in LiteVAEEncoder(EncoderConfig(preset="B"), 12).extractors[0].parameters())
    assert separate - shared == 2 * one_extractor


@pytest.mark.parametrize("size", [(128, 128), (256, 256), (64, 96), (512, 512)])
def test_litevae_output_shape(size):
    encoder = LiteVAEEncoder(TINY, latent_channels=4)
    with torch.no_grad():
        moments = encoder(torch.rand(1, 3, *size) * 2 - 1)
    assert moments.shape == (1, 8, size[0] // 8, size[1] // 8)
    assert torch.isfinite(moments).all()


def test_preset_b_encoder_on_a_64px_image():
    encoder = build_encoder(EncoderConfig(preset="B"), latent_channels=12)
    with torch.no_grad():
        moments = encoder(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert moments.shape == (1, 24, 8, 8)
    assert torch.isfinite(moments).all()


def test_shared_extractor_encoder_runs_one_module_on_every_level():
    encoder = LiteVAEEncoder(replace(TINY, shared_extractor=True), latent_channels=4)
    calls = []
    encoder.extractors[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    with torch.no_grad():
        moments = encoder(torch.rand(1, 3, 64, 96))
    assert len(encoder.extractors) == 1
    assert calls == [(1, 12, 32, 48), (1, 12, 16, 24), (1, 12, 8, 12)]
    assert moments.shape == (1, 8, 8, 12)


def test_extractors_see_the_scaled_wavelet_levels():
    encoder = LiteVAEEncoder(TINY, latent_channels=4)
    seen = []
    for extractor in encoder.extractors:
        extractor.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        encoder(image)
    for level, coeffs in enumerate(seen, start=1):
        torch.testing.assert_close(coeffs, haar_dwt(image, level) / 2**level)


@pytest.mark.parametrize("size", [(128, 128), (64, 96)])
def test_sd_vae_encoder_output_shape(size):
    encoder = SDVAEEncoder(SDEncoderSpec(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1), latent_channels=4)
    with torch.no_grad():
        moments = encoder(torch.rand(1, 3, *size))
    assert moments.shape == (1, 8, size[0] // 8, size[1] // 8)


@pytest.mark.parametrize("kind", ["litevae", "sd_vae"])
def test_bad_image_size_raises(kind):
    if kind == "litevae":
        encoder = LiteVAEEncoder(TINY, latent_channels=4)
    else:
        encoder = SDVAEEncoder(SDEncoderSpec(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1), latent_channels=4)
    with pytest.raises(ValueError, match="divisible by 8"):
        encoder(torch.rand(1, 3, 100, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder(torch.rand(1, 4, 64, 64))


def test_litevae_only_fields_rejected_for_other_kinds():
    with pytest.raises(ValueError, match="^shared_extractor:"):
        EncoderConfig(kind="sd_vae", shared_extractor=True)
    with pytest.raises(ValueError, match="^extractor:"):
        EncoderConfig(kind="vae_small", extractor=UNetSpec(8, (1,)))

