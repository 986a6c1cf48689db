"""Diffusion math after EDM: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models" (NeurIPS 2022), as pure functions of a network.

Noisy data is x = x0 + sigma * n with n ~ N(0, I). The network F (here `models.ldm_unet.UNet`) is
wrapped by the preconditioning of EDM Table 1 into a denoiser
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
trained with lognormal sigmas and the weight lambda(sigma) that makes the loss of every sigma start at
unit scale, and sampled with the deterministic Heun solver of EDM Algorithm 1 on the rho-schedule.

`net` below is any callable F(x_in: (B, C, H, W), c_noise: (B,)) -> (B, C, H, W).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

Network = Callable[[Tensor, Tensor], Tensor]


# EDM's data scale and the training noise distribution tuned for it (EDM Table 1, "Ours").
EDM_SIGMA_DATA, EDM_P_MEAN, EDM_P_STD = 0.5, -1.2, 1.2


@dataclass(frozen=True)
class DiffusionConfig:
    """EDM noise distribution, preconditioning and sampling schedule (defaults: EDM Table 1).

    `sigma_data` is the standard deviation of the data the model sees: `train_ldm` normalises its latents to
    exactly this std, as EDM2 (Karras et al. 2024) scales its latents to 0.5. The noise levels
    (p_mean, p_std, sigma_min, sigma_max) are in the data's units, and EDM's were tuned for sigma_data 0.5:
    with sigma_data s the same noise relative to the data is ln(sigma) ~ N(p_mean + ln(s / 0.5), p_std^2).
    Hence the rule below: another sigma_data with EDM's p_mean and p_std unchanged is refused, since it would
    shift every noise level by ln(s / 0.5) relative to the data without anyone asking for it.
    """

    sigma_min: float = field(default=0.002, metadata={"gt": 0.0})
    sigma_max: float = field(default=80.0, metadata={"gt": 0.0})
    sigma_data: float = field(default=EDM_SIGMA_DATA, metadata={"gt": 0.0})
    p_mean: float = EDM_P_MEAN
    p_std: float = field(default=EDM_P_STD, metadata={"gt": 0.0})
    rho: float = field(default=7.0, metadata={"gt": 0.0})
    sampling_steps: int = field(default=18, metadata={"ge": 1})

    def __post_init__(self) -> None:
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max: got {self.sigma_max}, not above sigma_min={self.sigma_min}; "
                "the sampler runs from sigma_max down to sigma_min"
            )
        if self.sigma_data != EDM_SIGMA_DATA and (self.p_mean, self.p_std) == (EDM_P_MEAN, EDM_P_STD):
            raise ValueError(
                f"sigma_data: got {self.sigma_data} with EDM's p_mean {EDM_P_MEAN} and p_std {EDM_P_STD}, which "
                f"were tuned for sigma_data {EDM_SIGMA_DATA}: relative to the data every noise level would shift by "
                f"ln({self.sigma_data} / {EDM_SIGMA_DATA}). Keep sigma_data {EDM_SIGMA_DATA} (the latents are "
                f"normalised to std sigma_data), or set p_mean for this sigma_data "
                f"({EDM_P_MEAN + math.log(self.sigma_data / EDM_SIGMA_DATA):.3f} is EDM's distribution)"
            )


def _per_sample(values: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), broadcastable against x of shape (B, C, H, W)."""
    return values.reshape((-1,) + (1,) * (x.dim() - 1))  # (B, 1, 1, 1)


def preconditioning(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM Table 1 ("Ours") scalings for noise levels `sigma` (any shape, > 0).

    Returns:
        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
        c_out  = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2),
        c_in   = 1 / sqrt(sigma^2 + sigma_data^2),
        c_noise = ln(sigma) / 4,
        each shaped like `sigma`.
    """
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def denoise(net: Network, x: Tensor, sigma: Tensor, cfg: DiffusionConfig) -> Tensor:
    """The preconditioned denoiser D(x; sigma) of EDM eq. 7.

    Args:
        net: the raw network F(x_in: (B, C, H, W), c_noise: (B,)) -> (B, C, H, W).
        x: (B, C, H, W) noisy data x0 + sigma * n.
        sigma: (B,) noise level of each sample, > 0.
        cfg: supplies sigma_data.

    Returns:
        (B, C, H, W) estimate of the clean data x0.
    """
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, cfg.sigma_data)
    c_skip, c_out, c_in = (_per_sample(c, x) for c in (c_skip, c_out, c_in))
    return c_skip * x + c_out * net(c_in * x, c_noise)


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 = 1 / c_out^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def denoising_loss(net: Network, x0: Tensor, sigma: Tensor, noise: Tensor, cfg: DiffusionConfig) -> Tensor:
    """EDM's weighted denoising error lambda(sigma) * |D(x0 + sigma n; sigma) - x0|^2 for given draws.

    The squared error is averaged over the non-batch dimensions (EDM sums them; the mean only
    rescales the loss by C*H*W and keeps learning rates independent of the latent size). With data
    of variance sigma_data^2 and a zero-output network the expected loss is 1 at every sigma.

    Args:
        net: the raw network F, see `denoise`.
        x0: (B, C, H, W) clean latents.
        sigma: (B,) noise level of each sample, > 0.
        noise: (B, C, H, W) standard normal draws n.
        cfg: supplies sigma_data.

    Returns:
        (B,) per-sample weighted loss.
    """
    noisy = x0 + noise * _per_sample(sigma, x0)  # (B, C, H, W)
    squared_error = (denoise(net, noisy, sigma, cfg) - x0).square().flatten(1).mean(1)  # (B,)
    return loss_weight(sigma, cfg.sigma_data) * squared_error


def edm_loss(
    net: Network, x0: Tensor, cfg: DiffusionConfig, generator: torch.Generator | None = None
) -> Tensor:
    """EDM training loss (eq. 8, Table 1): `denoising_loss` at random draws.

    sigma is lognormal, ln(sigma) ~ N(p_mean, p_std^2), and n ~ N(0, I), one draw per sample.

    Args:
        net: the raw network F, see `denoise`.
        x0: (B, C, H, W) clean latents.
        cfg: noise distribution and sigma_data.
        generator: source of the sigma and noise draws (on x0's device), for reproducible losses.

    Returns:
        (B,) per-sample weighted loss; average it for the training objective.
    """
    batch = x0.shape[0]
    rnd_normal = torch.randn(batch, generator=generator, device=x0.device, dtype=x0.dtype)
    sigma = (rnd_normal * cfg.p_std + cfg.p_mean).exp()  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return denoising_loss(net, x0, sigma, noise, cfg)


def sigma_schedule(steps: int, cfg: DiffusionConfig) -> Tensor:
    """EDM eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0.

    Args:
        steps: N >= 1 solver steps; N = 1 is the single step sigma_max -> 0.
        cfg: sigma_min, sigma_max, rho.

    Returns:
        (N + 1,) float64 decreasing from sigma_max (to sigma_min when N > 1), ending in 0.
    """
    if steps < 1:
        raise ValueError(f"steps: got {steps}; the sampler needs at least 1 step")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)  # (N,); [0.] when N = 1
    max_root, min_root = cfg.sigma_max ** (1 / cfg.rho), cfg.sigma_min ** (1 / cfg.rho)
    sigmas = (max_root + ramp * (min_root - max_root)) ** cfg.rho  # (N,)
    return torch.cat([sigmas, sigmas.new_zeros(1)])  # (N + 1,)


@torch.no_grad()
def edm_sample(
    net: Network, noise: Tensor, cfg: DiffusionConfig, steps: int | None = None
) -> Tensor:
    """Deterministic Heun sampler of EDM Algorithm 1 (no stochastic churn).

    Solves the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from sigma_max to 0 with
    2N - 1 network evaluations: Heun steps, and an Euler step into sigma = 0. The result is a
    deterministic function of `noise`; put `net` in eval mode first (dropout).

    Args:
        net: the raw network F, see `denoise`.
        noise: (B, C, H, W) standard normal draws; the ODE runs in their dtype and device.
        cfg: schedule and preconditioning.
        steps: number of solver steps N; defaults to cfg.sampling_steps.

    Returns:
        (B, C, H, W) samples x0.
    """
    sigmas = sigma_schedule(cfg.sampling_steps if steps is None else steps, cfg).tolist()
    batch = noise.shape[0]

    def slope(x: Tensor, sigma: float) -> Tensor:
        sigma_batch = torch.full((batch,), sigma, dtype=noise.dtype, device=noise.device)  # (B,)
        return (x - denoise(net, x, sigma_batch, cfg)) / sigma

    x = noise * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = slope(x, sigma)
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next == 0:
            x = x_euler
        else:
            x = x + (sigma_next - sigma) * 0.5 * (d + slope(x_euler, sigma_next))
    return x
