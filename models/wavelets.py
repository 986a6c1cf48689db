"""Orthonormal 2D Haar wavelet transform on (B, C, H, W) tensors.

For a 2x2 block [[a, b], [c, d]] the four level-1 coefficients are

    LL = (a + b + c + d) / 2    H = (a + b - c - d) / 2
    V  = (a - b + c - d) / 2    D = (a - b - c + d) / 2

which is exactly `ptwt.wavedec2(x, pywt.Wavelet("haar"), level=1)` (same order, sign and scale;
no boundary mode matters because the sizes are even). Sub-bands are concatenated sub-band-major,
[LL, H, V, D] with C channels each, as in the paper's `HaarTransform.dwt` (App. G).

The transform is butterfly arithmetic on the four 2x2 phases of a pixel-unshuffle: 2 adds per
output value, exact in any dtype (no filter tensors), and faster on CPU than both ptwt and a
stride-2 convolution with the four 2x2 Haar kernels.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_even(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(
            f"{what}: height and width must be even for a Haar step, got {height}x{width}; "
            "crop or pad the image to a multiple of 2**level"
        )


def _haar_step(x: Tensor) -> Tensor:
    """One Haar analysis step: (B, C, H, W) -> (B, 4C, H/2, W/2), sub-band-major [LL, H, V, D]."""
    _check_even(x, "haar_dwt")
    batch, channels, height, width = x.shape
    # one pixel_unshuffle copy makes the four phases contiguous planes; arithmetic on
    # stride-2 slices of a contiguous tensor is several times slower
    phases = F.pixel_unshuffle(x, 2).view(batch, channels, 4, height // 2, width // 2)
    a, b, c, d = phases.unbind(2)  # (B, C, H/2, W/2) each: pixels (0,0), (0,1), (1,0), (1,1)
    top, bottom = a + b, c + d  # low-pass along the width
    top_diff, bottom_diff = a - b, c - d  # high-pass along the width
    coeffs = torch.cat(
        [top + bottom, top - bottom, top_diff + bottom_diff, top_diff - bottom_diff], dim=1
    )  # (B, 4C, H/2, W/2)
    return coeffs.mul_(0.5)


def _haar_lowpass(x: Tensor) -> Tensor:
    """LL band of one Haar step, (B, C, H, W) -> (B, C, H/2, W/2): the 2x2 sum / 2."""
    _check_even(x, "haar_dwt")
    return F.avg_pool2d(x, 2).mul_(2.0)


def haar_dwt(x: Tensor, level: int) -> Tensor:
    """Level-`level` Haar coefficients of `x`.

    Args:
        x: (B, C, H, W) with H and W divisible by 2**level.
        level: number of analysis steps (>= 1); only the last step's coefficients are returned.

    Returns:
        (B, 4C, H / 2**level, W / 2**level): [LL, H, V, D] of the coarsest level, C channels each,
        equal to ptwt's `wavedec2(x, "haar", level)` LL and coarsest detail tuple.
    """
    if level < 1:
        raise ValueError(f"level: must be >= 1, got {level}")
    for _ in range(level - 1):
        x = _haar_lowpass(x)  # (B, C, H', W'): only LL feeds the next level
    return _haar_step(x)


def haar_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Haar coefficients of levels 1..`levels`, each computed from the previous level's LL.

    Args:
        x: (B, C, H, W) with H and W divisible by 2**levels.
        levels: number of levels (>= 1).

    Returns:
        list of `levels` tensors; entry l-1 is (B, 4C, H / 2**l, W / 2**l), equal to `haar_dwt(x, l)`.
    """
    if levels < 1:
        raise ValueError(f"levels: must be >= 1, got {levels}")
    channels = x.shape[1]
    pyramid = [_haar_step(x)]
    for _ in range(levels - 1):
        pyramid.append(_haar_step(pyramid[-1][:, :channels]))
    return pyramid


def haar_idwt(coeffs: Tensor) -> Tensor:
    """Inverse of one Haar level (the transform is orthonormal, so the synthesis is its transpose).

    Args:
        coeffs: (B, 4C, h, w), sub-band-major [LL, H, V, D] as returned by `haar_dwt`.

    Returns:
        (B, C, 2h, 2w).
    """
    if coeffs.dim() != 4 or coeffs.shape[1] % 4:
        raise ValueError(
            f"haar_idwt: expected (B, 4C, h, w) coefficients, got shape {tuple(coeffs.shape)}"
        )
    low, high_h, high_v, high_d = coeffs.chunk(4, dim=1)  # each (B, C, h, w)
    top, bottom = low + high_h, low - high_h
    top_diff, bottom_diff = high_v + high_d, high_v - high_d
    # phases a, b, c, d of every 2x2 block, stacked so pixel_shuffle interleaves them as [[a, b], [c, d]]
    phases = torch.stack(
        [top + top_diff, top - top_diff, bottom + bottom_diff, bottom - bottom_diff], dim=2
    )  # (B, C, 4, h, w)
    batch, channels, _, height, width = phases.shape
    # a view for contiguous input; channels_last coefficients make stack non-contiguous and cost one copy
    image = torch.pixel_shuffle(phases.reshape(batch, 4 * channels, height, width), 2)  # (B, C, 2h, 2w)
    return image.mul_(0.5)
