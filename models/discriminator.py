"""UNet discriminator of Schönfeld et al. 2020 ("A U-Net Based Discriminator for GANs").

LiteVAE (§4.3, Table 10) replaces the PatchGAN discriminator of Stable Diffusion with this model. It is
BigGAN's residual discriminator used as the encoder of a UNet: the bottleneck gives one logit per image
(global realness) and a decoder with skip connections gives one logit per pixel (local realness).

Spectral normalisation (on by default, as in Schönfeld et al.) uses
`torch.nn.utils.parametrizations.spectral_norm`. It is safe with DDP and mixed precision: its power
iteration vectors are buffers that DDP broadcasts from rank 0, and in training mode each forward works
on clones of them, so several forwards before one backward (the generator and discriminator steps, or
real and fake passes) never trip autograd's in-place check. Turning it off gives a plain residual
network for ablations.
"""

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class DiscriminatorConfig:
    """UNet discriminator size.

    ch: width of the first encoder block.
    ch_mult: width multiplier of each encoder block; each block halves the resolution, so inputs must be
        divisible by 2**len(ch_mult). The decoder mirrors the encoder.
    spectral_norm: spectral normalisation of every convolution and linear layer.
    global_pool: pooling of the bottleneck features before the global head. "mean" keeps the global logit's
        scale across resolutions, the PatchGAN scale `loss.adv_weight` is stated in (models/losses.py);
        "sum" (Schönfeld et al., after SN-GAN) makes it grow with the image area, 4x from the 128 px
        pretraining to the 256 px fine-tuning.
    """

    ch: int = field(default=64, metadata={"ge": 1})
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    spectral_norm: bool = True
    global_pool: Literal["sum", "mean"] = "mean"

    def __post_init__(self) -> None:
        if not self.ch_mult:
            raise ValueError("ch_mult: is empty; give one multiplier per resolution, e.g. [1, 2, 4, 8]")
        if any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult: multipliers must be >= 1, got {list(self.ch_mult)}")


def _normalised(layer: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(layer) if enabled else layer


class DownBlock(nn.Module):
    """Residual block halving the resolution (BigGAN's discriminator block)."""

    def __init__(self, in_ch: int, out_ch: int, preactivation: bool, sn: bool) -> None:
        super().__init__()
        # the first block sees raw pixels, which a leading ReLU would clip
        self.preactivation = preactivation
        self.conv1 = _normalised(nn.Conv2d(in_ch, out_ch, 3, padding=1), sn)
        self.conv2 = _normalised(nn.Conv2d(out_ch, out_ch, 3, padding=1), sn)
        self.shortcut = _normalised(nn.Conv2d(in_ch, out_ch, 1), sn)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)."""
        h = F.relu(x) if self.preactivation else x
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        # average pooling and a 1x1 conv commute; pooling first is cheaper
        return h + self.shortcut(F.avg_pool2d(x, 2))


class UpBlock(nn.Module):
    """Residual block doubling the resolution (BigGAN's generator block, without normalisation)."""

    def __init__(self, in_ch: int, out_ch: int, sn: bool) -> None:
        super().__init__()
        self.conv1 = _normalised(nn.Conv2d(in_ch, out_ch, 3, padding=1), sn)
        self.conv2 = _normalised(nn.Conv2d(out_ch, out_ch, 3, padding=1), sn)
        self.shortcut = _normalised(nn.Conv2d(in_ch, out_ch, 1), sn)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        return h + self.shortcut(x)


class UNetDiscriminator(nn.Module):
    """DownBlock encoder, global head on the bottleneck, UpBlock decoder with skips, 1x1 pixel head."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        sn = cfg.spectral_norm
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.downsampling = 2 ** len(widths)
        self.global_pool = cfg.global_pool

        self.encoder = nn.ModuleList(
            DownBlock(c_in, c_out, preactivation=i > 0, sn=sn)
            for i, (c_in, c_out) in enumerate(zip([3, *widths[:-1]], widths))
        )
        self.global_head = _normalised(nn.Linear(widths[-1], 1), sn)

        # decoder block k brings the features to the resolution of encoder output k-1 (the input for
        # k = 0) with that output's width, then is concatenated with it (the skip) before block k-1
        self.decoder = nn.ModuleList(
            UpBlock(
                widths[k] if k == len(widths) - 1 else 2 * widths[k],
                widths[max(k - 1, 0)],
                sn=sn,
            )
            for k in reversed(range(len(widths)))
        )
        self.pixel_head = _normalised(nn.Conv2d(widths[0], 1, 1), sn)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Realness logits of images.

        Args:
            x: (B, 3, H, W) images in [-1, 1], H and W divisible by 2**len(cfg.ch_mult).

        Returns:
            global_logits: (B,), one logit per image.
            pixel_logits: (B, 1, H, W), one logit per pixel.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"UNetDiscriminator: expected (B, 3, H, W) images, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.downsampling or width % self.downsampling:
            raise ValueError(
                f"UNetDiscriminator: height and width must be divisible by {self.downsampling} "
                f"(2**len(ch_mult)), got {height}x{width}; crop the images or use fewer ch_mult entries"
            )

        skips = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)  # (B, widths[i], H/2^(i+1), W/2^(i+1))

        features = F.relu(h)  # (B, widths[-1], H/2^L, W/2^L)
        pooled = features.sum(dim=(2, 3)) if self.global_pool == "sum" else features.mean(dim=(2, 3))
        global_logits = self.global_head(pooled).squeeze(1)  # (B,)

        h = self.decoder[0](h)
        for block, skip in zip(self.decoder[1:], reversed(skips[:-1])):
            h = block(torch.cat([h, skip], dim=1))
        pixel_logits = self.pixel_head(h)  # (B, 1, H, W)
        return global_logits, pixel_logits
