import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import models.autoencoder as autoencoder_module
from models.autoencoder import Autoencoder, AutoencoderConfig
from models.gaussian import DiagonalGaussian
from models.litevae_encoder import EncoderConfig, UNetSpec
from models.sd_vae import Decoder, DecoderConfig
from models.smc import SMC
from models.wavelets import haar_dwt, haar_idwt

TINY_ENCODER = EncoderConfig(extractor=UNetSpec(8, (1, 2)), aggregator=UNetSpec(8, (1, 2)), num_res_blocks=1)


def tiny_decoder(**overrides) -> DecoderConfig:
    return DecoderConfig(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, **overrides)


def test_smc_equals_equation_3_by_hand():
    torch.manual_seed(0)
    smc = SMC(3, 2, kernel_size=3).double()
    with torch.no_grad():
        smc.scales.copy_(torch.tensor([0.5, -2.0, 1.5]))
        smc.gain.fill_(0.7)
    weight, scales, eps = smc.conv.weight.detach(), smc.scales.detach(), smc.eps
    expected_weight = torch.empty_like(weight)
    for j in range(2):  # w'_ijk = s_i w_ijk / sqrt(sum_{i,k} (s_i w_ijk)^2 + eps)
        norm = math.sqrt(sum((scales[i] * weight[j, i]).square().sum().item() for i in range(3)) + eps)
        for i in range(3):
            expected_weight[j, i] = scales[i] * weight[j, i] / norm
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    patches = F.unfold(0.7 * x, kernel_size=3, padding=1)  # (B, 3 * 9, 30): input times the gain
    expected = torch.einsum("jp,bpn->bjn", expected_weight.flatten(1), patches).view(2, 2, 5, 6)
    expected = expected + smc.conv.bias.detach().view(1, 2, 1, 1)
    torch.testing.assert_close(smc(x), expected, rtol=0, atol=1e-12)


def test_smc_weight_is_demodulated_per_output_channel():
    smc = SMC(16, 8)
    with torch.no_grad():
        smc.scales.uniform_(0.1, 3.0)
        smc.gain.fill_(2.5)
    norms = smc.modulated_weight().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((8,), 2.5))


def test_sd_decoder_default_param_count():
    with torch.device("meta"):
        decoder = Decoder(DecoderConfig(), latent_channels=4)
    assert sum(p.numel() for p in decoder.parameters()) == 49_490_179  # SD-VAE (kl-f8) decoder


@pytest.mark.parametrize("norm", ["group", "smc"])
def test_decoder_output_shapes(norm):
    latent = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        image = Decoder(tiny_decoder(norm=norm), 4)(latent)
        wavelet = Decoder(tiny_decoder(norm=norm, output_type="wavelet"), 4)(latent)
    assert image.shape == (2, 3, 48, 40)
    assert wavelet.shape == (2, 12, 24, 20)


def test_smc_decoder_has_group_norm_only_in_attention():
    decoder = Decoder(tiny_decoder(norm="smc"), 4)
    norms = [name for name, module in decoder.named_modules() if isinstance(module, torch.nn.GroupNorm)]
    assert norms == ["mid.1.norm"]
    assert isinstance(decoder.out[-1], SMC)


@pytest.mark.parametrize("output_type", ["image", "wavelet"])
def test_autoencoder_image_and_wavelet_agree(output_type):
    cfg = AutoencoderConfig(latent_channels=4, encoder=TINY_ENCODER, decoder=tiny_decoder(output_type=output_type))
    model = Autoencoder(cfg)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 24) * 2 - 1, sample=False)
        decoded_image, decoded_wavelet = model.decode(out.latent)  # the wavelet the decoder predicts, if it does
    assert out.image.shape == (2, 3, 32, 24)
    assert out.wavelet.shape == (2, 12, 16, 12)
    assert out.latent.shape == (2, 4, 4, 3)
    torch.testing.assert_close(out.latent, out.posterior.mean)
    torch.testing.assert_close(haar_idwt(out.wavelet) * 2, out.image)
    torch.testing.assert_close(decoded_image, out.image)
    torch.testing.assert_close(decoded_wavelet, out.wavelet)


def test_forward_computes_the_wavelet_only_when_it_is_read(monkeypatch):
    """No training loss reads AutoencoderOutput.wavelet, so the training forward skips its Haar transform."""
    levels = []

    def counting_haar_dwt(x, level):
        levels.append(level)
        return haar_dwt(x, level)

    monkeypatch.setattr(autoencoder_module, "haar_dwt", counting_haar_dwt)
    model = Autoencoder(AutoencoderConfig(latent_channels=4, encoder=TINY_ENCODER, decoder=tiny_decoder()))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert levels == []
    torch.testing.assert_close(out.wavelet, haar_dwt(out.image, 1) / 2)
    assert levels == [1]


@pytest.mark.parametrize(
    "norm, output_type, shared", [("group", "image", False), ("smc", "wavelet", True)]
)
def test_gradients_reach_every_parameter(norm, output_type, shared):
    encoder = EncoderConfig(
        extractor=TINY_ENCODER.extractor, aggregator=TINY_ENCODER.aggregator, num_res_blocks=1,
        shared_extractor=shared,
    )
    cfg = AutoencoderConfig(
        latent_channels=4, encoder=encoder, decoder=tiny_decoder(norm=norm, output_type=output_type),
        use_1x1_conv=True,
    )
    model = Autoencoder(cfg)
    out = model(torch.rand(2, 3, 16, 16) * 2 - 1, generator=torch.Generator().manual_seed(0))
    (out.image.square().mean() + out.kl).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert model.decoder_last_layer.shape[0] == (3 if output_type == "image" else 12)


def test_sampling_is_reproducible_with_a_generator():
    model = Autoencoder(AutoencoderConfig(latent_channels=4, encoder=TINY_ENCODER, decoder=tiny_decoder()))
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        first = model(image, generator=torch.Generator().manual_seed(3))
        second = model(image, generator=torch.Generator().manual_seed(3))
        third = model(image, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first.image, second.image, rtol=0, atol=0)
    assert not torch.equal(first.latent, third.latent)


def test_decoder_group_norm_keeps_four_channels_per_group():
    narrow = Decoder(DecoderConfig(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1), 12)
    norms = [m for m in narrow.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 4 for m in norms)
    with torch.device("meta"):
        paper = Decoder(DecoderConfig(), 12)  # SD-VAE's decoder keeps its 32 groups everywhere
    assert {m.num_groups for m in paper.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}


@pytest.mark.parametrize("output_type", ["image", "wavelet"])
def test_lowpass_shortcut_starts_as_the_blurred_block_means(output_type):
    cfg = AutoencoderConfig(latent_channels=4, encoder=TINY_ENCODER, decoder=tiny_decoder(output_type=output_type),
                            lowpass_shortcut=True)
    torch.manual_seed(0)
    model = Autoencoder(cfg)
    plain = Autoencoder(replace(cfg, lowpass_shortcut=False))
    plain.load_state_dict(model.state_dict())
    image = torch.rand(2, 3, 32, 24) * 2 - 1
    with torch.no_grad():
        out = model(image, sample=False)
        encoder_means = plain.encode(image).mean  # (2, 4, 4, 3)
    block_means = F.avg_pool2d(image, 8)  # (2, 3, 4, 3)
    torch.testing.assert_close(out.latent, torch.cat([encoder_means[:, :3] + block_means, encoder_means[:, 3:]], 1))
    # the zero-initialised output conv leaves the shortcut alone: the latent's first 3 channels, upsampled
    blurred = F.interpolate(out.latent[:, :3], scale_factor=8, mode="bilinear", align_corners=False)
    if output_type == "wavelet":  # bilinear to the LL band's half resolution, then constant 2x2 blocks
        half = F.interpolate(out.latent[:, :3], scale_factor=4, mode="bilinear", align_corners=False)
        blurred = F.interpolate(half, scale_factor=2, mode="nearest")
    torch.testing.assert_close(out.image, blurred)
    assert not torch.equal(out.image, plain(image, sample=False).image)


def test_posterior_logvar_init_shifts_only_the_log_variances():
    cfg = AutoencoderConfig(latent_channels=4, encoder=TINY_ENCODER, decoder=tiny_decoder())
    torch.manual_seed(0)
    plain = Autoencoder(cfg)
    shifted = Autoencoder(replace(cfg, posterior_logvar_init=-8.0))
    shifted.load_state_dict(plain.state_dict())
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        before, after = plain.encode(image), shifted.encode(image)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.logvar, before.logvar - 8.0)
    assert after.std.max() < 0.1 < before.std.min()  # an untrained sample stays near the mean


def test_lowpass_shortcut_needs_three_latent_channels():
    with pytest.raises(ValueError, match="^lowpass_shortcut: needs latent_channels >= 3"):
        AutoencoderConfig(latent_channels=2, lowpass_shortcut=True)


def test_decoder_must_upsample_by_8():
    with pytest.raises(ValueError, match="^decoder.ch_mult:"):
        AutoencoderConfig(decoder=DecoderConfig(ch_mult=(1, 2, 4)))


def test_gaussian_kl_by_hand():
    mean = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64).view(1, 1, 2, 2)
    logvar = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64).view(1, 1, 2, 2)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    pairs = zip(mean.flatten().tolist(), logvar.flatten().tolist(), strict=True)
    expected = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in pairs)
    assert posterior.kl().shape == (1,)
    assert posterior.kl().item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(posterior.std, torch.exp(0.5 * logvar))
    torch.testing.assert_close(posterior.mode(), mean)


def test_gaussian_sample_and_logvar_clamp():
    moments = torch.cat([torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 50.0)], dim=1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.max().item() == 20.0
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    sample = posterior.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(sample, posterior.mean + posterior.std * noise)
    with pytest.raises(ValueError, match="moments"):
        DiagonalGaussian(torch.zeros(1, 3, 4, 4))
