"""The `train_ldm` loop: the latent-diffusion UNet trained with the EDM loss (models/diffusion.py) on latents of
the frozen fine-tuned autoencoder (pipeline/ldm_latents.py), in one process or under torchrun (DDP).

Each step draws the latents from the batch's posteriors, normalises them and takes one Adam step on the EDM loss;
the EMA of the UNet is what is evaluated, sampled and exported. The posterior sample and the loss's noise levels
and noise come from a generator seeded by (seed, rank, step) and the data stream resumes at its batch index, so a
resumed run repeats the uninterrupted one exactly.

Every `val_every` steps (and at step 0 and the end) the EMA UNet is looked at: its loss on held-out val latents
at fixed noise levels (the 8 quantiles (k + 1/2) / 8 of the training lognormal) and fixed noise, a curve without
the variance of the random-sigma training loss; and, after step 0, a grid of samples from fixed noise.

Fault tolerance as in pipeline/vae_training.py: the full state goes atomically to
`checkpoints/partial/train_ldm.pt` every `checkpoint_every` steps and is resumed only by a run of the same
configuration (the ldm section, the autoencoder file's SHA-256, the latent normalisation and shape); the finished
state goes to the stage's DVC output. A non-finite loss stops training before the update.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.autoencoder import DOWNSAMPLING, Autoencoder
from models.diffusion import DiffusionConfig, Network, denoising_loss, edm_loss
from models.gaussian import DiagonalGaussian
from models.ldm_unet import UNet
from pipeline.checkpoint import as_plain, load_autoencoder, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.config import ConfigError, parse
from pipeline.distributed import Distributed, any_rank, barrier
from pipeline.ema import EMA
from pipeline.files import write_bytes, write_json
from pipeline.generation import LatentDiffusion, generate, sample_grid
from pipeline.ldm_latents import SEED_MASK, LatentNorm, held_out_latents, latent_source, read_latent_norm
from pipeline.loader import shard_urls
from pipeline.params import LDMConfig
from pipeline.precision import Precision
from pipeline.tracking import Tracker
from pipeline.training import NonFiniteLossError, StageOutputs, linear_warmup, resume_partial, write_csv

HELD_OUT_SIGMAS = 8
GRID = "samples.png"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the autoencoder checkpoint an LDM was trained on)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
    """UNet, EMA, optimiser, step counter and data-independent RNG of one `train_ldm` run, and its checkpoint
    round trip.

    `latent_shape` (nz, h, w), `norm` and `autoencoder_sha256` describe the latents it trains on; they are part of
    the configuration a partial checkpoint must match, and what `load_ldm` needs to sample.
    """

    def __init__(self, cfg: LDMConfig, latent_shape: tuple[int, int, int], norm: LatentNorm, autoencoder_sha256: str,
                 dist: Distributed):
        self.cfg, self.latent_shape, self.norm, self.dist = cfg, latent_shape, norm, dist
        self.autoencoder_sha256 = autoencoder_sha256
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.unet = UNet(cfg.unet, latent_shape[0]).to(dist.device)
        self.ema = EMA(self.unet, cfg.ema_decay)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, linear_warmup(cfg.warmup_steps))
        self.precision = Precision(cfg.amp, dist.device)
        self.step = 0
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "val": []}
        self.net = self.unet
        if dist.enabled:
            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.unet, device_ids=device_ids)
        torch.manual_seed(cfg.seed + dist.rank)  # per-rank dropout

    def config_dict(self) -> dict:
        return {"ldm": as_plain(self.cfg), "latent_shape": list(self.latent_shape),
                "latent_norm": {"shift": self.norm.shift, "scale": self.norm.scale},
                "autoencoder_sha256": self.autoencoder_sha256}

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": self.config_dict(),
            "unet": self.unet.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "ema_updates": self.ema.updates,
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }

    def resume(self, state: dict) -> None:
        """Continue exactly where `state` (this stage's own partial checkpoint) stopped."""
        self.unet.load_state_dict(state["unet"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = state["history"]
        set_rng_state(state["rng"])
        if self.dist.rank:
            torch.manual_seed(hash((self.cfg.seed, self.dist.rank, self.step)) & SEED_MASK)

    def sampler(self) -> LatentDiffusion:
        """The EMA UNet as a sampler of this run's latent space."""
        return LatentDiffusion(self.ema.shadow, self.cfg.diffusion, self.latent_shape, self.norm)

    def train_step(self, moments: Tensor) -> dict[str, float]:
        """One Adam step on posterior moments (B, 2 nz, h, w) of a training batch."""
        generator = torch.Generator(self.dist.device)
        generator.manual_seed(hash((self.cfg.seed, self.dist.rank, self.step)) & SEED_MASK)
        x0 = self.norm.normalise(DiagonalGaussian(moments).sample(generator))  # (B, nz, h, w)
        with self.precision.autocast():
            loss = edm_loss(self.net, x0, self.cfg.diffusion, generator).mean()
        if any_rank(not bool(torch.isfinite(loss)), self.dist):
            raise NonFiniteLossError(
                f"non-finite diffusion loss at step {self.step} ({loss.item():.4g}). Training stopped before the "
                "update; the last good checkpoint is intact. Lower ldm.lr, set ldm.grad_clip, or use amp: off."
            )
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
        self.step += 1
        metrics["train/lr"] = self.sched.get_last_lr()[0]
        return metrics


def train_ldm(cfg: LDMConfig, autoencoder_path: Path, stats_path: Path, shards: Path, outputs: StageOutputs,
              tracker: Tracker, dist: Distributed) -> dict:
    """Train the stage; returns its final metrics (also written to `outputs.metrics` by rank 0)."""
    autoencoder, vae_cfg = load_autoencoder(autoencoder_path)
    autoencoder.to(dist.device)
    norm = read_latent_norm(stats_path, vae_cfg.latent_channels)
    size = cfg.resolution // DOWNSAMPLING
    trainer = LDMTrainer(cfg, (vae_cfg.latent_channels, size, size), norm, file_sha256(autoencoder_path), dist)
    resume_partial(trainer, outputs.partial, tracker)
    tracker.set_tags({"precision": trainer.precision.name, "world_size": dist.world_size, "latents": cfg.latents})

    held_out = held_out_latents(autoencoder, shard_urls(shards, "val"), cfg, norm) if dist.is_main else None
    if dist.is_main and trainer.step == 0:
        _look(trainer, autoencoder, held_out, outputs, tracker)
    source = latent_source(autoencoder, shard_urls(shards, "train"), cfg, trainer.precision, dist.rank, trainer.step)
    progress = tqdm(total=cfg.steps, initial=trainer.step, desc="train_ldm", unit="step", disable=not dist.is_main)
    window_seconds, window_steps, window_loss = 0.0, 0, 0.0  # training steps only, not looks or checkpoints
    train_seconds = 0.0
    while trainer.step < cfg.steps:
        start = time.perf_counter()
        metrics = trainer.train_step(next(source))
        window_seconds += time.perf_counter() - start
        window_steps += 1
        window_loss += metrics["train/loss"]
        progress.update(1)
        progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
            train_seconds += window_seconds
            metrics["train/loss"] = window_loss / window_steps  # the window's mean: the per-step loss is noisy
            metrics["train/sec_per_step"] = window_seconds / window_steps
            metrics["train/images_per_sec"] = window_steps * cfg.batch_size * dist.world_size / window_seconds
            trainer.history["train"].append({"step": trainer.step, **metrics})
            tracker.log_metrics(metrics, step=trainer.step)
            window_seconds, window_steps, window_loss = 0.0, 0, 0.0
        if dist.is_main and (trainer.step % cfg.val_every == 0 or trainer.step == cfg.steps):
            _look(trainer, autoencoder, held_out, outputs, tracker)
        if trainer.step % cfg.checkpoint_every == 0 and trainer.step < cfg.steps:
            if dist.is_main:
                save_checkpoint(outputs.partial, trainer.state_dict())
            barrier(dist)
    progress.close()

    summary = {}
    if dist.is_main:
        seconds_per_step = sorted(row["train/sec_per_step"] for row in trainer.history["train"])
        images_per_sec = sorted(row["train/images_per_sec"] for row in trainer.history["train"])
        summary = {
            "steps": trainer.step,
            "resolution": cfg.resolution,
            "latent_shape": list(trainer.latent_shape),
            "latents": cfg.latents,
            "batch_size": cfg.batch_size * dist.world_size,
            "train_loss": trainer.history["train"][-1]["train/loss"],
            "val_loss": trainer.history["val"][-1]["val/loss"],
            "val_loss_at_start": trainer.history["val"][0]["val/loss"],
            "val_latents": len(held_out),
            "sec_per_step": seconds_per_step[len(seconds_per_step) // 2],
            "images_per_sec": images_per_sec[len(images_per_sec) // 2],
            "train_minutes_this_run": train_seconds / 60,
            "unet_params": sum(p.numel() for p in trainer.unet.parameters()),
            "latent_scale": norm.scale,
            "latent_shift": norm.shift,
        }
        save_checkpoint(outputs.checkpoint, trainer.state_dict())
        outputs.partial.unlink(missing_ok=True)
        write_json(outputs.metrics, summary)
        tracker.log_metrics({f"final/{k}": v for k, v in summary.items() if isinstance(v, (int, float))},
                            step=trainer.step)
        for path in (outputs.metrics, outputs.plots / "losses.csv", outputs.plots / "val.csv",
                     outputs.plots / GRID, outputs.checkpoint):
            tracker.log_artifact(path)
    barrier(dist)
    return summary


def _look(trainer: LDMTrainer, autoencoder: Autoencoder, held_out: Tensor, outputs: StageOutputs,
          tracker: Tracker) -> None:
    """The EMA UNet's held-out loss, and (after step 0) its sample grid; both logged, the CSVs rewritten."""
    cfg = trainer.cfg
    loss = held_out_loss(trainer.ema.shadow, held_out, cfg.diffusion, cfg.seed, cfg.batch_size)
    trainer.history["val"].append({"step": trainer.step, "val/loss": loss})
    tracker.log_metrics({"val/loss": loss}, step=trainer.step)
    if trainer.step > 0:
        grid = outputs.plots / GRID
        images = generate(trainer.sampler(), autoencoder, range(cfg.grid_samples), cfg.seed,
                          cfg.diffusion.sampling_steps)
        write_bytes(grid, sample_grid(images, f"EMA, step {trainer.step}"))
        tracker.log_artifact(grid, artifact_path=f"samples/step_{trainer.step:07d}")
        write_csv(outputs.plots / "losses.csv", trainer.history["train"])
    write_csv(outputs.plots / "val.csv", trainer.history["val"])


def load_ldm(path: Path) -> tuple[LatentDiffusion, str]:
    """The EMA UNet of a `train_ldm` checkpoint as a sampler (eval mode, frozen, on the CPU), and the SHA-256 of
    the autoencoder checkpoint whose latents it learnt."""
    state = load_checkpoint(path)
    config = state["config"]
    cfg = parse(LDMConfig, config["ldm"], f"{path}:config.ldm")
    latent_shape = tuple(config["latent_shape"])
    unet = UNet(cfg.unet, latent_shape[0])
    unet.load_state_dict(state["ema"])
    model = LatentDiffusion(unet.eval().requires_grad_(False), cfg.diffusion, latent_shape,
                            LatentNorm(**config["latent_norm"]))
    return model, config["autoencoder_sha256"]


def load_sampler(ldm_path: Path, autoencoder_path: Path) -> tuple[LatentDiffusion, Autoencoder]:
    """The trained LDM and the EMA autoencoder that decodes its latents, checked to be the one it learnt."""
    model, expected = load_ldm(ldm_path)
    if file_sha256(autoencoder_path) != expected:
        raise ConfigError(f"{autoencoder_path}: not the autoencoder checkpoint {ldm_path} was trained on (SHA-256 "
                          "differs); re-run train_ldm (dvc repro train_ldm)")
    autoencoder, _ = load_autoencoder(autoencoder_path)
    return model, autoencoder
