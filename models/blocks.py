"""Building blocks shared by the LiteVAE UNets and the SD-VAE encoder/decoder."""

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from models.smc import SMC

Norm = Literal["group", "smc"]


def group_norm(channels: int, min_group_channels: int = 1) -> nn.GroupNorm:
    """GroupNorm with gcd(32, C) groups: SD-VAE's 32 groups where C allows it, and a valid
    grouping for LiteVAE's 12, 16 or 36-channel features where 32 does not divide C.

    `min_group_channels` halves the group count until every group holds that many channels (while it
    can): with one channel per group, GroupNorm is InstanceNorm and removes each channel's spatial mean.
    """
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < min_group_channels:
        groups //= 2
    return nn.GroupNorm(groups, channels, eps=1e-6)


def norm_act_conv(in_channels: int, out_channels: int, norm: Norm, kernel_size: int = 3,
                  min_group_channels: int = 1) -> nn.Sequential:
    """GroupNorm -> SiLU -> conv, or with `norm="smc"` SiLU -> SMC conv (no normalisation layer).

    (B, C_in, H, W) -> (B, C_out, H, W). `min_group_channels`: see `group_norm`.
    """
    if norm == "smc":
        return nn.Sequential(nn.SiLU(), SMC(in_channels, out_channels, kernel_size))
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    # the GroupNorm output has no other reader, so SiLU overwrites it: one activation buffer less
    # (not on the SMC path, where SiLU's input is the caller's tensor)
    return nn.Sequential(group_norm(in_channels, min_group_channels), nn.SiLU(inplace=True), conv)


class ResBlock(nn.Module):
    """Pre-activation residual block (SD-VAE `ResnetBlock` / App. G `ResBlock`, `ResBlockWithSMC`).

    Two norm-act-conv 3x3 layers; a 1x1 conv on the skip path when the channel count changes.
    `min_group_channels`: see `group_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "group", min_group_channels: int = 1):
        super().__init__()
        self.block_in = norm_act_conv(in_channels, out_channels, norm, min_group_channels=min_group_channels)
        self.block_out = norm_act_conv(out_channels, out_channels, norm, min_group_channels=min_group_channels)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        # the branch ends in a fresh conv output: summing the skip into it saves a buffer
        return self.block_out(self.block_in(x)).add_(self.skip(x))


class AttentionBlock(nn.Module):
    """SD-VAE single-head spatial self-attention with a residual connection.

    q, k and v come from one fused 1x1 conv (same parameters as SD's three separate ones) and the
    attention runs through `scaled_dot_product_attention`, which picks a fused kernel where one exists.
    """

    def __init__(self, channels: int, min_group_channels: int = 1):
        super().__init__()
        self.norm = group_norm(channels, min_group_channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, 3C)
        q, k, v = qkv.chunk(3, dim=2)  # (B, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        h = h.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
        return self.proj_out(h).add_(x)  # into the fresh projection: no extra buffer


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def check_image_size(x: Tensor, multiple: int = 8) -> None:
    """Raise a ValueError unless `x` is (B, 3, H, W) with H and W divisible by `multiple`."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"image: expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"image: height and width must be divisible by {multiple}, got {height}x{width}; "
            f"crop or pad to a multiple of {multiple}"
        )
