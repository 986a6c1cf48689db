"""PSNR, SSIM and MMD against hand computations and reference implementations."""

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pipeline.measures.quality import PSNR_CAP, from_uint8, mmd_rbf, psnr, ssim, to_uint8


def _images(seed: int, shape=(2, 3, 40, 48)) -> torch.Tensor:
    """Smooth random uint8 images with texture (SSIM is uninformative on white noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(shape[0], shape[1], shape[2] // 8, shape[3] // 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=shape[2:], mode="bicubic", align_corners=False)
    noise = 0.05 * torch.randn(shape, generator=generator)
    return ((smooth + noise).clamp(0, 1) * 255).round().to(torch.uint8)


def test_uint8_round_trip_is_exact():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(to_uint8(from_uint8(values)), values)
    assert to_uint8(torch.tensor([[[[-2.0, 2.0]]]])).tolist() == [[[[0, 255]]]]


def test_psnr_of_known_pairs():
    reference = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    test = reference.clone()
    test[0] += 10  # MSE 100
    test[1, 0] = 255  # one channel of three at full error: MSE 255^2 / 3
    values = psnr(reference, test)
    assert values[0].item() == pytest.approx(10 * math.log10(255**2 / 100))
    assert values[1].item() == pytest.approx(10 * math.log10(3))
    assert values[2].item() == PSNR_CAP  # identical


def test_exact_reconstructions_give_a_finite_capped_psnr_that_keeps_means_and_json_valid():
    flat = torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    off_by_one = flat.clone()
    off_by_one[1, 0, 0, 0] += 1  # MSE 1 / 768: 87 dB, below the cap
    values = psnr(flat, off_by_one)
    assert values[0].item() == PSNR_CAP == 100.0
    assert values[1].item() == pytest.approx(10 * math.log10(255**2 * 768))
    mean = float(values.mean())
    assert math.isfinite(mean) and json.loads(json.dumps({"psnr": mean}, allow_nan=False))["psnr"] == mean


def test_psnr_and_ssim_reject_float_or_mismatched_images():
    image = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        psnr(image.float(), image.float())
    with pytest.raises(ValueError, match="one shape"):
        ssim(image, image[..., :8])


@pytest.mark.parametrize("shape", [(2, 3, 40, 48), (1, 3, 11, 23)])
def test_ssim_matches_skimage(shape):
    reference, test = _images(0, shape), _images(1, shape)
    ours = ssim(reference, test)
    for i in range(shape[0]):
        expected = structural_similarity(
            reference[i].permute(1, 2, 0).numpy(), test[i].permute(1, 2, 0).numpy(), channel_axis=2,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        assert abs(ours[i].item() - expected) < 1e-3
    assert torch.allclose(ssim(reference, reference), torch.ones(shape[0], dtype=torch.float64))


def test_ssim_rejects_images_smaller_than_its_window():
    image = torch.zeros(1, 3, 10, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(image, image)


def _mmd_numpy(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """The unbiased MMD^2 written out with explicit loops."""
    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * sigma**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(0.5, 1.5, size=(7, 3))
    bandwidths = (0.5, 1.0, 2.0)
    ours = mmd_rbf(torch.from_numpy(x), torch.from_numpy(y), bandwidths)
    assert ours.shape == (3,)
    for value, sigma in zip(ours.tolist(), bandwidths):
        assert value == pytest.approx(_mmd_numpy(x, y, sigma), abs=1e-12)


def test_mmd_is_near_zero_for_equal_distributions_and_positive_for_a_shift():
    generator = torch.Generator().manual_seed(0)
    dim, n = 16, 400
    x, y = torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator)
    shifted = torch.randn(n, dim, generator=generator) + 0.5
    bandwidths = (2.0, 4.0, 8.0)
    same, different = mmd_rbf(x, y, bandwidths), mmd_rbf(x, shifted, bandwidths)
    assert same.abs().max() < 2e-3
    assert (different > 10 * same.abs()).all()
    assert (different > 0.02).all()


def test_mmd_needs_two_samples_per_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_rbf(torch.zeros(1, 4), torch.zeros(3, 4), (1.0,))
