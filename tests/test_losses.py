import math
from dataclasses import replace
from typing import NamedTuple

import lpips
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.discriminator import DiscriminatorConfig, UNetDiscriminator
from models.gaussian import DiagonalGaussian
from models.litevae_encoder import EncoderConfig, UNetSpec
from models.losses import (
    LossConfig,
    adaptive_adversarial_weight,
    adversarial_active,
    autoencoder_loss,
    discriminator_adversarial_loss,
    discriminator_loss,
    gaussian_blur,
    gaussian_highpass_loss,
    generator_adversarial_loss,
    l1_loss,
    wavelet_loss,
)
from models.sd_vae import DecoderConfig

# every term off: tests switch on the ones they check
OFF = LossConfig(
    l1_weight=0.0, perceptual="off", kl_weight=0.0, adv_weight=0.0, wavelet_weight=0.0, gaussian_weight=0.0,
    disc_start=0,
)
TINY_DISC = DiscriminatorConfig(ch=4, ch_mult=(1, 2))


class Reconstruction(NamedTuple):
    """The two AutoencoderOutput fields the losses read, for hand-chosen reconstructions."""

    image: Tensor
    kl: Tensor


def _output(image: Tensor, kl: float = 0.0) -> Reconstruction:
    return Reconstruction(image, torch.tensor(kl))


def _tiny_autoencoder() -> Autoencoder:
    return Autoencoder(
        AutoencoderConfig(
            latent_channels=2,
            encoder=EncoderConfig(
                extractor=UNetSpec(4, (1,)), aggregator=UNetSpec(4, (1,)), num_res_blocks=1
            ),
            decoder=DecoderConfig(ch=4, ch_mult=(1, 1, 1, 1), num_res_blocks=1, mid_attention=False),
        )
    )


# ---- reconstruction terms against hand computations ----


def test_l1_loss():
    x = torch.tensor([[[[0.0, 1.0], [-1.0, 0.5]]]])
    x_hat = torch.tensor([[[[0.5, 1.0], [1.0, 0.0]]]])
    assert l1_loss(x, x_hat).item() == pytest.approx((0.5 + 0.0 + 2.0 + 0.5) / 4)


def _haar_details(block: list[list[float]]) -> list[float]:
    (a, b), (c, d) = block
    return [(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]


def _charbonnier(values: list[float], eps: float) -> float:
    return sum(math.sqrt(v * v + eps * eps) for v in values) / len(values)


def test_wavelet_loss_level1_on_2x2():
    eps = 0.1
    x_hat = [[1.0, 2.0], [3.0, 5.0]]
    expected = _charbonnier(_haar_details(x_hat), eps)  # details (-2.5, -1.5, 0.5) against zeros
    got = wavelet_loss(torch.zeros(1, 1, 2, 2), torch.tensor([[x_hat]]), levels=(1,), eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_wavelet_loss_levels_1_and_2_on_4x4():
    eps = 0.01
    rng = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(2, 1, 1, 4, 4, dtype=torch.float64, generator=rng)
    diff = (x_hat - x)[0, 0].tolist()  # the transform is linear, so only the difference matters
    blocks = [[row[j : j + 2] for row in diff[i : i + 2]] for i in (0, 2) for j in (0, 2)]
    level1 = [v for block in blocks for v in _haar_details(block)]
    block_sums = [sum(map(sum, block)) / 2 for block in blocks]  # LL of level 1, row-major
    level2 = _haar_details([block_sums[:2], block_sums[2:]])
    expected = (_charbonnier(level1, eps) + _charbonnier(level2, eps)) / 2
    got = wavelet_loss(x, x_hat, levels=(1, 2), eps=eps)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_wavelet_loss_ignores_low_frequencies():
    x = torch.randn(1, 3, 8, 8)
    assert wavelet_loss(x, x + 0.7, levels=(1, 2), eps=1e-3).item() == pytest.approx(1e-3)


def _blur_by_hand(image: np.ndarray, sigma: float) -> np.ndarray:
    """2D Gaussian kernel from its formula, reflect padding, explicit sliding window on (H, W)."""
    radius = math.ceil(3 * sigma)
    offsets = range(-radius, radius + 1)
    kernel = np.array([[math.exp(-(i * i + j * j) / (2 * sigma**2)) for j in offsets] for i in offsets])
    kernel /= kernel.sum()
    padded = np.pad(image, radius, mode="reflect")
    height, width = image.shape
    return np.array(
        [[(padded[i : i + 2 * radius + 1, j : j + 2 * radius + 1] * kernel).sum() for j in range(width)]
         for i in range(height)]
    )


def test_gaussian_blur_and_highpass_loss_by_hand():
    sigma = 0.8  # radius 3
    rng = np.random.default_rng(1)
    x, x_hat = rng.normal(size=(2, 2, 6, 5)), rng.normal(size=(2, 2, 6, 5))
    blur_x = np.stack([[_blur_by_hand(x[b, c], sigma) for c in range(2)] for b in range(2)])
    blur_x_hat = np.stack([[_blur_by_hand(x_hat[b, c], sigma) for c in range(2)] for b in range(2)])
    expected = np.abs((x - blur_x) - (x_hat - blur_x_hat)).mean()

    x_t, x_hat_t = torch.from_numpy(x), torch.from_numpy(x_hat)
    np.testing.assert_allclose(gaussian_blur(x_t, sigma).numpy(), blur_x, rtol=1e-10)
    assert gaussian_highpass_loss(x_t, x_hat_t, sigma).item() == pytest.approx(expected, rel=1e-10)


def test_gaussian_blur_too_wide_for_image():
    with pytest.raises(ValueError, match="gaussian_sigma"):
        gaussian_blur(torch.randn(1, 3, 4, 4), sigma=2.0)


# ---- adversarial terms against hand computations ----

FAKE = (torch.tensor([1.0, -2.0]), torch.tensor([0.5, -0.5, 3.0, 1.0]).view(2, 1, 1, 2))
REAL = (torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.0, 1.5, 4.0]).view(2, 1, 1, 2))


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_generator_hinge_and_non_saturating():
    fake_global, fake_pixel = [t.flatten().tolist() for t in FAKE]
    hinge = (-_mean(fake_global) - _mean(fake_pixel)) / 2  # (0.5 - 1.0) / 2 = -0.25
    logistic = (_mean(_softplus(-v) for v in fake_global) + _mean(_softplus(-v) for v in fake_pixel)) / 2
    assert generator_adversarial_loss(FAKE, "hinge").item() == pytest.approx(hinge)
    assert generator_adversarial_loss(FAKE, "non_saturating").item() == pytest.approx(logistic, rel=1e-6)


def test_discriminator_hinge_and_non_saturating():
    (real_g, real_p), (fake_g, fake_p) = [[t.flatten().tolist() for t in pair] for pair in (REAL, FAKE)]

    def hinge(real, fake):
        return _mean(max(0.0, 1 - v) for v in real) + _mean(max(0.0, 1 + v) for v in fake)

    def logistic(real, fake):
        return _mean(_softplus(-v) for v in real) + _mean(_softplus(v) for v in fake)

    # global: (0 + 0.5) / 2 + (2 + 0) / 2 = 1.25; pixel: (2 + 1 + 0 + 0) / 4 + (1.5 + 0.5 + 4 + 2) / 4 = 2.75
    expected_hinge = (hinge(real_g, fake_g) + hinge(real_p, fake_p)) / 2
    assert expected_hinge == pytest.approx((1.25 + 2.75) / 2)
    assert discriminator_adversarial_loss(REAL, FAKE, "hinge").item() == pytest.approx(expected_hinge)
    assert discriminator_adversarial_loss(REAL, FAKE, "non_saturating").item() == pytest.approx(
        (logistic(real_g, fake_g) + logistic(real_p, fake_p)) / 2, rel=1e-6
    )


def test_adaptive_weight_by_hand():
    weight = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    rec = (weight * torch.tensor([3.0, 4.0, 0.0])).sum()  # gradient (3, 4, 0), norm 5
    adv = (weight * torch.tensor([0.0, 0.0, 2.0])).sum()  # gradient (0, 0, 2), norm 2
    got = adaptive_adversarial_weight(rec, adv, weight, delta=1e-4, max_weight=1e4)
    assert got.item() == pytest.approx(0.5 * 5 / (2 + 1e-4))
    assert not got.requires_grad
    flat = (weight * 0.0).sum()  # zero adversarial gradient: the ratio is clamped
    assert adaptive_adversarial_weight(rec, flat, weight, delta=1e-4, max_weight=100.0).item() == 100.0


def test_adaptive_weight_in_autoencoder_loss_matches_autograd():
    torch.manual_seed(0)
    ae = _tiny_autoencoder()
    disc = UNetDiscriminator(TINY_DISC).eval()  # eval: no power-iteration step between compared forwards
    cfg = replace(OFF, l1_weight=1.0, gaussian_weight=0.5, adaptive_adv_weight=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = ae(x)
    last = ae.decoder_last_layer
    _, logs = autoencoder_loss(out, x, cfg, step=0, discriminator=disc, last_layer=last)

    rec = l1_loss(x, out.image) + 0.5 * gaussian_highpass_loss(x, out.image, cfg.gaussian_sigma)
    adv = generator_adversarial_loss(disc(out.image), "hinge")
    (rec_grad,) = torch.autograd.grad(rec, last, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(adv, last)
    expected = 0.5 * rec_grad.norm() / (adv_grad.norm() + cfg.adaptive_delta)
    assert logs["adv_weight"].item() == pytest.approx(expected.item(), rel=1e-5)
    expected_total = logs["rec"] + logs["adv_weight"] * logs["adv"]
    assert logs["loss"].item() == pytest.approx(expected_total.item(), rel=1e-6)


@pytest.mark.parametrize("clamp_binds", [False, True])
def test_adaptive_weight_is_stable_diffusions_divided_by_the_image_size(clamp_binds):
    """CompVis contperceptual.py: d = ||grad nll|| / (||grad g|| + delta) with nll a per-sample sum, clamped to
    [0, 1e4] (adaptive_max), times disc_weight 0.5. The project's weight times 3 H W must be exactly that, with the
    clamp binding or not."""
    torch.manual_seed(0)
    ae = _tiny_autoencoder()
    disc = UNetDiscriminator(TINY_DISC).eval()  # eval: no power-iteration step between compared forwards
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = ae(x)
    last = ae.decoder_last_layer
    sd_nll = (x - out.image).abs().sum() / len(x)  # logvar 0, no LPIPS
    g_loss = generator_adversarial_loss(disc(out.image), "hinge")
    (nll_grad,) = torch.autograd.grad(sd_nll, last, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last, retain_graph=True)
    sd_ratio = nll_grad.norm() / (g_grad.norm() + 1e-4)
    adaptive_max = sd_ratio.item() / 2 if clamp_binds else 1e4
    sd_weight = 0.5 * sd_ratio.clamp(0.0, adaptive_max)

    cfg = replace(OFF, l1_weight=1.0, adaptive_adv_weight=True, adaptive_delta=1e-4, adaptive_max=adaptive_max)
    _, logs = autoencoder_loss(out, x, cfg, step=0, discriminator=disc, last_layer=last)
    assert logs["adv_weight"].item() * 3 * 16 * 16 == pytest.approx(sd_weight.item(), rel=1e-5)


def test_adaptive_weight_needs_last_layer():
    x = torch.rand(1, 3, 8, 8)
    cfg = replace(OFF, adaptive_adv_weight=True)
    with pytest.raises(ValueError, match="last_layer"):
        autoencoder_loss(_output(x), x, cfg, step=0, discriminator=UNetDiscriminator(TINY_DISC))


# ---- autoencoder_loss: weighting, perceptual path, discriminator start ----


def test_total_is_the_weighted_sum_of_the_terms():
    cfg = replace(OFF, l1_weight=1.0, kl_weight=0.01, wavelet_weight=0.3, gaussian_weight=0.2)
    x, x_hat = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    disc = UNetDiscriminator(TINY_DISC)
    total, logs = autoencoder_loss(_output(x_hat, kl=5.0), x, cfg, step=0, discriminator=disc)
    expected = logs["l1"] + 0.3 * logs["wavelet"] + 0.2 * logs["gaussian"] + 0.01 * 5.0 / (3 * 8 * 8)
    assert logs["l1"].item() == pytest.approx(l1_loss(x, x_hat).item())
    assert logs["kl"].item() == pytest.approx(5.0 / (3 * 8 * 8))  # per image value
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(not value.requires_grad for value in logs.values())


@pytest.mark.parametrize("latent_channels", [4, 12])
def test_loss_is_stable_diffusions_objective_divided_by_the_image_size_at_every_resolution(latent_channels):
    """CompVis contperceptual.py (logvar 0, no GAN): sum(|x - x_hat| + p_weight * lpips) / B + kl_weight * sum(kl) / B,
    with the KL summed per sample over the latent. The project's total must be exactly that over 3 H W, the one
    constant that makes every term a per-value mean, at 128 and 256 px alike."""
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    cfg = replace(OFF, l1_weight=1.0, perceptual="lpips", perceptual_weight=0.5, kl_weight=1e-6)
    ratios = []
    for size in (128, 256):
        torch.manual_seed(size)
        x, x_hat = torch.rand(2, 3, size, size) * 2 - 1, torch.rand(2, 3, size, size) * 2 - 1
        posterior = DiagonalGaussian(torch.randn(2, 2 * latent_channels, size // 8, size // 8))
        kl_per_sample = 0.5 * (posterior.mean.square() + posterior.logvar.exp() - 1 - posterior.logvar)
        kl_per_sample = kl_per_sample.flatten(1).sum(1)  # (B,)
        p_loss = net(x_hat, x)  # (B, 1, 1, 1), broadcast over every pixel as in contperceptual.py
        rec = (x - x_hat).abs() + cfg.perceptual_weight * p_loss  # (B, 3, H, W)
        sd_loss = rec.sum() / len(x) + cfg.kl_weight * kl_per_sample.sum() / len(x)
        total, _ = autoencoder_loss(_output(x_hat, kl=posterior.kl().mean().item()), x, cfg, step=0,
                                    discriminator=UNetDiscriminator(TINY_DISC), perceptual_net=net)
        ratios.append(sd_loss.item() / total.item())
        assert ratios[-1] == pytest.approx(3 * size * size, rel=1e-5)
    assert ratios[1] / ratios[0] == pytest.approx(4, rel=1e-5)  # one constant per resolution, the pixel count


def test_lpips_gives_gradient_to_reconstruction():
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    x_hat = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    cfg = replace(OFF, perceptual="lpips")
    disc = UNetDiscriminator(TINY_DISC)
    total, logs = autoencoder_loss(_output(x_hat), x, cfg, step=0, discriminator=disc, perceptual_net=net)
    total.backward()
    assert logs["perceptual"].item() == pytest.approx(net(x_hat, x).mean().item(), rel=1e-5)
    assert logs["perceptual"].item() > 0
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0


@pytest.mark.parametrize("mode, net", [("lpips", None), ("off", lambda a, b: (a - b).abs())])
def test_perceptual_mode_and_network_must_agree(mode, net):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="perceptual"):
        autoencoder_loss(_output(x), x, replace(OFF, perceptual=mode), step=0, perceptual_net=net)


def test_auto_perceptual_without_network_trains_without_it():
    x = torch.rand(1, 3, 8, 8)
    _, logs = autoencoder_loss(_output(x), x, replace(OFF, perceptual="auto", disc_start=5), step=0)
    assert "perceptual" not in logs


def test_no_adversarial_term_before_disc_start():
    cfg = replace(OFF, l1_weight=1.0, adv_weight=0.5, disc_start=3)
    disc = UNetDiscriminator(TINY_DISC).eval()  # eval: no power-iteration step between compared forwards
    torch.manual_seed(0)
    x, x_hat = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert not adversarial_active(2, cfg) and adversarial_active(3, cfg)

    before, logs_before = autoencoder_loss(_output(x_hat), x, cfg, step=2, discriminator=disc)
    assert before.item() == pytest.approx(logs_before["l1"].item())
    assert logs_before["adv"].item() == 0.0 and logs_before["adv_weight"].item() == 0.0
    assert "logits_fake_global" not in logs_before

    after, logs_after = autoencoder_loss(_output(x_hat), x, cfg, step=3, discriminator=disc)
    global_logits, pixel_logits = disc(x_hat)
    expected_adv = -(global_logits.mean() + pixel_logits.mean()) / 2
    assert logs_after["adv_weight"].item() == 0.5
    assert logs_after["adv"].item() == pytest.approx(expected_adv.item(), rel=1e-5)
    assert logs_after["logits_fake_global"].item() == pytest.approx(global_logits.mean().item(), rel=1e-5)
    assert after.item() == pytest.approx((logs_after["l1"] + 0.5 * expected_adv).item(), rel=1e-5)


def test_discriminator_required_once_active():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="discriminator"):
        autoencoder_loss(_output(x), x, replace(OFF, disc_start=0), step=0)


def test_pixel_terms_see_no_high_frequencies_in_a_constant_shift_under_bf16_autocast():
    """Autocast runs conv2d in bf16 whatever its inputs' dtype: the Gaussian blur would then report ~1e-3."""
    cfg = replace(OFF, wavelet_weight=1.0, gaussian_weight=1.0, disc_start=1)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, logs = autoencoder_loss(_output(x + 0.5), x, cfg, step=0)
    assert logs["gaussian"].item() < 1e-6
    assert logs["wavelet"].item() == pytest.approx(cfg.charbonnier_eps, rel=1e-3)  # Charbonnier of zero details


def test_losses_are_float32_under_autocast():
    disc = UNetDiscriminator(TINY_DISC)
    x = torch.rand(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ae_total, _ = autoencoder_loss(_output(x.bfloat16()), x, LossConfig(disc_start=0), 0, disc)
        disc_total, _ = discriminator_loss(disc, x, x.bfloat16(), LossConfig())
    assert ae_total.dtype == disc_total.dtype == torch.float32


# ---- the two optimiser steps touch only their own network ----


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(module: nn.Module, before: dict[str, Tensor]) -> list[bool]:
    return [not torch.equal(p, before[name]) for name, p in module.named_parameters()]


def test_discriminator_step_updates_only_the_discriminator():
    torch.manual_seed(0)
    ae, disc = _tiny_autoencoder(), UNetDiscriminator(TINY_DISC)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    ae_before, disc_before = _snapshot(ae), _snapshot(disc)
    x = torch.rand(2, 3, 16, 16) * 2 - 1

    # logistic loss: at initialisation the hinge loss's gradients on the pixel-head bias cancel exactly
    loss, logs = discriminator_loss(disc, x, ae(x).image, LossConfig(adv_loss="non_saturating"))
    loss.backward()
    opt.step()

    assert all(_changed(disc, disc_before))
    assert not any(_changed(ae, ae_before))
    assert all(p.grad is None for p in ae.parameters())
    logit_keys = {f"logits_{kind}_{head}" for kind in ("real", "fake") for head in ("global", "pixel")}
    assert set(logs) == {"loss"} | logit_keys
    assert logs["loss"].item() == pytest.approx(loss.item())


def test_autoencoder_step_with_frozen_discriminator_updates_only_the_autoencoder():
    torch.manual_seed(0)
    ae, disc = _tiny_autoencoder(), UNetDiscriminator(TINY_DISC)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    ae_before, disc_before = _snapshot(ae), _snapshot(disc)
    x = torch.rand(2, 3, 16, 16) * 2 - 1

    disc.requires_grad_(False)
    cfg = LossConfig(perceptual="off", disc_start=0)
    loss, logs = autoencoder_loss(ae(x), x, cfg, step=0, discriminator=disc)
    loss.backward()
    opt.step()

    assert logs["adv"].item() != 0.0
    assert all(_changed(ae, ae_before))
    assert not any(_changed(disc, disc_before))
    assert all(p.grad is None for p in disc.parameters())


# ---- config ----


def test_wavelet_levels_too_deep_for_the_crops_name_the_key():
    x = torch.rand(1, 3, 24, 24)
    cfg = replace(OFF, wavelet_weight=1.0, wavelet_levels=(1, 4), disc_start=1)
    message = r"loss\.wavelet_levels: level 4 needs crops divisible by 2\*\*4 = 16, got 24x24; use levels up to 3"
    with pytest.raises(ValueError, match=message):
        autoencoder_loss(_output(x), x, cfg, step=0)


@pytest.mark.parametrize("levels", [(), (0,), (1, 1)])
def test_bad_wavelet_levels(levels):
    with pytest.raises(ValueError, match="wavelet_levels"):
        LossConfig(wavelet_levels=levels)
