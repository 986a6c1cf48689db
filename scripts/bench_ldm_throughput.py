"""LDM training throughput with on-the-fly encoding: LiteVAE's encoder against the SD-VAE encoder (paper §1).

Usage: .venv/bin/python scripts/bench_ldm_throughput.py [--resolution 256 --batch-size 16 --unet ldm]
    [--params params.yaml]

A training step here is exactly `train_ldm`'s with latents encoded on the fly, minus data loading: encode a batch
of images with the frozen encoder (`pipeline.ldm.latent_source.posterior_moments`), then one `LDMTrainer.train_step`
(posterior sample, EDM loss, backward, Adam, EMA) of the same UNet. The `speed` section of `--params` applies as
in train_ldm: the autoencoder goes through `pipeline.core.speed.ready_to_encode` (layout, compiled encoder) and
the trainer gets it for the UNet. A third row times the UNet step alone on
fixed latents: the throughput of training on cached latents, the ceiling both encoders are measured against.
Both encoders produce nz-channel latents, so the UNet (and its cost) is identical. Weights are random: the cost
of a forward pass does not depend on their values. The images are fixed random tensors already on the device.

Timing: after `--warmup` untimed steps per configuration, each repeat times `--steps` consecutive steps of every
configuration in turn, alternating the order between repeats (ABC, CBA, ...) so that drifting machine load falls
on all of them alike; the reported throughput is the median over `--repeats` repeats (min-max beside it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.ldm_unet import UNET_PRESETS
from models.litevae_encoder import EncoderConfig
from models.sd_vae import DecoderConfig
from pipeline.config.schema import LDMConfig, SpeedConfig, load_params
from pipeline.core.distributed import Distributed
from pipeline.core.speed import ready_to_encode
from pipeline.ldm.latent_source import LatentNorm, posterior_moments
from pipeline.ldm.training import LDMTrainer

# The decoder is never run; the smallest valid one keeps the autoencoders' memory down.
UNUSED_DECODER = DecoderConfig(ch=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1, mid_attention=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litevae-preset", default="B", choices=["S", "B", "M", "L"])
    parser.add_argument("--latent-channels", type=int, default=12, help="nz of both encoders (the UNet's input)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--unet", default="tiny", choices=sorted(UNET_PRESETS))
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--params", default="params.yaml", help="its `speed` section applies (default: %(default)s)")
    return parser.parse_args()


class Config:
    """One benchmarked configuration: an encoder (None: cached latents) and its own trainer of the shared UNet."""

    def __init__(self, name: str, encoder: EncoderConfig | None, args: argparse.Namespace, speed: SpeedConfig,
                 device: torch.device):
        self.name = name
        cfg = LDMConfig(unet=UNET_PRESETS[args.unet], resolution=args.resolution, batch_size=args.batch_size,
                        amp=args.amp)
        size = args.resolution // 8
        self.trainer = LDMTrainer(cfg, (args.latent_channels, size, size), LatentNorm(0.0, 1.0), "benchmark",
                                  Distributed(0, 1, device), speed)
        generator = torch.Generator().manual_seed(0)
        self.images = (torch.rand(args.batch_size, 3, args.resolution, args.resolution, generator=generator) * 2 - 1
                       ).to(device)
        self.autoencoder = self.encoder = None
        if encoder is not None:
            vae = AutoencoderConfig(latent_channels=args.latent_channels, encoder=encoder, decoder=UNUSED_DECODER)
            self.autoencoder = Autoencoder(vae)
            self.encoder = self.autoencoder.encoder  # the module itself, for counting (ready_to_encode may compile)
            ready_to_encode(self.autoencoder, speed, device)
        latents = torch.randn(args.batch_size, args.latent_channels, size, size, generator=generator)
        self.steps_done = 0
        self.cached = torch.cat([latents, torch.full_like(latents, -30.0)], dim=1).to(device)  # moments, std ~ 0

    def step(self) -> None:
        if self.autoencoder is None:
            moments = self.cached
        else:
            moments = posterior_moments(self.autoencoder, self.images, self.trainer.precision)
        self.trainer.train_step(moments, self.steps_done)
        self.steps_done += 1

    def encoder_stats(self, resolution: int) -> str:
        if self.encoder is None:
            return "-"
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.encoder(self.images[:1])
        params = sum(p.numel() for p in self.encoder.parameters()) / 1e6
        return f"{params:.2f}M, {counter.get_total_flops() / 1e9:.1f} GFLOPs/img@{resolution}"


def timed(config: Config, steps: int, device: torch.device) -> float:
    """Images per second over `steps` consecutive training steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        config.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * config.images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    speed = load_params(args.params, "speed")["speed"]
    lite = f"LiteVAE-{args.litevae_preset}"
    configs = [
        Config(f"on the fly, {lite} encoder", EncoderConfig(preset=args.litevae_preset), args, speed, device),
        Config("on the fly, SD-VAE encoder", EncoderConfig(kind="sd_vae"), args, speed, device),
        Config("cached latents (UNet step only)", None, args, speed, device),
    ]
    unet_params = sum(p.numel() for p in configs[0].trainer.unet.parameters()) / 1e6
    print(f"device {device} ({torch.get_num_threads()} threads), precision {configs[0].trainer.precision.name}, "
          f"speed {speed.switches(device)}, "
          f"UNet '{args.unet}' ({unet_params:.2f}M), batch {args.batch_size} at {args.resolution}px -> "
          f"{args.latent_channels}x{args.resolution // 8}x{args.resolution // 8} latents")
    for config in configs:
        for _ in range(args.warmup):
            config.step()
    results: dict[str, list[float]] = {config.name: [] for config in configs}
    for repeat in range(args.repeats):
        for config in configs if repeat % 2 == 0 else configs[::-1]:
            results[config.name].append(timed(config, args.steps, device))

    print(f"\n{'configuration':<34} {'images/s (median)':>18} {'min-max':>15}  encoder")
    medians = {}
    for config in configs:
        values = results[config.name]
        medians[config.name] = statistics.median(values)
        print(f"{config.name:<34} {medians[config.name]:>18.2f} {min(values):>7.2f}-{max(values):<7.2f}  "
              f"{config.encoder_stats(args.resolution)}")
    lite_rate, sd_rate, cached_rate = (medians[config.name] for config in configs)
    print(f"\non-the-fly throughput ratio {lite} / SD-VAE: {lite_rate / sd_rate:.2f}x "
          f"(median of {args.repeats} interleaved repeats of {args.steps} steps)")
    print(f"share of the cached-latent throughput kept: {lite} {lite_rate / cached_rate:.0%}, "
          f"SD-VAE {sd_rate / cached_rate:.0%}")


if __name__ == "__main__":
    main()
