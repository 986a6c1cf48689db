"""Encoder and decoder sizes and FLOPs beside the paper's Table 2.

Usage: .venv/bin/python scripts/model_report.py

Models are built on the meta device, so nothing is allocated or computed: parameter counts come from
the shapes and FLOPs from torch.utils.flop_counter.FlopCounterMode tracing one forward pass. The
counter counts a multiply-add as 2 FLOPs and counts only convolutions, matmuls and attention
(GroupNorm, SiLU, pooling and the Haar transform are left out, all tiny next to the convolutions).
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.autoencoder import build_encoder
from models.litevae_encoder import PAPER_ENCODER_PARAMS_M, EncoderConfig
from models.sd_vae import Decoder, DecoderConfig

RESOLUTIONS = (128, 256)
# Table 2a compares LiteVAE sizes at nz = 12, Table 2b the SD-VAE encoders at nz = 4.
ENCODERS = {
    "LiteVAE-S": (EncoderConfig(preset="S"), 12, "S"),
    "LiteVAE-B": (EncoderConfig(preset="B"), 12, "B"),
    "LiteVAE-M": (EncoderConfig(preset="M"), 12, "M"),
    "LiteVAE-L": (EncoderConfig(preset="L"), 12, "L"),
    "SD-VAE": (EncoderConfig(kind="sd_vae"), 4, "sd_vae"),
    "VAE-Small": (EncoderConfig(kind="vae_small"), 4, "vae_small"),
}
DECODER_LATENT_CHANNELS = 12


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: nn.Module, x: torch.Tensor) -> tuple[float, torch.Size]:
    """GFLOPs of one forward pass of a batch of one, and the output shape."""
    with FlopCounterMode(display=False) as counter:
        out = model(x)
    return counter.get_total_flops() / 1e9, out.shape


def main() -> None:
    header = f"{'encoder':<10} {'nz':>3} {'params M':>9} {'paper M':>8} {'diff':>7}"
    header += "".join(f" {f'GFLOPs@{r}':>11}" for r in RESOLUTIONS) + f"  latent@{RESOLUTIONS[-1]}"
    print(header)
    with torch.device("meta"), torch.no_grad():
        for name, (cfg, nz, paper_key) in ENCODERS.items():
            encoder = build_encoder(cfg, nz)
            params_m = count_params(encoder) / 1e6
            paper_m = PAPER_ENCODER_PARAMS_M[paper_key]
            row = f"{name:<10} {nz:>3} {params_m:>9.3f} {paper_m:>8.2f} {params_m / paper_m - 1:>+7.2%}"
            for res in RESOLUTIONS:
                flops, moments = gflops(encoder, torch.empty(1, 3, res, res))
                row += f" {flops:>11.2f}"
            latent = (moments[1] // 2, *moments[2:])
            print(f"{row}  {latent}")

        decoder = Decoder(DecoderConfig(), DECODER_LATENT_CHANNELS)
        row = f"\nSD-VAE decoder (ch 128, mult (1, 2, 4, 4), nz {DECODER_LATENT_CHANNELS}): "
        row += f"{count_params(decoder) / 1e6:.3f} M params"
        for res in RESOLUTIONS:
            flops, _ = gflops(decoder, torch.empty(1, DECODER_LATENT_CHANNELS, res // 8, res // 8))
            row += f", {flops:.1f} GFLOPs@{res}"
        print(row)
    print("\nFLOPs: 2 per multiply-add; convolutions, matmuls and attention only; batch of one.")


if __name__ == "__main__":
    main()
