"""Autoencoder training losses (paper Eq. 1, §4.3, App. D.1): pure functions of networks and tensors.

Normalisation: every term is a mean per image value (per pixel and colour channel). L1, LPIPS, the wavelet and
Gaussian high-frequency terms are means; the KL is its per-sample sum over latent elements divided by the 3·H·W
values of an image. This is Stable Diffusion's autoencoder objective (CompVis `contperceptual.py`: per-sample sums
of the pixel NLL and of the KL, `sum(nll) / B + kl_weight * sum(kl) / B`) divided by 3·H·W, so `kl_weight` has
that recipe's meaning (1e-6) at every resolution: for an f=8 autoencoder the KL enters as
kl_weight · nz / 192 · (mean KL per latent element). The adversarial term is a mean over the discriminator's logits,
and `adv_weight` is stated relative to these per-value means.

The generator (autoencoder) step and the discriminator step are two functions, `autoencoder_loss` and
`discriminator_loss`; the caller owns the optimisers and decides whether to step the discriminator
(`adversarial_active`).

Losses are float32 even when the networks run under autocast. The pixel-space terms (L1, wavelet, Gaussian) run
with autocast off: it would run the Gaussian blur's convolutions in 16 bits whatever their inputs' dtype, an error
far above the differences these terms measure. LPIPS and the discriminator run under the caller's autocast.

Both adversarial players use both outputs of the UNet discriminator: each loss is the average of the
loss on the per-image logits and the loss on the per-pixel logits, so `adv_weight` keeps the scale it
has with a single-output (PatchGAN) discriminator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.wavelets import haar_pyramid

if TYPE_CHECKING:
    from models.autoencoder import AutoencoderOutput

AdversarialLoss = Literal["hinge", "non_saturating"]
PerceptualNet = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LossConfig:
    """The `loss` section of params.yaml: weights and options of every autoencoder loss term.

    l1_weight: weight of the pixel L1 reconstruction loss.
    perceptual: "lpips" requires an LPIPS network; "auto" uses it when its backbone weights could be
        loaded (the pipeline decides and warns), otherwise trains without it; "off" never uses it.
    perceptual_weight: weight of the LPIPS loss.
    kl_weight: lambda_reg of Eq. 1 on the KL term, in Stable Diffusion's normalisation (module doc): 1e-6 is SD's.
    adv_weight: constant lambda_adv of Eq. 1 (the paper's choice, §6), relative to the per-value means of the
        reconstruction terms; unused when adaptive_adv_weight.
    adv_loss: "hinge" or "non_saturating" (logistic) GAN loss, for both players (App. D.1, Table 16).
    adaptive_adv_weight: use Esser et al.'s adaptive lambda_adv (Eq. 2) instead of adv_weight (ablation).
    adaptive_delta: delta of Eq. 2.
    adaptive_max: upper clamp, in Stable Diffusion's units, of the ratio ||grad rec|| / (||grad adv|| + delta)
        before Eq. 2's 1/2 (Esser et al. and SD clamp it at 1e4; their reconstruction loss is a per-sample sum,
        3 H W times this module's). The weight used is therefore at most 0.5 * adaptive_max / (3 H W).
    disc_start: first step at which the adversarial loss is used and the discriminator trained; the
        paper gives none, 50k is the Stable Diffusion VAE's.
    wavelet_weight: weight of the Charbonnier loss on the Haar high-frequency sub-bands (§4.3); the paper
        gives no value.
    wavelet_levels: Haar levels whose H, V, D sub-bands enter the wavelet loss (averaged over levels).
    charbonnier_eps: eps of the Charbonnier loss sqrt(d^2 + eps^2).
    gaussian_weight: weight of the L1 loss on Gaussian high-passes x - blur(x) (§4.3); the paper gives
        no value.
    gaussian_sigma: standard deviation in pixels of the Gaussian blur (kernel radius ceil(3 sigma)).
    """

    l1_weight: float = field(default=1.0, metadata={"ge": 0.0})
    perceptual: Literal["auto", "lpips", "off"] = "auto"
    perceptual_weight: float = field(default=1.0, metadata={"ge": 0.0})
    kl_weight: float = field(default=1e-6, metadata={"ge": 0.0})
    adv_weight: float = field(default=0.1, metadata={"ge": 0.0})
    adv_loss: AdversarialLoss = "hinge"
    adaptive_adv_weight: bool = False
    adaptive_delta: float = field(default=1e-4, metadata={"gt": 0.0})
    adaptive_max: float = field(default=1e4, metadata={"gt": 0.0})
    disc_start: int = field(default=50_000, metadata={"ge": 0})
    wavelet_weight: float = field(default=0.1, metadata={"ge": 0.0})
    wavelet_levels: tuple[int, ...] = (1,)
    charbonnier_eps: float = field(default=1e-3, metadata={"gt": 0.0})
    gaussian_weight: float = field(default=0.1, metadata={"ge": 0.0})
    gaussian_sigma: float = field(default=1.0, metadata={"gt": 0.0})

    def __post_init__(self) -> None:
        if not self.wavelet_levels:
            raise ValueError("wavelet_levels: is empty; give at least one Haar level, e.g. [1]")
        if any(level < 1 for level in self.wavelet_levels):
            raise ValueError(f"wavelet_levels: levels must be >= 1, got {list(self.wavelet_levels)}")
        if len(set(self.wavelet_levels)) != len(self.wavelet_levels):
            raise ValueError(f"wavelet_levels: repeated level in {list(self.wavelet_levels)}; list each once")


def adversarial_active(step: int, cfg: LossConfig) -> bool:
    """Whether the generator gets the adversarial term and the discriminator is trained at `step`."""
    return step >= cfg.disc_start


# ---- reconstruction terms: x, x_hat (B, 3, H, W) in [-1, 1] -> scalar ----


def l1_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error: (B, C, H, W), (B, C, H, W) -> scalar."""
    return (x_hat - x).abs().mean()


def perceptual_loss(net: PerceptualNet, x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean perceptual distance, differentiable in `x_hat`.

    Args:
        net: `lpips.LPIPS` or any network mapping two (B, 3, H, W) images in [-1, 1] to (B, ...)
            distances; its own parameters should be frozen by the caller.
        x, x_hat: (B, 3, H, W) in [-1, 1].

    Returns:
        scalar.
    """
    return net(x_hat, x).mean()


def charbonnier(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Mean of sqrt((a - b)^2 + eps^2), a smooth L1: two same-shape tensors -> scalar."""
    return torch.sqrt((a - b).square() + eps**2).mean()


def wavelet_loss(x: Tensor, x_hat: Tensor, levels: tuple[int, ...], eps: float) -> Tensor:
    """Charbonnier loss between the Haar high-frequency sub-bands (H, V, D) of x and x_hat.

    Args:
        x, x_hat: (B, C, H, W), H and W divisible by 2**max(levels).
        levels: Haar levels whose sub-bands are compared; the per-level losses are averaged.
        eps: Charbonnier eps.

    Returns:
        scalar.
    """
    channels, height, width = x.shape[1:]
    depth = max(levels)
    if height % 2**depth or width % 2**depth:
        deepest = min(height & -height, width & -width).bit_length() - 1  # largest L with 2**L dividing both
        raise ValueError(
            f"loss.wavelet_levels: level {depth} needs crops divisible by 2**{depth} = {2**depth}, got "
            f"{height}x{width}; use levels up to {deepest} or a training resolution divisible by {2**depth}"
        )
    pyramid_x = haar_pyramid(x, depth)  # level l: (B, 4C, H/2^l, W/2^l), [LL, H, V, D]
    pyramid_x_hat = haar_pyramid(x_hat, depth)
    per_level = [
        charbonnier(pyramid_x[level - 1][:, channels:], pyramid_x_hat[level - 1][:, channels:], eps)
        for level in levels
    ]
    return torch.stack(per_level).mean()


def gaussian_kernel1d(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1D Gaussian of standard deviation `sigma`: (2r + 1,), r = ceil(3 sigma)."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma).square())
    return kernel / kernel.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Depthwise Gaussian blur with reflect padding: (B, C, H, W) -> (B, C, H, W).

    The 2D kernel is the outer product of `gaussian_kernel1d`, applied as two 1D passes over the
    reflect-padded image (equal to one 2D convolution). Needs H and W > ceil(3 sigma).
    """
    channels = x.shape[1]
    kernel = gaussian_kernel1d(sigma, x.dtype, x.device)
    radius = kernel.numel() // 2
    if radius >= min(x.shape[-2:]):
        raise ValueError(
            f"gaussian_sigma: {sigma} gives a kernel radius of {radius} pixels, which reflect padding "
            f"cannot fit in {x.shape[-2]}x{x.shape[-1]} images; lower gaussian_sigma"
        )
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")  # (B, C, H+2r, W+2r)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)  # (C, 1, 2r+1, 1)
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)  # (C, 1, 1, 2r+1)
    blurred = F.conv2d(padded, vertical, groups=channels)  # (B, C, H, W+2r)
    return F.conv2d(blurred, horizontal, groups=channels)  # (B, C, H, W)


def gaussian_highpass_loss(x: Tensor, x_hat: Tensor, sigma: float) -> Tensor:
    """L1 between x - blur(x) and x_hat - blur(x_hat): (B, C, H, W), (B, C, H, W) -> scalar."""
    return l1_loss(x - gaussian_blur(x, sigma), x_hat - gaussian_blur(x_hat, sigma))


# ---- adversarial terms: logits are (global (B,), pixel (B, 1, H, W)) from UNetDiscriminator ----


def generator_adversarial_loss(fake_logits: tuple[Tensor, Tensor], kind: AdversarialLoss) -> Tensor:
    """Generator loss on the discriminator's logits of reconstructions, averaged over both outputs.

    hinge: -mean(logits); non_saturating: mean(softplus(-logits)) = -mean(log sigmoid(logits)).
    Args: fake_logits: (global (B,), pixel (B, 1, H, W)). Returns: scalar.
    """
    outputs = [logits.float() for logits in fake_logits]
    if kind == "hinge":
        per_output = [-logits.mean() for logits in outputs]
    else:
        per_output = [F.softplus(-logits).mean() for logits in outputs]
    return torch.stack(per_output).mean()


def discriminator_adversarial_loss(
    real_logits: tuple[Tensor, Tensor], fake_logits: tuple[Tensor, Tensor], kind: AdversarialLoss
) -> Tensor:
    """Discriminator loss, averaged over both outputs (global and per-pixel).

    hinge: mean(relu(1 - real)) + mean(relu(1 + fake));
    non_saturating: mean(softplus(-real)) + mean(softplus(fake)), the logistic loss.
    Args: real_logits, fake_logits: (global (B,), pixel (B, 1, H, W)) each. Returns: scalar.
    """
    pairs = [(real.float(), fake.float()) for real, fake in zip(real_logits, fake_logits)]
    if kind == "hinge":
        per_output = [F.relu(1 - real).mean() + F.relu(1 + fake).mean() for real, fake in pairs]
    else:
        per_output = [F.softplus(-real).mean() + F.softplus(fake).mean() for real, fake in pairs]
    return torch.stack(per_output).mean()


def adaptive_adversarial_weight(
    rec_loss: Tensor, adv_loss: Tensor, last_layer: Tensor, delta: float, max_weight: float
) -> Tensor:
    """Esser et al.'s lambda_adv (Eq. 2): 0.5 ||grad rec|| / (||grad adv|| + delta), clamped to [0, max].

    Args:
        rec_loss, adv_loss: scalars whose graphs reach `last_layer` (kept for the later backward).
        last_layer: the decoder's last weight tensor, with requires_grad.
        delta: delta of Eq. 2.
        max_weight: upper clamp of the weight.

    Returns:
        detached scalar.

    The gradients are of the unscaled losses: under fp16 autocast they can underflow, one reason the
    paper (§6) prefers a constant weight in mixed precision.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)
    weight = 0.5 * rec_grad.norm() / (adv_grad.norm() + delta)
    return weight.clamp(0.0, max_weight).detach()


# ---- the two training steps ----


def _check_perceptual(cfg: LossConfig, perceptual_net: PerceptualNet | None) -> None:
    if cfg.perceptual == "lpips" and perceptual_net is None:
        raise ValueError("perceptual: is 'lpips' but no perceptual_net was given; build LPIPS or set 'auto'")
    if cfg.perceptual == "off" and perceptual_net is not None:
        raise ValueError("perceptual: is 'off' but a perceptual_net was given; pass None or enable it")


def autoencoder_loss(
    out: AutoencoderOutput,
    x: Tensor,
    cfg: LossConfig,
    step: int,
    discriminator: nn.Module | None = None,
    perceptual_net: PerceptualNet | None = None,
    last_layer: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Generator step loss (Eq. 1): weighted reconstruction terms + kl_weight KL + lambda_adv L_adv, every term
    normalised per image value (module doc).

    Args:
        out: autoencoder output; uses `image` (B, 3, H, W) in [-1, 1] and `kl` (scalar, per-sample sum).
        x: (B, 3, H, W) input images in [-1, 1].
        cfg: loss weights and options.
        step: global training step (compared with cfg.disc_start).
        discriminator: UNet discriminator, required once `adversarial_active(step, cfg)`; freeze its
            parameters during this step so only the autoencoder receives gradients.
        perceptual_net: LPIPS network, or None when the perceptual term is disabled.
        last_layer: the decoder's last weight, required with cfg.adaptive_adv_weight.

    Returns:
        total: scalar to backpropagate.
        logs: detached scalars: every term (unweighted, as it enters the total: `kl` per image value), the total,
            the adversarial weight used and,
            once the discriminator is active, its mean logits on the reconstructions.
    """
    _check_perceptual(cfg, perceptual_net)
    x, x_hat = x.float(), out.image.float()
    kl = out.kl.float() / x[0].numel()  # per-sample sum over latent elements -> per image value
    with torch.autocast(x.device.type, enabled=False):  # float32 blur convolutions (module doc)
        rec_terms = {
            "l1": (cfg.l1_weight, l1_loss(x, x_hat)),
            "wavelet": (cfg.wavelet_weight, wavelet_loss(x, x_hat, cfg.wavelet_levels, cfg.charbonnier_eps)),
            "gaussian": (cfg.gaussian_weight, gaussian_highpass_loss(x, x_hat, cfg.gaussian_sigma)),
        }
    if perceptual_net is not None:
        rec_terms["perceptual"] = (cfg.perceptual_weight, perceptual_loss(perceptual_net, x, x_hat))
    rec_loss = sum(weight * value for weight, value in rec_terms.values())
    logs = {name: value for name, (_, value) in rec_terms.items()} | {"rec": rec_loss, "kl": kl}

    if adversarial_active(step, cfg):
        adv, adv_weight, adv_logs = _adversarial_term(x_hat, rec_loss, cfg, step, discriminator, last_layer)
        logs |= adv_logs
    else:
        adv = adv_weight = torch.zeros((), device=x.device)
    total = rec_loss + cfg.kl_weight * kl + adv_weight * adv
    logs |= {"adv": adv, "adv_weight": adv_weight, "loss": total}
    return total, {name: value.detach() for name, value in logs.items()}


def _adversarial_term(
    x_hat: Tensor,
    rec_loss: Tensor,
    cfg: LossConfig,
    step: int,
    discriminator: nn.Module | None,
    last_layer: Tensor | None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Generator adversarial loss on (B, 3, H, W) reconstructions, its weight lambda_adv and the mean
    discriminator logits (global and per-pixel)."""
    if discriminator is None:
        raise ValueError(f"discriminator: required from step disc_start={cfg.disc_start} (step {step})")
    fake_logits = discriminator(x_hat)  # (B,), (B, 1, H, W)
    adv = generator_adversarial_loss(fake_logits, cfg.adv_loss)
    if not cfg.adaptive_adv_weight:
        adv_weight = torch.tensor(cfg.adv_weight, device=x_hat.device)
    elif last_layer is None:
        raise ValueError("adaptive_adv_weight: needs last_layer, the decoder's last weight tensor")
    else:
        # SD clamps its ratio, 3 H W times this module's (per-sample sums), at adaptive_max, then halves it
        max_weight = 0.5 * cfg.adaptive_max / x_hat[0].numel()
        adv_weight = adaptive_adversarial_weight(rec_loss, adv, last_layer, cfg.adaptive_delta, max_weight)
    logs = {"logits_fake_global": fake_logits[0].mean(), "logits_fake_pixel": fake_logits[1].mean()}
    return adv, adv_weight, logs


def discriminator_loss(
    discriminator: nn.Module, x_real: Tensor, x_fake: Tensor, cfg: LossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Discriminator step loss on real images and (detached) reconstructions.

    Real and fake go through the discriminator as one batch (one forward, one spectral-norm update).

    Args:
        discriminator: UNet discriminator returning (global (2B,), pixel (2B, 1, H, W)) logits.
        x_real: (B, 3, H, W) input images in [-1, 1].
        x_fake: (B, 3, H, W) reconstructions; detached here so no gradient reaches the autoencoder.
        cfg: uses cfg.adv_loss.

    Returns:
        loss: scalar.
        logs: detached scalars: the loss and the mean global / per-pixel logits on real and fake.
    """
    batch = x_real.shape[0]
    global_logits, pixel_logits = discriminator(torch.cat([x_real, x_fake.detach()]))  # (2B,), (2B, 1, H, W)
    real_logits = (global_logits[:batch], pixel_logits[:batch])
    fake_logits = (global_logits[batch:], pixel_logits[batch:])
    loss = discriminator_adversarial_loss(real_logits, fake_logits, cfg.adv_loss)
    logs = {
        "loss": loss,
        "logits_real_global": real_logits[0].mean(),
        "logits_real_pixel": real_logits[1].mean(),
        "logits_fake_global": fake_logits[0].mean(),
        "logits_fake_pixel": fake_logits[1].mean(),
    }
    return loss, {name: value.detach() for name, value in logs.items()}
