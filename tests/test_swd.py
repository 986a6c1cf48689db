"""Multi-scale sliced Wasserstein distance (Karras et al. 2018, App. D): near zero between halves of one image set
relative to two different sets, growing with added noise, symmetric, order independent, one value per level."""

import pytest
import torch

from pipeline.measures import swd as swd_module
from pipeline.measures.swd import laplacian_pyramid, sliced_wasserstein


def smooth_noise(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 3, 32, 32): 8x8 Gaussian noise upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 8, 8, generator=g)
    images = torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
    return ((images * 0.4).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)


def stripes(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 3, 32, 32): horizontal stripes of random period, phase and colour."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(32).float()[None, None, :, None]  # (1, 1, 32, 1)
    period = torch.randint(3, 9, (n, 1, 1, 1), generator=g).float()
    phase = torch.rand(n, 1, 1, 1, generator=g) * 6.3
    colour = torch.rand(n, 3, 1, 1, generator=g)
    images = colour * (torch.sin(2 * torch.pi * y / period + phase) > 0).float()  # (n, 3, 32, 1)
    return (images.expand(n, 3, 32, 32) * 255).round().to(torch.uint8)


def add_noise(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noisy = images.float() + std * 255 * torch.randn(images.shape, generator=g)
    return noisy.clamp(0, 255).round().to(torch.uint8)


def test_per_level_shapes_and_pyramid():
    levels = laplacian_pyramid(torch.randn(2, 3, 64, 64))
    assert [tuple(level.shape) for level in levels] == [(2, 3, 64, 64), (2, 3, 32, 32), (2, 3, 16, 16)]
    swd = sliced_wasserstein(smooth_noise(4, 0), smooth_noise(4, 1), directions=64)
    assert len(swd["per_level"]) == 2 and swd["mean"] == pytest.approx(sum(swd["per_level"]) / 2)
    with pytest.raises(ValueError, match="uint8"):
        sliced_wasserstein(smooth_noise(4, 0).float(), smooth_noise(4, 1).float())
    with pytest.raises(ValueError, match="equal shape"):
        sliced_wasserstein(smooth_noise(4, 0), smooth_noise(3, 1))


def test_same_set_near_zero_relative_to_different_sets():
    same = sliced_wasserstein(smooth_noise(32, 0), smooth_noise(32, 1))
    different = sliced_wasserstein(smooth_noise(32, 0), stripes(32, 1))
    assert same["mean"] < 0.1 * different["mean"]
    assert all(s < d for s, d in zip(same["per_level"], different["per_level"]))


def test_grows_monotonically_with_added_noise():
    real, other = smooth_noise(32, 0), smooth_noise(32, 1)
    scores = [sliced_wasserstein(real, add_noise(other, std, seed=2))["mean"] for std in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert scores == sorted(scores) and scores[-1] > 5 * scores[0], scores


def test_symmetric_deterministic_and_order_independent():
    a, b = smooth_noise(32, 0), stripes(32, 1)
    ab = sliced_wasserstein(a, b, seed=3)
    assert ab == sliced_wasserstein(a, b, seed=3)
    ba = sliced_wasserstein(b, a, seed=3)
    assert ba["per_level"] == pytest.approx(ab["per_level"], rel=1e-5)
    shuffled = sliced_wasserstein(a[torch.randperm(32)], b[torch.randperm(32)], seed=3)
    floor = sliced_wasserstein(smooth_noise(32, 0), smooth_noise(32, 1), seed=3)["mean"]
    # reordering only moves which random patch positions each image gets: a change at the scale of the floor
    assert abs(shuffled["mean"] - ab["mean"]) < max(floor, 0.05 * ab["mean"])


def test_odd_level_sizes_from_66x66_images():
    """66 -> 33 -> 17: each upsampled coarser level is cut to its odd finer level's size."""
    images = torch.nn.functional.interpolate(smooth_noise(4, 0).float(), size=66, mode="bilinear").round()
    images = images.to(torch.uint8)  # (4, 3, 66, 66)
    levels = laplacian_pyramid(images.float())
    assert [tuple(level.shape[-2:]) for level in levels] == [(66, 66), (33, 33), (17, 17)]
    swd = sliced_wasserstein(images, images, directions=16)
    assert swd["per_level"] == [0.0, 0.0, 0.0]
    assert sliced_wasserstein(images, add_noise(images, 0.1, seed=1), directions=16)["mean"] > 0


def test_images_are_processed_in_chunks_with_the_same_result(monkeypatch):
    a, b = smooth_noise(6, 0), stripes(6, 1)
    whole = sliced_wasserstein(a, b, seed=2, directions=32)
    monkeypatch.setattr(swd_module, "IMAGES_PER_CHUNK", 4)  # 6 images: a chunk of 4, then one of 2
    assert sliced_wasserstein(a, b, seed=2, directions=32)["per_level"] == pytest.approx(whole["per_level"], rel=1e-6)
