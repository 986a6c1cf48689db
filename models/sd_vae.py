"""Stable Diffusion VAE encoder and decoder (Rombach et al. 2022, latent-diffusion `model.py`).

The encoder is LiteVAE's baseline (Tables 1-3) and, width-scaled, the "VAE-Small" of Table 2b.
The decoder is LiteVAE's decoder, with GroupNorm or SMC (Table 4) and image or wavelet output.
"""

from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import AttentionBlock, Norm, ResBlock, Upsample, check_image_size, norm_act_conv
from models.smc import SMC


@dataclass(frozen=True)
class SDEncoderSpec:
    """Width and depth of an SD-VAE-style encoder; it downsamples by 2^(len(ch_mult) - 1)."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int


# SD-VAE (kl-f8): 34,163,592 parameters at nz = 4, the paper's 34.16M. Its 1x1 quant_conv (72 more,
# also rounding to 34.16M) is not counted here: it is the autoencoder's optional pre-conv (App. D.2),
# which LiteVAE leaves out too, so encoders are compared without it.
SD_VAE_ENCODER = SDEncoderSpec(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)
# VAE-Small (Table 2b): the same network at 7/16 of the width. Parameters scale with width^2, so
# 128 * sqrt(6.75 / 34.16) = 56.9 channels hits the 6.75M budget; 56 is the nearest width with a
# GroupNorm grouping of 8 (gcd(32, 56)), giving 6,555,984 (6.56M) at nz = 4. Depth, channel multipliers
# and the mid-block attention are unchanged, which is the "naive downscaling" the paper compares against.
VAE_SMALL_ENCODER = SDEncoderSpec(ch=56, ch_mult=(1, 2, 4, 4), num_res_blocks=2)


class Downsample(nn.Module):
    """SD-VAE's stride-2 3x3 conv with asymmetric (0, 1, 0, 1) padding: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2), H and W even."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _mid_block(channels: int, norm: Norm, attention: bool, min_group_channels: int = 1) -> nn.Sequential:
    """SD-VAE mid block: ResBlock, (attention,) ResBlock at constant width."""
    layers = [ResBlock(channels, channels, norm, min_group_channels)]
    if attention:
        layers.append(AttentionBlock(channels, min_group_channels))
    layers.append(ResBlock(channels, channels, norm, min_group_channels))
    return nn.Sequential(*layers)


class SDVAEEncoder(nn.Module):
    """SD-VAE encoder: conv_in, ResBlock stages with stride-2 downsampling, mid block with attention,
    GroupNorm-SiLU-conv_out to the Gaussian moments (`double_z`).

    Args:
        spec: width and depth (SD_VAE_ENCODER or VAE_SMALL_ENCODER).
        latent_channels: nz; the output has 2 * nz channels.
    """

    def __init__(self, spec: SDEncoderSpec, latent_channels: int):
        super().__init__()
        self.downsampling = 2 ** (len(spec.ch_mult) - 1)
        self.conv_in = nn.Conv2d(3, spec.ch, 3, padding=1)
        channels = spec.ch
        stages = []
        for level, mult in enumerate(spec.ch_mult):
            for _ in range(spec.num_res_blocks):
                stages.append(ResBlock(channels, spec.ch * mult))
                channels = spec.ch * mult
            if level != len(spec.ch_mult) - 1:
                stages.append(Downsample(channels))
        self.stages = nn.Sequential(*stages)
        self.mid = _mid_block(channels, "group", attention=True)
        self.out = norm_act_conv(channels, 2 * latent_channels, "group")

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) image in [-1, 1] -> (B, 2 * nz, H/f, W/f) moments, f = 2^(len(ch_mult) - 1)."""
        check_image_size(image, self.downsampling)
        return self.out(self.mid(self.stages(self.conv_in(image))))


# GroupNorm groups of the decoder hold at least SD-VAE's own minimum of 4 channels (32 groups of its narrowest,
# 128-channel stage). A narrower decoder (the CPU quickstart's ch 32) would otherwise normalise every channel on
# its own: InstanceNorm, which removes each channel's mean over the image, the colour of flat regions. Measured on
# the quickstart autoencoder fitting one batch of 64 px crops: 21.0 dB after 150 steps, against 15.5 dB with
# one channel per group.
DECODER_MIN_GROUP_CHANNELS = 4


@dataclass(frozen=True)
class DecoderConfig:
    """SD-VAE decoder.

    ch, ch_mult, num_res_blocks: width and depth; it upsamples by 2^(len(ch_mult) - 1).
    norm: "group" (SD-VAE) or "smc": every GroupNorm-SiLU-conv of the ResBlocks and of the output
        layer becomes SiLU-SMC (Table 4, App. G `ResBlockWithSMC`). The mid-block attention keeps its
        GroupNorm: it normalises only the input of the q/k/v projections, never the residual stream
        whose magnitudes SMC is meant to preserve, and it is what bounds the softmax logits; App. G
        gives no normalisation-free attention to follow.
    mid_attention: the attention layer in the mid block.
    output_type: "image" (3 channels at full resolution) or "wavelet" (the 12 level-1 Haar
        coefficients at half resolution: the last upsampling is dropped; App. G `LiteVAE.decode`).
    """

    ch: int = field(default=128, metadata={"ge": 1})
    ch_mult: tuple[int, ...] = field(default=(1, 2, 4, 4), metadata={"ge": 1})
    num_res_blocks: int = field(default=2, metadata={"ge": 1})
    norm: Literal["group", "smc"] = "group"
    mid_attention: bool = True
    output_type: Literal["image", "wavelet"] = "image"

    def __post_init__(self):
        if self.output_type == "wavelet" and len(self.ch_mult) < 2:
            raise ValueError(
                f"ch_mult: wavelet output drops one upsampling and needs at least 2 entries, got {self.ch_mult}"
            )

    @property
    def upsampling(self) -> int:
        """Latent-to-image scale factor (2^(len(ch_mult) - 1))."""
        return 2 ** (len(self.ch_mult) - 1)


class Decoder(nn.Module):
    """SD-VAE decoder: conv_in, mid block, ResBlock stages with nearest+conv upsampling, output layer.

    Args:
        cfg: decoder config.
        latent_channels: nz.
    """

    def __init__(self, cfg: DecoderConfig, latent_channels: int):
        super().__init__()
        channels = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.mid = _mid_block(channels, cfg.norm, cfg.mid_attention, DECODER_MIN_GROUP_CHANNELS)
        # wavelet output stays at half resolution: the upsampling into level 0 is left out
        last_upsample_level = 1 if cfg.output_type == "image" else 2
        stages = []
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                stages.append(ResBlock(channels, cfg.ch * cfg.ch_mult[level], cfg.norm, DECODER_MIN_GROUP_CHANNELS))
                channels = cfg.ch * cfg.ch_mult[level]
            if level >= last_upsample_level:
                stages.append(Upsample(channels))
        self.stages = nn.Sequential(*stages)
        out_channels = 3 if cfg.output_type == "image" else 4 * 3
        self.out = norm_act_conv(channels, out_channels, cfg.norm, min_group_channels=DECODER_MIN_GROUP_CHANNELS)

    @property
    def last_layer_weight(self) -> nn.Parameter:
        """Weight of the final conv (for Esser et al.'s adaptive GAN weight)."""
        conv = self.out[-1]
        return conv.conv.weight if isinstance(conv, SMC) else conv.weight

    def forward(self, z: Tensor) -> Tensor:
        """(B, nz, h, w) latent -> (B, 3, h f, w f) image, or (B, 12, h f/2, w f/2) Haar coefficients
        with output_type "wavelet", f = 2^(len(ch_mult) - 1)."""
        return self.out(self.stages(self.mid(self.conv_in(z))))
