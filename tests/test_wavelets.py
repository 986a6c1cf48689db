import ptwt
import pytest
import pywt
import torch

from models.wavelets import haar_dwt, haar_idwt, haar_pyramid


def ptwt_level(x: torch.Tensor, level: int) -> torch.Tensor:
    """The paper's HaarTransform.dwt (App. G): LL and the coarsest detail tuple, concatenated."""
    low, *high = ptwt.wavedec2(x, pywt.Wavelet("haar"), level=level, mode="symmetric")
    return torch.cat([low, *high[0]], dim=1)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_dwt_equals_ptwt(image, level):
    expected = ptwt_level(image, level)
    assert haar_dwt(image, level).shape == (2, 12, 48 // 2**level, 40 // 2**level)
    torch.testing.assert_close(haar_dwt(image, level), expected, rtol=0, atol=1e-12)


def test_pyramid_equals_per_level_dwt(image):
    pyramid = haar_pyramid(image, 3)
    assert len(pyramid) == 3
    for level, coeffs in enumerate(pyramid, start=1):
        torch.testing.assert_close(coeffs, ptwt_level(image, level), rtol=0, atol=1e-12)


def test_dwt_of_one_block_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64).view(1, 1, 2, 2)  # [[a, b], [c, d]]
    expected = torch.tensor([11.0, -5.0, -3.0, 1.0], dtype=torch.float64) / 2  # LL, H, V, D
    torch.testing.assert_close(haar_dwt(x, 1).flatten(), expected, rtol=0, atol=0)


def test_idwt_inverts_dwt_exactly(image):
    torch.testing.assert_close(haar_idwt(haar_dwt(image, 1)), image, rtol=0, atol=1e-12)
    coeffs = torch.randn(2, 12, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(haar_dwt(haar_idwt(coeffs), 1), coeffs, rtol=0, atol=1e-12)


def test_idwt_equals_ptwt_waverec(image):
    low, high_h, high_v, high_d = haar_dwt(image, 1).chunk(4, dim=1)
    expected = ptwt.waverec2([low, (high_h, high_v, high_d)], pywt.Wavelet("haar"))
    torch.testing.assert_close(haar_idwt(haar_dwt(image, 1)), expected, rtol=0, atol=1e-12)


def test_multilevel_reconstruction(image):
    level1, level2, level3 = haar_pyramid(image, 3)
    torch.testing.assert_close(haar_idwt(level3), level2[:, :3], rtol=0, atol=1e-12)
    torch.testing.assert_close(haar_idwt(level2), level1[:, :3], rtol=0, atol=1e-12)


def test_transform_is_orthonormal(image):
    energy = image.square().sum()
    torch.testing.assert_close(haar_dwt(image, 1).square().sum(), energy, rtol=1e-12, atol=0)


def test_channels_last_input_gives_same_result(image):
    channels_last = image.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(haar_dwt(channels_last, 2), haar_dwt(image, 2), rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="must be even"):
        haar_dwt(torch.randn(1, 3, 10, 9), 1)
    with pytest.raises(ValueError, match="must be even"):
        haar_dwt(torch.randn(1, 3, 12, 12), 3)  # 12 -> 6 -> 3: level 3 needs a multiple of 8
    with pytest.raises(ValueError, match="level"):
        haar_dwt(torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="4C"):
        haar_idwt(torch.randn(1, 6, 4, 4))
