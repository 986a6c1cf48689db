"""The latent-diffusion UNet: ADM (Dhariwal & Nichol 2021) as used by LDM (Rombach et al. 2022).

The layout follows LDM's `openaimodel.UNetModel`, which the LiteVAE paper trains unchanged on its
latents (Section 5, Table 7): a 3x3 stem; per resolution level `num_res_blocks` residual blocks, each
optionally followed by self-attention, then a strided-conv downsample (not after the last level); a
middle of ResBlock, attention, ResBlock; a mirrored up path with one extra block per level, each block
taking the concatenated skip of its down-path counterpart, then nearest-neighbour upsample + conv;
GroupNorm, SiLU and a zero-initialised 3x3 output conv. As in ADM, every residual branch (ResBlock,
attention) also ends in a zero-initialised layer, so each block starts as the identity on its skip
path, and the initial output is exactly zero (the EDM denoiser then starts as c_skip * x).

The network is conditioned on a scalar noise level per sample (EDM's `c_noise = ln(sigma) / 4`, see
`models.diffusion`) through sinusoidal features and a 2-layer MLP, as in ADM.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import Upsample, group_norm


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the latent-diffusion UNet (field names follow LDM's `UNetModel`).

    `attention_resolutions` are downsampling factors relative to the input, as in LDM's configs:
    2 means self-attention after the ResBlocks of the level at half the input resolution. Each must
    be a power of two that some level reaches (1 .. 2**(len(channel_mult) - 1)). The middle block
    always has attention, as in LDM.

    Heads: `num_heads` per attention layer, unless `num_head_channels` is set, in which case a layer
    on C channels has C // num_head_channels heads (LDM's FFHQ / CelebA-HQ models use 32 channels).

    `use_scale_shift_norm` conditions each ResBlock as GroupNorm(h) * (1 + scale) + shift (ADM's
    "AdaGN"); off, the embedding is added to the features before the second norm (LDM's default).

    The defaults are the "small" preset.
    """

    model_channels: int = field(default=64, metadata={"ge": 2})
    channel_mult: tuple[int, ...] = field(default=(1, 2, 2), metadata={"ge": 1})
    num_res_blocks: int = field(default=2, metadata={"ge": 1})
    attention_resolutions: tuple[int, ...] = field(default=(2, 4), metadata={"ge": 1})
    num_heads: int = field(default=4, metadata={"ge": 1})
    num_head_channels: int | None = field(default=None, metadata={"ge": 1})
    use_scale_shift_norm: bool = True
    dropout: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0})

    def __post_init__(self) -> None:
        if self.model_channels % 2:
            raise ValueError(
                f"model_channels: got {self.model_channels}; must be even (sin/cos noise features)"
            )
        if not self.channel_mult:
            raise ValueError("channel_mult: got an empty tuple; give one multiplier per level")
        factors = {2**level for level in range(self.num_levels)}
        for factor in self.attention_resolutions:
            if factor not in factors:
                raise ValueError(
                    f"attention_resolutions: got factor {factor}; each must be a downsampling factor "
                    f"the UNet reaches, one of {sorted(factors)} for {self.num_levels} levels"
                )
        for level, mult in enumerate(self.channel_mult):  # the middle block attends at the last level
            if 2**level in self.attention_resolutions or level == self.num_levels - 1:
                self.attention_heads(mult * self.model_channels)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    def attention_heads(self, channels: int) -> int:
        """Number of heads of an attention layer on `channels`; ValueError if they do not divide."""
        if self.num_head_channels is not None:
            if channels % self.num_head_channels:
                raise ValueError(
                    f"num_head_channels: {self.num_head_channels} does not divide an attention "
                    f"layer's {channels} channels; pick a divisor of model_channels * channel_mult"
                )
            return channels // self.num_head_channels
        if channels % self.num_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} does not divide an attention layer's {channels} "
                "channels; pick a divisor of model_channels * channel_mult"
            )
        return self.num_heads


UNET_PRESETS: dict[str, UNetConfig] = {
    # CPU tests and the quickstart (16x16x12 latents): two levels, attention at 8x8 and in the middle.
    "tiny": UNetConfig(
        model_channels=24, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
        num_heads=2,
    ),
    # A small GPU model for 32x32 latents, attention at 16x16 and 8x8.
    "small": UNetConfig(
        model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(2, 4),
        num_heads=4,
    ),
    # LDM's FFHQ / CelebA-HQ UNet (configs/latent-diffusion/{ffhq,celebahq}-ldm-vq-4.yaml, the only
    # published LDM configs for these data sets; Rombach et al. 2022 report 274M parameters): the
    # paper uses "a UNet identical to the original model from Rombach et al." (Section 5). On
    # LiteVAE's f8 latents (32x32 at 256px) the same downsampling factors put attention at 16, 8, 4.
    "ldm": UNetConfig(
        model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_resolutions=(2, 4, 8), num_head_channels=32, use_scale_shift_norm=False,
    ),
}


def _zero(module: nn.Module) -> nn.Module:
    """Zero a residual branch's last layer so the branch starts as a no-op (ADM)."""
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the noise level followed by a 2-layer MLP (ADM's timestep embedding)."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        half = channels // 2
        # Frequencies 1 .. 1/10000 in geometric steps, as ADM and EDM's DhariwalUNet.
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half))
        self.mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, noise_level: Tensor) -> Tensor:
        """(B,) noise levels -> (B, emb_dim) embeddings."""
        angles = noise_level.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, channels / 2)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))  # (B, emb_dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the noise embedding injected between, plus a skip."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, use_scale_shift_norm: bool
    ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.emb_proj = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch if use_scale_shift_norm else out_ch)
        )
        self.out_norm = group_norm(out_ch)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        )
        # A 1x1 conv matches channels on the skip path only where they change (ADM).
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, in_ch, H, W), emb (B, emb_dim) -> (B, out_ch, H, W)."""
        h = self.in_layers(x)
        cond = self.emb_proj(emb)[:, :, None, None]  # (B, 2*out_ch or out_ch, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = cond.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + cond)
        return self.skip(x) + self.out_layers(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all spatial positions, as a pre-norm residual block."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, nh, hs, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, nh, HW, hs)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)


class UNetBlock(nn.Module):
    """A ResBlock, followed by self-attention where the config asks for it at this resolution."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.use_scale_shift_norm)
        self.attn = SelfAttention(out_ch, cfg.attention_heads(out_ch)) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, in_ch, H, W), emb (B, emb_dim) -> (B, out_ch, H, W)."""
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.conv(x)


class DownLevel(nn.Module):
    """One encoder level: UNetBlocks at one resolution, then an optional downsample."""

    def __init__(self, blocks: list[UNetBlock], downsample: Downsample | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, h: Tensor, emb: Tensor, skips: list[Tensor]) -> Tensor:
        """h (B, C_in, H, W) -> (B, C_out, H', W'); appends every block's output to `skips`."""
        for block in self.blocks:
            h = block(h, emb)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)  # (B, C_out, H/2, W/2)
            skips.append(h)
        return h


class UpLevel(nn.Module):
    """One decoder level: UNetBlocks that each consume one skip, then an optional upsample."""

    def __init__(self, blocks: list[UNetBlock], upsample: Upsample | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, h: Tensor, emb: Tensor, skips: list[Tensor]) -> Tensor:
        """h (B, C_in, H, W) -> (B, C_out, H', W'); pops one tensor of `skips` per block."""
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)  # input (B, C + C_skip, H, W)
        if self.upsample is not None:
            h = self.upsample(h)  # (B, C_out, 2H, 2W)
        return h


class UNet(nn.Module):
    """Noise-level-conditioned UNet predicting a tensor shaped like its input (the EDM `F_theta`).

    Args:
        cfg: architecture.
        in_channels: channels of the latents (also the output channels).
    """

    def __init__(self, cfg: UNetConfig, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        ch = cfg.model_channels
        emb_dim = 4 * ch
        self.embed = NoiseEmbedding(ch, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            attention = 2**level in cfg.attention_resolutions
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(UNetBlock(ch, mult * cfg.model_channels, emb_dim, attention, cfg))
                ch = mult * cfg.model_channels
                skip_channels.append(ch)
            last = level == cfg.num_levels - 1
            self.down.append(DownLevel(blocks, None if last else Downsample(ch)))
            if not last:
                skip_channels.append(ch)

        self.mid = nn.ModuleList(
            [UNetBlock(ch, ch, emb_dim, True, cfg), UNetBlock(ch, ch, emb_dim, False, cfg)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            attention = 2**level in cfg.attention_resolutions
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                out_ch = mult * cfg.model_channels
                blocks.append(UNetBlock(ch + skip_channels.pop(), out_ch, emb_dim, attention, cfg))
                ch = out_ch
            self.up.append(UpLevel(blocks, Upsample(ch) if level > 0 else None))

        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1))
        )

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        """Predict the network output for noisy latents.

        Args:
            x: (B, C, h, w) network input (EDM: `c_in * noisy latents`), C = `in_channels`, h and w
                divisible by 2**(len(channel_mult) - 1).
            noise_level: (B,) conditioning scalar per sample (EDM: `c_noise = ln(sigma) / 4`).

        Returns:
            (B, C, h, w).
        """
        self._check_input(x, noise_level)
        emb = self.embed(noise_level)  # (B, 4 * model_channels)
        h = self.conv_in(x)  # (B, model_channels, h, w)
        skips = [h]
        for level in self.down:
            h = level(h, emb, skips)
        for block in self.mid:
            h = block(h, emb)
        for level in self.up:
            h = level(h, emb, skips)
        return self.out(h)

    def _check_input(self, x: Tensor, noise_level: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet: expected x of shape (B, {self.in_channels}, h, w), got {tuple(x.shape)}"
            )
        if noise_level.shape != (x.shape[0],):
            raise ValueError(
                f"UNet: expected noise_level of shape ({x.shape[0]},), got {tuple(noise_level.shape)}"
            )
        multiple = 2 ** (self.cfg.num_levels - 1)
        height, width = x.shape[-2:]
        if height % multiple or width % multiple:
            raise ValueError(
                f"UNet: latent size {height}x{width} is not divisible by {multiple} "
                f"(2**(len(channel_mult) - 1) for channel_mult={self.cfg.channel_mult}); "
                "crop or pad the latents, or use fewer levels"
            )
