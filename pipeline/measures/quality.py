"""Image and distribution metrics as pure tensor functions: PSNR and SSIM on 8-bit RGB, and MMD with RBF kernels.

PSNR and SSIM follow the usual reporting convention for autoencoders (and the paper's tables): both images
are quantised to 8 bits first, the peak value is 255, and each image gets its own score (average them over
a dataset; an exact reconstruction scores PSNR_CAP, 100 dB, not +inf). SSIM is Wang et al. (2004): an 11x11
Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, per channel, averaged over the
positions where the whole window fits; this is `skimage.metrics.structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
PEAK = 255.0
PSNR_CAP = 100.0  # dB, the PSNR of an exact reconstruction (why: `psnr`)


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W), rounded as an 8-bit image file would store it."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W) in [-1, 1], the models' input range."""
    return images.float().div(127.5).sub(1.0)


def _check_pair(reference: Tensor, test: Tensor) -> None:
    if reference.dtype != torch.uint8 or test.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {reference.dtype} and {test.dtype}; quantise with to_uint8")
    if reference.shape != test.shape or reference.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) images of one shape, got {tuple(reference.shape)} "
                         f"and {tuple(test.shape)}")


def psnr(reference: Tensor, test: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image: uint8 (B, C, H, W) twice -> (B,) float64, at most PSNR_CAP.

    Identical images (MSE 0) would score +inf, which makes any mean over a dataset inf and is not valid JSON; every
    score is capped at PSNR_CAP = 100 dB instead. 100 dB is an MSE of 255^2 / 1e10 = 6.5e-6, one value off by one
    grey level among 154k (about a 226 x 226 RGB image): far above any lossy reconstruction (autoencoders score
    25-35 dB), so the cap replaces +inf and otherwise only lowers near-exact pairs of larger images (one value off
    by one in a 256 x 256 RGB image scores 101 dB). It is one number for every image size, so an exact image
    weighs the same in every mean.
    """
    _check_pair(reference, test)
    mse = (reference.double() - test.double()).square().flatten(1).mean(dim=1)  # (B,)
    return (10.0 * torch.log10(PEAK**2 / mse)).clamp(max=PSNR_CAP)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian, (size,) float64."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-offsets.square() / (2 * sigma**2))
    return window / window.sum()


def _filter(images: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of every channel: (B, C, H, W) -> (B, C, H - k + 1, W - k + 1)."""
    channels = images.shape[1]
    rows = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)  # (C, 1, 1, k)
    cols = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)  # (C, 1, k, 1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim(reference: Tensor, test: Tensor) -> Tensor:
    """Structural similarity of each image: uint8 (B, C, H, W) twice, H, W >= 11 -> (B,) float64 in [-1, 1]."""
    _check_pair(reference, test)
    if min(reference.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(reference.shape)}")
    x, y = reference.double(), test.double()
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x.square()
    var_y = _filter(y * y, window) - mu_y.square()
    cov = _filter(x * y, window) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Unbiased squared maximum mean discrepancy between two samples, one value per RBF bandwidth.

    k(a, b) = exp(-|a - b|^2 / (2 sigma^2)); MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j)
    - 2 mean_{i, j} k(x_i, y_j) (Gretton et al. 2012, Eq. 3). Unbiased, so it can be slightly negative
    when the two distributions are equal.

    Args:
        x: (n, D), n >= 2.
        y: (m, D), m >= 2.
        bandwidths: the kernel widths sigma, all > 0.

    Returns:
        (len(bandwidths),) float64.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected (n, D) and (m, D) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {n} and {m}")
    x, y = x.double(), y.double()
    sigma = torch.tensor(list(bandwidths), dtype=torch.float64, device=x.device).view(-1, 1, 1)  # (K, 1, 1)

    def kernels(a: Tensor, b: Tensor) -> Tensor:
        squared = torch.cdist(a, b).square().unsqueeze(0)  # (1, len(a), len(b))
        return torch.exp(-squared / (2 * sigma.square()))  # (K, len(a), len(b))

    def off_diagonal_mean(k: Tensor) -> Tensor:
        size = k.shape[-1]
        return (k.sum(dim=(1, 2)) - k.diagonal(dim1=1, dim2=2).sum(dim=1)) / (size * (size - 1))  # (K,)

    xx, yy = off_diagonal_mean(kernels(x, x)), off_diagonal_mean(kernels(y, y))
    xy = kernels(x, y).mean(dim=(1, 2))
    return xx + yy - 2 * xy
