"""The `train_ldm` task of the training loop: the latent-diffusion UNet trained with the EDM loss (models/diffusion.py) on latents of
the frozen fine-tuned autoencoder (pipeline/ldm/latent_source.py), in one process or under torchrun (DDP).

Each step draws the latents from the batch's posteriors, normalises them and takes one Adam step on the EDM loss;
the EMA of the UNet is what is evaluated, sampled and exported. The posterior sample and the loss's noise levels
and noise come from one generator seeded by (seed, rank, step) for the stream `Stream.DIFFUSION` (independent of
torch's global generators and of the cached-latent draws), and the data stream resumes at its batch index, so a
resumed run repeats the uninterrupted one exactly.

Every `val_every` steps (and at step 0 and the end) the EMA UNet is looked at: its loss on held-out val latents
at fixed noise levels (the 8 quantiles (k + 1/2) / 8 of the training lognormal) and fixed noise, a curve without
the variance of the random-sigma training loss; and, after step 0, a grid of samples from fixed noise.

Before training, the task measures the latent statistics on its own training stream (pipeline/ldm/latent_stats.py)
and normalises every latent, training and held-out, with the map `ldm.latent_norm` picks (per channel or scalar) to
std `ldm.diffusion.sigma_data`; samples are denormalised with the same map. The statistics and the map are stored
in the checkpoint's state (a resumed run keeps the ones it started with rather than the ones it measures again),
the metrics JSON and MLflow tags; the kind is in the checkpoint's configuration (the ldm section).

The loop (pipeline/training/loop.py) owns cadence, checkpoints, exact resume and the final outputs; a partial
checkpoint is resumed only by a run of the same configuration (the ldm section, the autoencoder file's SHA-256, the
training shards' identity, the precision and the latent shape, with the loop's world size), of which the
statistics are a function.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.autoencoder import DOWNSAMPLING
from models.diffusion import DiffusionConfig, Network, denoising_loss, edm_loss
from models.gaussian import DiagonalGaussian
from models.ldm_unet import UNet
from pipeline.config.schema import LDMConfig, SpeedConfig
from pipeline.core.checkpoint import as_plain, file_sha256, load_autoencoder
from pipeline.core.distributed import Distributed
from pipeline.core.files import write_bytes
from pipeline.core.precision import Precision
from pipeline.core.seeds import Stream, stream_seed
from pipeline.core.speed import DEFAULT_SPEED, fast, ready_to_encode, set_layout, speed_tags
from pipeline.core.tracking import Tracker
from pipeline.data.shards import shard_identity, shard_urls
from pipeline.ldm.latent_source import LatentNorm, held_out_latents, latent_source
from pipeline.ldm.latent_stats import LatentStats, stream_statistics
from pipeline.ldm.sampling import LatentDiffusion, generate, sample_grid
from pipeline.training.ema import EMA
from pipeline.training.loop import (
    StageOutputs,
    check_finite,
    data_parallel,
    linear_warmup,
    per_process_batch,
    run_training,
)

HELD_OUT_SIGMAS = 8
GRID = "samples.png"


def held_out_sigmas(cfg: DiffusionConfig, count: int) -> Tensor:
    """(count,) float64 noise levels at the quantiles (k + 1/2) / count of the training lognormal."""
    quantiles = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return (cfg.p_mean + cfg.p_std * torch.special.ndtri(quantiles)).exp()


@torch.no_grad()
def held_out_loss(net: Network, latents: Tensor, cfg: DiffusionConfig, seed: int, batch_size: int) -> float:
    """Mean EDM loss of normalised latents (N, nz, h, w), each at the `HELD_OUT_SIGMAS` fixed noise levels with
    fixed noise (seeded by `seed`): the same draws at every call, so the values of a run form a smooth curve."""
    sigmas = held_out_sigmas(cfg, HELD_OUT_SIGMAS).to(latents)
    x0 = latents.repeat(HELD_OUT_SIGMAS, 1, 1, 1)  # (K N, nz, h, w), level k on rows k N .. (k + 1) N - 1
    sigma = sigmas.repeat_interleave(len(latents))  # (K N,)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype).to(x0.device)
    losses = [denoising_loss(net, *chunks, cfg)
              for chunks in zip(x0.split(batch_size), sigma.split(batch_size), noise.split(batch_size))]
    return float(torch.cat(losses).mean())


class LDMTrainer:
    """UNet, EMA, optimiser and scheduler of one `train_ldm` run, and one training step.

    `latent_shape` (nz, h, w), `norm` and `autoencoder_sha256` describe the latents it trains on, and are what
    `load_ldm` needs to sample; the shape and the hash are part of the configuration a partial checkpoint must
    match, the norm part of its state.
    """

    def __init__(self, cfg: LDMConfig, latent_shape: tuple[int, int, int], norm: LatentNorm, autoencoder_sha256: str,
                 dist: Distributed, speed: SpeedConfig = DEFAULT_SPEED):
        self.cfg, self.latent_shape, self.norm, self.dist, self.speed = cfg, latent_shape, norm, dist, speed
        self.autoencoder_sha256 = autoencoder_sha256
        self.images_per_step = per_process_batch(cfg.batch_size, dist, "ldm.batch_size")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.unet = set_layout(UNet(cfg.unet, latent_shape[0]).to(dist.device), speed, dist.device, training=True)
        self.ema = EMA(self.unet, cfg.ema_decay)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, linear_warmup(cfg.warmup_steps))
        self.precision = Precision(cfg.amp, dist.device)
        self.net = fast(data_parallel(self.unet, dist), speed, dist.device, training=True)

    def config_dict(self) -> dict:
        return {"ldm": as_plain(self.cfg), "latent_shape": list(self.latent_shape),
                "autoencoder_sha256": self.autoencoder_sha256, "precision": self.precision.name}

    def tags(self) -> dict[str, Any]:
        """With the normalisation the run trains with (a resumed run's, once loaded)."""
        return {**speed_tags(self.speed, self.dist.device), "precision": self.precision.name,
                "world_size": self.dist.world_size, "latents": self.cfg.latents, "latent_norm": self.cfg.latent_norm,
                "latent_shift": list(self.norm.shift), "latent_scale": list(self.norm.scale)}

    def state_dict(self) -> dict:
        return {
            "unet": self.unet.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "ema_updates": self.ema.updates,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "latent_norm": self.norm.as_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        # The normalisation the run started with: statistics measured again (on another GPU, say) may differ in
        # the last bits, and a run must not change its latent space half-way.
        self.norm = LatentNorm(**state["latent_norm"])
        self.unet.load_state_dict(state["unet"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.precision.scaler.load_state_dict(state["scaler"])

    def sampler(self) -> LatentDiffusion:
        """The EMA UNet as a sampler of this run's latent space."""
        return LatentDiffusion(self.ema.shadow, self.cfg.diffusion, self.latent_shape, self.norm)

    def train_step(self, moments: Tensor, step: int) -> dict[str, float]:
        """One Adam step on posterior moments (B, 2 nz, h, w) of a training batch."""
        generator = torch.Generator(self.dist.device)
        generator.manual_seed(stream_seed(Stream.DIFFUSION, self.cfg.seed, self.dist.rank, step))
        x0 = self.norm.normalise(DiagonalGaussian(moments).sample(generator))  # (B, nz, h, w)
        with self.precision.autocast():
            loss = edm_loss(self.net, x0, self.cfg.diffusion, generator).mean()
        check_finite(loss, {"loss": loss}, "diffusion", step, self.dist,
                     "Lower ldm.lr, set ldm.grad_clip, or use amp: off.")
        self.opt.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        scaler.scale(loss).backward()
        metrics = {"train/loss": loss.item()}
        if self.cfg.grad_clip > 0:
            scaler.unscale_(self.opt)
            metrics["train/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.unet.parameters(),
                                                                              self.cfg.grad_clip))
        scaler.step(self.opt)
        scaler.update()
        self.sched.step()
        self.ema.update(self.unet)
        metrics["train/lr"] = self.sched.get_last_lr()[0]
        return metrics


class LDMTask(LDMTrainer):
    """The trainer with its data, for the training loop: the frozen autoencoder that encodes the training stream,
    the latent statistics of that stream, the held-out val latents and the sample grids."""

    def __init__(self, cfg: LDMConfig, autoencoder_path: Path, shards: str | Path, plots: Path, dist: Distributed,
                 speed: SpeedConfig = DEFAULT_SPEED):
        self.autoencoder, vae_cfg = load_autoencoder(autoencoder_path)
        ready_to_encode(self.autoencoder, speed, dist.device)  # identified by its checkpoint's SHA-256
        # This process's training stream: its share of the global batch
        self.stream_cfg = replace(cfg, batch_size=per_process_batch(cfg.batch_size, dist, "ldm.batch_size"))
        self.train_urls = shard_urls(shards, "train")
        self.shard_identity = shard_identity(self.train_urls)
        self.stats = stream_statistics(self.autoencoder, self.train_urls, self.stream_cfg,
                                       Precision(cfg.amp, dist.device), dist)
        size = cfg.resolution // DOWNSAMPLING
        super().__init__(cfg, (vae_cfg.latent_channels, size, size),
                         self.stats.norm(cfg.latent_norm, cfg.diffusion.sigma_data), file_sha256(autoencoder_path),
                         dist, speed)
        self.shards, self.plots = shards, plots
        self._held_out: Tensor | None = None

    def config_dict(self) -> dict:
        return {**super().config_dict(), "shards": self.shard_identity}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "latent_stats": self.stats.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stats = LatentStats.from_dict(state["latent_stats"])

    def batches(self, start: int) -> Iterator[Tensor]:
        return latent_source(self.autoencoder, self.train_urls, self.stream_cfg, self.precision,
                             self.dist.rank, start)

    @property
    def held_out(self) -> Tensor:
        """Normalised val latents (N, nz, h, w) the looks measure (encoded once, on first use)."""
        if self._held_out is None:
            self._held_out = held_out_latents(self.autoencoder, shard_urls(self.shards, "val"), self.cfg, self.norm,
                                              self.precision)
        return self._held_out

    def look(self, step: int) -> tuple[dict[str, float], list[Path]]:
        """The EMA UNet's held-out loss, and (after step 0) its sample grid."""
        cfg = self.cfg
        metrics = {"val/loss": held_out_loss(self.ema.shadow, self.held_out, cfg.diffusion,
                                             stream_seed(Stream.HELD_OUT_NOISE, cfg.seed), cfg.batch_size)}
        if step == 0:
            return metrics, []
        grid = self.plots / GRID
        images = generate(self.sampler(), self.autoencoder, range(cfg.grid_samples), cfg.seed,
                          cfg.diffusion.sampling_steps)
        title = f"EMA LDM samples at step {step}, {cfg.diffusion.sampling_steps} Heun steps"
        write_bytes(grid, sample_grid(images, title, cfg.seed))
        return metrics, [grid]

    def summary(self, history: dict[str, list[dict]]) -> dict[str, Any]:
        return {
            "resolution": self.cfg.resolution,
            "latent_shape": list(self.latent_shape),
            "latents": self.cfg.latents,
            "train_loss": history["train"][-1]["train/loss"],
            "val_loss": history["val"][-1]["val/loss"],
            "val_loss_at_start": history["val"][0]["val/loss"],
            "val_latents": len(self.held_out),
            "unet_params": sum(p.numel() for p in self.unet.parameters()),
            "latent_norm": self.cfg.latent_norm,
            "latent_norm_target_std": self.cfg.diffusion.sigma_data,
            "latent_shift": list(self.norm.shift),
            "latent_scale": list(self.norm.scale),
            "latent_stats": self.stats.as_dict(),
        }


def train_ldm(cfg: LDMConfig, autoencoder_path: Path, shards: str | Path, outputs: StageOutputs, tracker: Tracker,
              dist: Distributed, speed: SpeedConfig = DEFAULT_SPEED) -> dict:
    """Train the stage; returns its final metrics (also written to `outputs.metrics` by rank 0)."""
    task = LDMTask(cfg, autoencoder_path, shards, outputs.plots, dist, speed)
    return run_training("train_ldm", task, cfg, outputs, tracker, dist)
