"""The LiteVAE training loop shared by `pretrain_vae` (128 px) and `finetune_vae` (256 px).

Each step is two separate updates (STYLE: no optimizer_idx branching): the autoencoder against the frozen
discriminator (`models.losses.autoencoder_loss`), then, once `loss.disc_start` is reached, the
discriminator on real images and detached reconstructions (`models.losses.discriminator_loss`).

Fault tolerance: the full training state is saved atomically every `checkpoint_every` steps to
`checkpoints/partial/<stage>.pt`; a stage started again with the same configuration resumes from it
exactly (same data stream position, RNG states, optimisers, EMA). The finished state goes to the stage's
DVC output and the partial file is removed. A non-finite loss stops training before the update, with the
last good checkpoint intact.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.autoencoder import Autoencoder
from models.discriminator import UNetDiscriminator
from models.losses import LossConfig, adversarial_active, autoencoder_loss, discriminator_loss
from pipeline.checkpoint import as_plain, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.distributed import Distributed, any_rank, barrier
from pipeline.ema import EMA
from pipeline.files import write_json
from pipeline.loader import shard_urls, train_loader
from pipeline.params import ModelConfig, VAETrainConfig
from pipeline.precision import Precision
from pipeline.tracking import Tracker
from pipeline.training import NonFiniteLossError, StageOutputs, linear_warmup, resume_partial, write_csv
from pipeline.validation import baselines, evaluate, validation_crops, write_grid
from pipeline.weights import perceptual_network


class VAETrainer:
    """Models, optimisers, EMA and step counter of one training run, and its checkpoint round trip."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, cfg: VAETrainConfig, dist: Distributed,
                 init: Path | None = None):
        self.model_cfg, self.loss_cfg, self.cfg, self.dist = model_cfg, loss_cfg, cfg, dist
        self.init = str(init) if init else None
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.autoencoder = Autoencoder(model_cfg.vae).to(dist.device)
        self.discriminator = UNetDiscriminator(model_cfg.discriminator).to(dist.device)
        self.ema = EMA(self.autoencoder, cfg.ema_decay)
        self.opt_ae = torch.optim.Adam(self.autoencoder.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_disc = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=cfg.betas)
        warmup = linear_warmup(cfg.warmup_steps)
        self.sched_ae = torch.optim.lr_scheduler.LambdaLR(self.opt_ae, warmup)
        self.sched_disc = torch.optim.lr_scheduler.LambdaLR(self.opt_disc, warmup)
        self.precision = Precision(cfg.amp, dist.device)
        self.step = 0  # steps of this stage
        self.global_step = 0  # steps across stages (drives loss.disc_start)
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "val": []}
        self.ae_train, self.disc_train = self.autoencoder, self.discriminator
        if dist.enabled:
            device_ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.ae_train = DistributedDataParallel(self.autoencoder, device_ids=device_ids)
            self.disc_train = DistributedDataParallel(self.discriminator, device_ids=device_ids)
        torch.manual_seed(cfg.seed + dist.rank)  # per-rank posterior noise

    def config_dict(self) -> dict:
        return {"model": as_plain(self.model_cfg), "loss": as_plain(self.loss_cfg), "train": as_plain(self.cfg),
                "init": self.init}

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "global_step": self.global_step,
            "config": self.config_dict(),
            "autoencoder": self.autoencoder.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "ema_updates": self.ema.updates,
            "opt_ae": self.opt_ae.state_dict(),
            "opt_disc": self.opt_disc.state_dict(),
            "sched_ae": self.sched_ae.state_dict(),
            "sched_disc": self.sched_disc.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }

    def resume(self, state: dict) -> None:
        """Continue exactly where `state` (this stage's own partial checkpoint) stopped."""
        self.load_weights(state, keep_optimizer=False)
        self.opt_ae.load_state_dict(state["opt_ae"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        self.step = int(state["step"])
        self.sched_ae.load_state_dict(state["sched_ae"])
        self.sched_disc.load_state_dict(state["sched_disc"])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.history = state["history"]
        set_rng_state(state["rng"])
        if self.dist.rank:
            torch.manual_seed(hash((self.cfg.seed, self.dist.rank, self.step)) & 0x7FFFFFFF)

    def load_weights(self, state: dict, keep_optimizer: bool) -> None:
        """Models and EMA from another stage's checkpoint, and optionally its optimiser moments (with this
        stage's learning rates); the global step carries over."""
        self.autoencoder.load_state_dict(state["autoencoder"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.global_step = int(state["global_step"])
        if keep_optimizer:
            self.opt_ae.load_state_dict(state["opt_ae"])
            self.opt_disc.load_state_dict(state["opt_disc"])
            for group in self.opt_ae.param_groups:
                group["lr"] = group["initial_lr"] = self.cfg.lr
            for group in self.opt_disc.param_groups:
                group["lr"] = group["initial_lr"] = self.cfg.disc_lr

    def train_step(self, images: torch.Tensor, perceptual_net) -> dict[str, float]:
        """One autoencoder update and (once active) one discriminator update on (B, 3, r, r) images."""
        cfg, scaler = self.cfg, self.precision.scaler
        images = images.to(self.dist.device, non_blocking=True)
        adversarial = adversarial_active(self.global_step, self.loss_cfg)

        self.discriminator.requires_grad_(False)
        with self.precision.autocast():
            out = self.ae_train(images, sample=self.step >= cfg.mode_steps)
            loss, logs = autoencoder_loss(
                out, images, self.loss_cfg, self.global_step,
                discriminator=self.discriminator if adversarial else None,
                perceptual_net=perceptual_net, last_layer=self.autoencoder.decoder_last_layer,
            )
        self._check_finite(loss, logs, "autoencoder")
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
            self._check_finite(disc_loss, disc_logs, "discriminator")
            self.opt_disc.zero_grad(set_to_none=True)
            scaler.scale(disc_loss).backward()
            self._clip_and_step(self.opt_disc, self.discriminator)
            metrics |= {f"disc/{k}": float(v) for k, v in disc_logs.items()}
            self.sched_disc.step()  # the discriminator's warm-up starts when it does
        scaler.update()
        self.step += 1
        self.global_step += 1
        metrics["train/lr"] = self.sched_ae.get_last_lr()[0]
        return metrics

    def _clip_and_step(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        if self.cfg.grad_clip > 0:
            self.precision.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.precision.scaler.step(optimizer)

    def _check_finite(self, loss: torch.Tensor, logs: dict, which: str) -> None:
        if any_rank(not bool(torch.isfinite(loss)), self.dist):
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items())
            raise NonFiniteLossError(
                f"non-finite {which} loss at step {self.step} ({terms}). Training stopped before the update; "
                f"the last good checkpoint is intact. Lower the learning rate, set grad_clip, or use amp: off."
            )


def train_vae(stage: str, model_cfg: ModelConfig, loss_cfg: LossConfig, cfg: VAETrainConfig, shards: Path,
              outputs: StageOutputs, tracker: Tracker, dist: Distributed, init: Path | None = None) -> dict:
    """Train one stage; returns its final metrics (also written to `outputs.metrics` by rank 0)."""
    trainer = VAETrainer(model_cfg, loss_cfg, cfg, dist, init)
    _start(trainer, outputs, init, tracker)
    perceptual_net, perceptual_reason = perceptual_network(loss_cfg.perceptual)
    if perceptual_net is not None:
        perceptual_net = perceptual_net.to(dist.device)
    tracker.set_tags({"perceptual": perceptual_reason or "lpips", "precision": trainer.precision.name,
                      "world_size": dist.world_size})

    crops = validation_crops(shard_urls(shards, "val"), cfg.resolution, cfg.val_images) if dist.is_main else None
    reference = baselines(crops) if dist.is_main else {}
    loader = train_loader(shard_urls(shards, "train"), cfg.resolution, cfg.batch_size,
                          seed=cfg.seed, num_workers=cfg.num_workers, start_batch=trainer.step)
    batches = iter(loader)
    progress = tqdm(total=cfg.steps, initial=trainer.step, desc=stage, unit="step", disable=not dist.is_main)
    window_start, window_steps = time.perf_counter(), 0
    train_seconds = 0.0
    while trainer.step < cfg.steps:
        metrics = trainer.train_step(next(batches), perceptual_net)
        window_steps += 1
        progress.update(1)
        progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            train_seconds += elapsed
            metrics["train/sec_per_step"] = elapsed / window_steps
            metrics["train/images_per_sec"] = window_steps * cfg.batch_size * dist.world_size / elapsed
            trainer.history["train"].append({"step": trainer.step, **metrics})
            tracker.log_metrics(metrics, step=trainer.step)
            window_start, window_steps = time.perf_counter(), 0
        if dist.is_main and (trainer.step % cfg.val_every == 0 or trainer.step == cfg.steps):
            _validate(trainer, crops, reference, outputs, tracker)
        if trainer.step % cfg.checkpoint_every == 0 and trainer.step < cfg.steps:
            if dist.is_main:
                save_checkpoint(outputs.partial, trainer.state_dict())
            barrier(dist)
    progress.close()

    summary = {}
    if dist.is_main:
        last_val = trainer.history["val"][-1]
        seconds_per_step = [row["train/sec_per_step"] for row in trainer.history["train"]]
        summary = {
            "steps": trainer.step,
            "resolution": cfg.resolution,
            "val_psnr": last_val["val/psnr"],
            "val_ssim": last_val["val/ssim"],
            **{k: v for k, v in reference.items()},
            "val_psnr_minus_flat": last_val["val/psnr"] - reference["baseline_flat_psnr"],
            "sec_per_step": sorted(seconds_per_step)[len(seconds_per_step) // 2],
            "train_minutes_this_run": train_seconds / 60,
            "val_crops": len(crops),
            "batch_size": cfg.batch_size * dist.world_size,
            "encoder_params": sum(p.numel() for p in trainer.autoencoder.encoder.parameters()),
            "decoder_params": sum(p.numel() for p in trainer.autoencoder.decoder.parameters()),
        }
        save_checkpoint(outputs.checkpoint, trainer.state_dict())
        outputs.partial.unlink(missing_ok=True)
        write_json(outputs.metrics, summary)
        tracker.log_metrics({f"final/{k}": v for k, v in summary.items()}, step=trainer.step)
        for path in (outputs.metrics, outputs.plots / "losses.csv", outputs.plots / "val.csv",
                     outputs.plots / "reconstructions.png", outputs.checkpoint):
            tracker.log_artifact(path)
    barrier(dist)
    return summary


def _start(trainer: VAETrainer, outputs: StageOutputs, init: Path | None, tracker: Tracker) -> None:
    """Resume this stage's partial checkpoint if it belongs to the same configuration, else start fresh
    (from the previous stage's checkpoint when `init` is given)."""
    if resume_partial(trainer, outputs.partial, tracker):
        return
    if init is not None:
        trainer.load_weights(load_checkpoint(init), keep_optimizer=not trainer.cfg.reset_optimizer)


def _validate(trainer: VAETrainer, crops: torch.Tensor, reference: dict, outputs: StageOutputs,
              tracker: Tracker) -> None:
    scores, recon = evaluate(trainer.ema.shadow, crops, trainer.cfg.batch_size, trainer.dist.device)
    row = {"step": trainer.step, "val/psnr": scores["psnr"], "val/ssim": scores["ssim"],
           **{f"val/{k}": v for k, v in reference.items()}}
    trainer.history["val"].append(row)
    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=trainer.step)
    grid = outputs.plots / "reconstructions.png"
    write_grid(grid, crops, recon)
    tracker.log_artifact(grid, artifact_path=f"reconstructions/step_{trainer.step:07d}")
    write_csv(outputs.plots / "losses.csv", trainer.history["train"])
    write_csv(outputs.plots / "val.csv", trainer.history["val"])
