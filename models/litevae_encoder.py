"""LiteVAE encoder (paper Sec. 4.1, App. F, G; Tables 23 and 24).

image -> 3-level Haar pyramid -> one feature-extraction UNet per level (12 -> 12 channels, no
resampling inside) -> levels 1 and 2 average-pooled to level-3 resolution -> concatenated (36
channels) -> feature-aggregation UNet -> (2 * nz) Gaussian moments at H/8.

The UNets follow App. G's `LiteVAEUNetBlock` with its bugs resolved as in DESIGN.md: three separate
extractors, `num_res_blocks` ResBlocks per channel multiplier, a mid block of two ResBlocks, and a
decoder path that pops the encoder path's skips (the conv_in output is never consumed). This reading
reproduces Table 2's encoder sizes at nz = 12 to the two decimals the paper prints: S 1,034,940 (1.03M),
B 6,749,116 (6.75M), M 32,748,604 (32.75M), L 41,419,324 (41.42M).
"""

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import ResBlock, check_image_size
from models.wavelets import haar_pyramid

WAVELET_LEVELS = 3  # three Haar levels give the 8x downsampling of an f = 8 autoencoder


@dataclass(frozen=True)
class UNetSpec:
    """Width of one LiteVAE UNet: base channels and the per-stage channel multipliers."""

    channels: int = field(default=32, metadata={"ge": 1})
    channel_mult: tuple[int, ...] = field(default=(1, 2, 3), metadata={"ge": 1})


@dataclass(frozen=True)
class LiteVAEPreset:
    """Feature-extraction (Table 23) and feature-aggregation (Table 24) UNet widths."""

    extractor: UNetSpec
    aggregator: UNetSpec


LITEVAE_PRESETS: dict[str, LiteVAEPreset] = {
    "S": LiteVAEPreset(extractor=UNetSpec(16, (1, 2, 2)), aggregator=UNetSpec(16, (1, 2, 2))),
    "B": LiteVAEPreset(extractor=UNetSpec(32, (1, 2, 3)), aggregator=UNetSpec(32, (1, 2, 3))),
    "M": LiteVAEPreset(extractor=UNetSpec(64, (1, 2, 4)), aggregator=UNetSpec(32, (1, 2, 3))),
    "L": LiteVAEPreset(extractor=UNetSpec(64, (1, 2, 4)), aggregator=UNetSpec(64, (1, 2, 4))),
}

# Table 2 encoder sizes in millions of parameters at nz = 12 (Table 2b: VAE-Small matches LiteVAE-B).
PAPER_ENCODER_PARAMS_M: dict[str, float] = {
    "S": 1.03, "B": 6.75, "M": 32.75, "L": 41.42, "sd_vae": 34.16, "vae_small": 6.75,
}


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder to build and, for LiteVAE, its size.

    kind: "litevae" (this file), "sd_vae" (the Stable Diffusion VAE encoder) or "vae_small" (the
        width-scaled SD-VAE encoder of Table 2b); the last two are fixed architectures.
    preset: LiteVAE size S/B/M/L (Tables 23/24). Unlike the keys below it is not rejected with the other
        kinds, which ignore it: params.yaml always names one, and switching `kind` alone must stay valid.
    shared_extractor: one feature-extraction UNet shared by the three wavelet levels (App. D.4).
    extractor / aggregator: override the preset's UNet widths (None: the preset's), e.g. for tiny
        test or quickstart models.
    num_res_blocks: ResBlocks per channel multiplier in each LiteVAE UNet.
    """

    kind: Literal["litevae", "sd_vae", "vae_small"] = "litevae"
    preset: Literal["S", "B", "M", "L"] = "B"
    shared_extractor: bool = False
    extractor: UNetSpec | None = None
    aggregator: UNetSpec | None = None
    num_res_blocks: int = field(default=2, metadata={"ge": 1})

    def __post_init__(self):
        if self.kind == "litevae":
            return
        litevae_only = {
            "shared_extractor": self.shared_extractor is not False,
            "extractor": self.extractor is not None,
            "aggregator": self.aggregator is not None,
            "num_res_blocks": self.num_res_blocks != 2,
        }
        for name, is_set in litevae_only.items():
            if is_set:
                raise ValueError(
                    f"{name}: only applies to kind='litevae', got kind={self.kind!r}; "
                    f"remove {name} or set kind='litevae'"
                )

    @property
    def extractor_spec(self) -> UNetSpec:
        """The feature-extraction UNet's width: the override, else the preset's."""
        return self.extractor or LITEVAE_PRESETS[self.preset].extractor

    @property
    def aggregator_spec(self) -> UNetSpec:
        """The feature-aggregation UNet's width: the override, else the preset's."""
        return self.aggregator or LITEVAE_PRESETS[self.preset].aggregator


class LiteVAEUNet(nn.Module):
    """ADM-style UNet without spatial resampling (App. G `LiteVAEUNetBlock`).

    Args:
        in_channels / out_channels: channels of the input and output maps.
        spec: base channels and channel multipliers.
        num_res_blocks: ResBlocks per multiplier on the encoder and the decoder path.
        out_kernel_size: kernel of the plain output conv (3 for extractors, 1 for the aggregator).
    """

    def __init__(self, in_channels: int, out_channels: int, spec: UNetSpec, num_res_blocks: int,
                 out_kernel_size: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, spec.channels, 3, padding=1)
        channels = spec.channels
        skip_channels = []
        down = []
        for mult in spec.channel_mult:
            for _ in range(num_res_blocks):
                down.append(ResBlock(channels, spec.channels * mult))
                channels = spec.channels * mult
                skip_channels.append(channels)
        self.down = nn.ModuleList(down)
        self.mid = nn.Sequential(ResBlock(channels, channels), ResBlock(channels, channels))
        up = []
        for mult in reversed(spec.channel_mult):
            for _ in range(num_res_blocks):
                up.append(ResBlock(channels + skip_channels.pop(), spec.channels * mult))
                channels = spec.channels * mult
        self.up = nn.ModuleList(up)
        self.conv_out = nn.Conv2d(channels, out_channels, out_kernel_size, padding=out_kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        x = self.conv_in(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.mid(x)
        for block in self.up:
            x = block(torch.cat([x, skips.pop()], dim=1))  # (B, C + C_skip, H, W)
        return self.conv_out(x)


class LiteVAEEncoder(nn.Module):
    """The LiteVAE encoder: Haar pyramid, per-level feature extraction, feature aggregation.

    Args:
        cfg: encoder config with kind "litevae".
        latent_channels: nz; the output has 2 * nz channels (mean and log-variance).
    """

    def __init__(self, cfg: EncoderConfig, latent_channels: int):
        super().__init__()
        if cfg.kind != "litevae":
            raise ValueError(f"kind: LiteVAEEncoder needs kind='litevae', got {cfg.kind!r}")
        wavelet_channels = 4 * 3  # four Haar sub-bands of an RGB image
        self.extractors = nn.ModuleList(
            LiteVAEUNet(wavelet_channels, wavelet_channels, cfg.extractor_spec, cfg.num_res_blocks, 3)
            for _ in range(1 if cfg.shared_extractor else WAVELET_LEVELS)
        )
        self.aggregator = LiteVAEUNet(
            WAVELET_LEVELS * wavelet_channels, 2 * latent_channels, cfg.aggregator_spec, cfg.num_res_blocks, 1
        )

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) image in [-1, 1], H and W divisible by 8 -> (B, 2 * nz, H/8, W/8) moments."""
        check_image_size(image, 2**WAVELET_LEVELS)
        features = []
        for level, coeffs in enumerate(haar_pyramid(image, WAVELET_LEVELS), start=1):
            extractor = self.extractors[(level - 1) % len(self.extractors)]  # one module when shared
            # App. G divides level-l coefficients by 2^l: the LL band then stays in the image's range
            feature = extractor(coeffs / 2**level)  # (B, 12, H / 2^l, W / 2^l)
            pool = 2 ** (WAVELET_LEVELS - level)
            features.append(F.avg_pool2d(feature, pool) if pool > 1 else feature)  # (B, 12, H/8, W/8)
        return self.aggregator(torch.cat(features, dim=1))  # (B, 36, H/8, W/8) -> (B, 2 nz, H/8, W/8)
