"""The LiteVAE task of the training loop, shared by `pretrain_vae` (128 px) and `finetune_vae` (256 px).

Each step is two separate updates (STYLE: no optimizer_idx branching): the autoencoder against the frozen
discriminator (`models.losses.autoencoder_loss`), then, once `loss.disc_start` is reached, the discriminator on
real images and detached reconstructions (`models.losses.discriminator_loss`). The loop (pipeline/training/loop.py)
owns cadence, checkpoints, exact resume and the final outputs; a look at validation data reconstructs a fixed set
of val crops with the EMA autoencoder (pipeline/training/vae_validation.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from models.autoencoder import Autoencoder
from models.discriminator import UNetDiscriminator
from models.losses import (
    LossConfig,
    adversarial_active,
    autoencoder_loss,
    discriminator_loss,
)
from pipeline.config.schema import ModelConfig, SpeedConfig, VAETrainConfig
from pipeline.core.checkpoint import as_plain, file_sha256, load_checkpoint
from pipeline.core.distributed import Distributed
from pipeline.core.precision import Precision
from pipeline.core.speed import DEFAULT_SPEED, fast, set_layout, speed_tags
from pipeline.core.tracking import Tracker
from pipeline.data.shards import shard_identity, shard_urls, train_loader
from pipeline.measures.pretrained import perceptual_network
from pipeline.training.ema import EMA
from pipeline.training.loop import (
    StageOutputs,
    check_finite,
    data_parallel,
    linear_warmup,
    per_process_batch,
    run_training,
)
from pipeline.training.vae_validation import (
    baselines,
    score_reconstructions,
    validation_crops,
    write_grid,
)

NON_FINITE_ADVICE = "Lower the learning rate, set grad_clip, or use amp: off."


class VAETrainer:
    """Autoencoder, discriminator, EMA, both optimisers and schedulers of one VAE training stage, and one step."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, cfg: VAETrainConfig, dist: Distributed,
                 init: Path | None = None, section: str = "train", speed: SpeedConfig = DEFAULT_SPEED):
        self.model_cfg, self.loss_cfg, self.cfg, self.dist, self.speed = model_cfg, loss_cfg, cfg, dist, speed
        self.init = str(init) if init else None
        self.init_sha256 = file_sha256(init) if init else None
        self.images_per_step = per_process_batch(cfg.batch_size, dist, f"{section}.batch_size")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.autoencoder = set_layout(Autoencoder(model_cfg.vae).to(dist.device), speed, dist.device, training=True)
        self.discriminator = set_layout(UNetDiscriminator(model_cfg.discriminator).to(dist.device), speed,
                                        dist.device, training=True)
        self.ema = EMA(self.autoencoder, cfg.ema_decay)
        self.opt_ae = torch.optim.Adam(self.autoencoder.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_disc = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.betas)
        self.precision = Precision(cfg.amp, dist.device)
        self.start_global_step = 0  # steps of earlier stages (with `init`): loss.disc_start counts from the first
        self.ae_train = fast(data_parallel(self.autoencoder, dist), speed, dist.device, training=True)
        self.disc_train = fast(data_parallel(self.discriminator, dist), speed, dist.device, training=True)
        if init is not None:
            self._load_weights(load_checkpoint(init), keep_optimizer=not cfg.reset_optimizer)
        # After the previous stage's optimiser state, which sets each group's full learning rate: the schedulers
        # start its warm-up from there, so the first step runs at lr * warm-up(0) either way.
        warmup = linear_warmup(cfg.warmup_steps)
        self.sched_ae = torch.optim.lr_scheduler.LambdaLR(self.opt_ae, warmup)
        self.sched_disc = torch.optim.lr_scheduler.LambdaLR(self.opt_disc, warmup)
        self.perceptual_net, self.perceptual_reason = perceptual_network(loss_cfg.perceptual)
        if self.perceptual_net is not None:
            self.perceptual_net = self.perceptual_net.to(dist.device)

    def config_dict(self) -> dict:
        return {"model": as_plain(self.model_cfg), "loss": as_plain(self.loss_cfg), "train": as_plain(self.cfg),
                "init": self.init, "init_sha256": self.init_sha256, "precision": self.precision.name}

    def tags(self) -> dict[str, Any]:
        return {"perceptual": self.perceptual_reason or "lpips", "precision": self.precision.name,
                "world_size": self.dist.world_size, **speed_tags(self.speed, self.dist.device)}

    def state_dict(self) -> dict:
        return {
            "start_global_step": self.start_global_step,  # steps of earlier stages; the loop adds "step"
            "autoencoder": self.autoencoder.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "ema_updates": self.ema.updates,
            "opt_ae": self.opt_ae.state_dict(),
            "opt_disc": self.opt_disc.state_dict(),
            "sched_ae": self.sched_ae.state_dict(),
            "sched_disc": self.sched_disc.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.autoencoder.load_state_dict(state["autoencoder"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.opt_ae.load_state_dict(state["opt_ae"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.sched_ae.load_state_dict(state["sched_ae"])
        self.sched_disc.load_state_dict(state["sched_disc"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.start_global_step = int(state["start_global_step"])

    def _load_weights(self, state: dict, keep_optimizer: bool) -> None:
        """Models and EMA from the previous stage's final checkpoint, and optionally its optimiser moments (with
        this stage's learning rates); the global step carries over."""
        self.autoencoder.load_state_dict(state["autoencoder"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.start_global_step = int(state["start_global_step"]) + int(state["step"])
        if keep_optimizer:
            self.opt_ae.load_state_dict(state["opt_ae"])
            self.opt_disc.load_state_dict(state["opt_disc"])
            for optimizer, lr in ((self.opt_ae, self.cfg.lr), (self.opt_disc, self.cfg.disc_lr)):
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] = lr

    def train_step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        """One autoencoder update and (once active) one discriminator update on (B, 3, r, r) images."""
        global_step, scaler = self.start_global_step + step, self.precision.scaler
        images = images.to(self.dist.device, non_blocking=True)
        adversarial = adversarial_active(global_step, self.loss_cfg)

        self.discriminator.requires_grad_(False)
        with self.precision.autocast():
            out = self.ae_train(images, sample=step >= self.cfg.mode_steps)
            loss, logs = autoencoder_loss(
                out, images, self.loss_cfg, global_step,
                discriminator=self.discriminator if adversarial else None,
                perceptual_net=self.perceptual_net, last_layer=self.autoencoder.decoder_last_layer,
            )
        check_finite(loss, logs, "autoencoder", step, self.dist, NON_FINITE_ADVICE)
        self.opt_ae.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        self._clip_and_step(self.opt_ae, self.autoencoder)
        self.sched_ae.step()
        self.ema.update(self.autoencoder)
        metrics = {f"train/{k}": float(v) for k, v in logs.items()}

        if adversarial:
            self.discriminator.requires_grad_(True)
            with self.precision.autocast():
                disc_loss, disc_logs = discriminator_loss(self.disc_train, images, out.image, self.loss_cfg)
            check_finite(disc_loss, disc_logs, "discriminator", step, self.dist, NON_FINITE_ADVICE)
            self.opt_disc.zero_grad(set_to_none=True)
            scaler.scale(disc_loss).backward()
            self._clip_and_step(self.opt_disc, self.discriminator)
            metrics |= {f"disc/{k}": float(v) for k, v in disc_logs.items()}
            self.sched_disc.step()  # the discriminator's warm-up starts when it does
        scaler.update()
        metrics["train/lr"] = self.sched_ae.get_last_lr()[0]
        return metrics

    def _clip_and_step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        if self.cfg.grad_clip > 0:
            self.precision.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.precision.scaler.step(optimizer)


class VAETask(VAETrainer):
    """The trainer with its data, for the training loop: the training stream and the fixed val crops."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, cfg: VAETrainConfig, shards: str | Path,
                 plots: Path, dist: Distributed, init: Path | None = None, section: str = "train",
                 speed: SpeedConfig = DEFAULT_SPEED):
        super().__init__(model_cfg, loss_cfg, cfg, dist, init, section, speed)
        self.shards, self.plots, self.section = shards, plots, section
        self.train_urls = shard_urls(shards, "train")
        self.shard_identity = shard_identity(self.train_urls)
        self.crops = self.reference = None
        if dist.is_main:
            self.crops = validation_crops(shard_urls(shards, "val"), cfg.resolution, cfg.val_images)
            self.reference = baselines(self.crops)

    def config_dict(self) -> dict:
        return {**super().config_dict(), "shards": self.shard_identity}

    def batches(self, start: int) -> Iterator[torch.Tensor]:
        return iter(train_loader(self.train_urls, self.cfg.resolution, self.images_per_step,
                                 seed=self.cfg.seed, num_workers=self.cfg.num_workers, start_batch=start))

    def look(self, step: int) -> tuple[dict[str, float], list[Path]]:
        """Val PSNR/SSIM of the EMA autoencoder on the fixed crops (next to the baselines), and their grid."""
        scores, recon = score_reconstructions(self.ema.shadow, self.crops, self.cfg.batch_size, self.dist.device)
        grid = self.plots / "reconstructions.png"
        write_grid(grid, self.crops, recon, f"{self.section}: EMA autoencoder on the fixed val crops "
                   f"({self.cfg.resolution} px) at step {step}")
        metrics = {"val/psnr": scores["psnr"], "val/ssim": scores["ssim"],
                   **{f"val/{k}": v for k, v in self.reference.items()}}
        return metrics, [grid]

    def summary(self, history: dict[str, list[dict]]) -> dict[str, Any]:
        last_val = history["val"][-1]
        return {
            "resolution": self.cfg.resolution,
            "val_psnr": last_val["val/psnr"],
            "val_ssim": last_val["val/ssim"],
            **self.reference,
            "val_psnr_minus_flat": last_val["val/psnr"] - self.reference["baseline_flat_psnr"],
            "val_crops": len(self.crops),
            "encoder_params": sum(p.numel() for p in self.autoencoder.encoder.parameters()),
            "decoder_params": sum(p.numel() for p in self.autoencoder.decoder.parameters()),
        }


def train_vae(stage: str, model_cfg: ModelConfig, loss_cfg: LossConfig, cfg: VAETrainConfig, shards: str | Path,
              outputs: StageOutputs, tracker: Tracker, dist: Distributed, init: Path | None = None,
              section: str = "train", speed: SpeedConfig = DEFAULT_SPEED) -> dict:
    """Train one VAE stage with the params section `section`; returns its final metrics (also written to
    `outputs.metrics` by rank 0)."""
    task = VAETask(model_cfg, loss_cfg, cfg, shards, outputs.plots, dist, init, section, speed)
    return run_training(stage, task, cfg, outputs, tracker, dist)
