"""Self-modulated convolution (SMC), LiteVAE paper Sec. 4.2, Eq. 3.

A convolution whose weight is modulated by learned per-input-channel scales s_i and then
demodulated per output channel j,

    w'_ijk = s_i w_ijk / sqrt(sum_{i,k} (s_i w_ijk)^2 + eps),

with the input multiplied by a learned scalar gain and the bias added afterwards (App. G's
`modulated_conv2d(..., input_gain=gain)`). It replaces GroupNorm: the demodulation keeps each
output channel's scale under control without normalising by statistics of the feature map.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SMC(nn.Module):
    """Self-modulated 2D convolution, stride 1, 'same' padding.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        kernel_size: odd square kernel size.
        eps: demodulation epsilon (StyleGAN2's 1e-8).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, eps: float = 1e-8):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be odd for 'same' padding, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.scales = nn.Parameter(torch.ones(in_channels))
        self.gain = nn.Parameter(torch.ones(1))
        self.eps = eps

    def modulated_weight(self) -> Tensor:
        """The effective weight gain * w' of Eq. 3, (C_out, C_in, k, k).

        The scales are per layer, not per sample, so one weight serves the whole batch and the layer
        runs as an ordinary convolution. The input gain is folded into the weight: conv(g x, w') =
        conv(x, g w'), which saves a pass over the input.
        """
        weight = self.conv.weight * self.scales.view(1, -1, 1, 1)  # (C_out, C_in, k, k)
        demod = torch.rsqrt(weight.square().sum(dim=(1, 2, 3), keepdim=True) + self.eps)  # (C_out, 1, 1, 1)
        return weight * (demod * self.gain)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return F.conv2d(x, self.modulated_weight(), self.conv.bias, padding=self.conv.padding)
