"""The schema of `params.yaml`: one dataclass per section, and the loader every stage uses.

A stage reads only the sections it declares in dvc.yaml, e.g.
`data = load_params("params.yaml", "data")["data"]`; the file's other sections are checked by name only,
so an unknown or misspelt section still fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.autoencoder import DOWNSAMPLING, AutoencoderConfig
from models.diffusion import DiffusionConfig
from models.discriminator import DiscriminatorConfig
from models.ldm_unet import UNET_PRESETS, UNetConfig
from models.losses import LossConfig
from pipeline.benchmark import BenchmarkConfig
from pipeline.config import ConfigError, parse, read_yaml
from pipeline.evaluate import EvalConfig
from pipeline.latents import LatentsConfig
from pipeline.precision import AmpMode


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how `prepare` stores them.

    source: `embedded` (real photos shipped in installed packages), `folder` (a directory of images, searched
    recursively) or `shards` (existing WebDataset tar shards: a path, glob, brace pattern or URL).
    """

    source: Literal["embedded", "folder", "shards"] = "embedded"
    path: str = ""
    storage_size: int = field(default=512, metadata={"ge": 32})
    min_size: int = field(default=256, metadata={"ge": 8})
    val_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0})
    max_pixels: int = field(default=89_478_485, metadata={"ge": 1})
    shard_max_samples: int = field(default=64, metadata={"ge": 1})
    include_debian_wallpapers: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source != "embedded" and not self.path:
            raise ValueError(f"path: required when source is '{self.source}'; set data.path")
        if self.min_size > self.storage_size:
            raise ValueError(
                f"min_size: {self.min_size} exceeds storage_size {self.storage_size}; "
                "images are stored with their shorter side at most storage_size"
            )


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: the experiment every stage run goes to, and the names models are registered under."""

    experiment: str = "litevae"
    vae_model_name: str = "litevae-autoencoder"
    ldm_model_name: str = "litevae-ldm"


@dataclass(frozen=True)
class ScheduleConfig:
    """When `serve` runs the Prefect flow (standard 5-field cron), and which stages it targets."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    targets: tuple[str, ...] = ("eval_generation", "eval_recon", "analyze_latents", "benchmark_encoders")

    def __post_init__(self) -> None:
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron: {self.cron!r} is not a 5-field cron expression, e.g. '0 3 * * *'")


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section: the autoencoder (`vae`) and its discriminator."""

    vae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass(frozen=True)
class VAETrainConfig:
    """One training stage (`train_128`, `train_256`). Batch size is per process.

    warmup_steps: linear learning-rate warm-up. mode_steps: decode the posterior mean instead of a sample
    for the first steps (at initialisation the posterior std is ~1, which buries the signal in noise).
    reset_optimizer: when starting from another stage's checkpoint, start Adam afresh (True) or keep its
    moments (False).
    """

    resolution: int = field(default=128, metadata={"ge": 16})
    steps: int = field(default=1000, metadata={"ge": 1})
    batch_size: int = field(default=16, metadata={"ge": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0})
    disc_lr: float = field(default=1e-4, metadata={"gt": 0})
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = field(default=0, metadata={"ge": 0})
    mode_steps: int = field(default=0, metadata={"ge": 0})
    ema_decay: float = field(default=0.999, metadata={"ge": 0, "lt": 1})
    grad_clip: float = field(default=0.0, metadata={"ge": 0})
    amp: AmpMode = "auto"
    num_workers: int = field(default=1, metadata={"ge": 0})
    seed: int = 0
    log_every: int = field(default=10, metadata={"ge": 1})
    val_every: int = field(default=100, metadata={"ge": 1})
    checkpoint_every: int = field(default=100, metadata={"ge": 1})
    val_images: int = field(default=8, metadata={"ge": 1})
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.resolution % 16:
            raise ValueError(f"resolution: {self.resolution} must be a multiple of 16 (f=8 latent, DWT levels)")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas: {self.betas} must each be in [0, 1)")


@dataclass(frozen=True)
class LDMConfig:
    """The `ldm` section: `train_ldm` trains the latent-diffusion UNet on latents of the frozen fine-tuned
    autoencoder, normalised as (z - shift) * scale with `data/latent_stats.json`. Batch size is per process.

    unet: the UNet (models/ldm_unet.py). The default is the CPU-sized `UNET_PRESETS["tiny"]` (0.43M parameters,
        for 16x16 latents); the paper's is `UNET_PRESETS["ldm"]` (LDM-4's FFHQ / CelebA-HQ UNet, 274M). A `unet`
        mapping in params.yaml starts from UNetConfig's own defaults (the "small" preset): give every key.
    diffusion: EDM noise distribution, preconditioning and sampler (models/diffusion.py).
    resolution: training crops in pixels; latents are resolution / 8 on a side.
    latents: "on_the_fly" encodes every batch as it arrives, so each step sees fresh random crops and flips (the
        augmentation a light encoder keeps affordable). "cache" encodes the first `cache_size` crops of the same
        stream once before training and draws batches from them (the precomputed-latents workflow).
    cache_size: crops "cache" encodes, per process (about cache_size / train images fixed crops per image).
    lr, warmup_steps: Adam's learning rate and its linear warm-up. grad_clip: max gradient norm (0: off).
    val_every: steps between looks at the EMA UNet: its loss on the central crops of `val_images` val images at
        fixed noise levels and noise, and a grid of `grid_samples` samples from fixed noise.
    """

    unet: UNetConfig = field(default_factory=lambda: UNET_PRESETS["tiny"])
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    resolution: int = field(default=128, metadata={"ge": 16})
    latents: Literal["on_the_fly", "cache"] = "on_the_fly"
    cache_size: int = field(default=1024, metadata={"ge": 1})
    steps: int = field(default=1000, metadata={"ge": 1})
    batch_size: int = field(default=16, metadata={"ge": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0})
    warmup_steps: int = field(default=0, metadata={"ge": 0})
    ema_decay: float = field(default=0.999, metadata={"ge": 0, "lt": 1})
    grad_clip: float = field(default=0.0, metadata={"ge": 0})
    amp: AmpMode = "auto"
    num_workers: int = field(default=1, metadata={"ge": 0})
    seed: int = 0
    log_every: int = field(default=10, metadata={"ge": 1})
    val_every: int = field(default=500, metadata={"ge": 1})
    checkpoint_every: int = field(default=500, metadata={"ge": 1})
    val_images: int = field(default=8, metadata={"ge": 1})
    grid_samples: int = field(default=16, metadata={"ge": 1})

    def __post_init__(self) -> None:
        multiple = DOWNSAMPLING * 2 ** (self.unet.num_levels - 1)
        if self.resolution % multiple:
            raise ValueError(
                f"resolution: {self.resolution} is not a multiple of {multiple} (the autoencoder's downsampling "
                f"{DOWNSAMPLING} x the UNet's 2^{self.unet.num_levels - 1}); pick a multiple of {multiple}"
            )


@dataclass(frozen=True)
class GenerationConfig:
    """The `generation` section: how `eval_generation` samples the EMA UNet of `train_ldm` and scores the samples.

    num_samples: images generated; each reference set contributes as many real crops (FID is biased upwards at
        small n, so both sides get the same n; compare FIDs only at equal n).
    sampling_steps: steps of the EDM Heun sampler (2 x steps - 1 network evaluations); null: the trained model's
        `ldm.diffusion.sampling_steps`.
    seed: sample i starts from noise seeded by (seed, i), so samples do not depend on batch_size; it also draws the
        reference crops and KID's subsets.
    batch_size: samples generated and decoded at once.
    reference_sets: the real images FID and KID compare against: random crops at the training resolution (what
        the LDM learnt) of the "train" and/or "val" images.
    inception_weights: torch-fidelity Inception-v3 weights file ("": $TORCH_HOME/hub/checkpoints/, downloaded
        there on first use where the network allows).
    kid_subset_size, kid_subsets: KID's random subsets (the size is clamped to the sample count).
    grid_samples: samples shown in the grid.
    """

    num_samples: int = field(default=1000, metadata={"ge": 2})
    sampling_steps: int | None = field(default=None, metadata={"ge": 1})
    seed: int = 0
    batch_size: int = field(default=32, metadata={"ge": 1})
    reference_sets: tuple[Literal["train", "val"], ...] = ("train", "val")
    inception_weights: str = ""
    kid_subset_size: int = field(default=1000, metadata={"ge": 2})
    kid_subsets: int = field(default=100, metadata={"ge": 1})
    grid_samples: int = field(default=16, metadata={"ge": 1})

    def __post_init__(self) -> None:
        if not self.reference_sets or len(set(self.reference_sets)) != len(self.reference_sets):
            raise ValueError(
                f"reference_sets: got {list(self.reference_sets)}; list 'train' and/or 'val', each once"
            )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train_128": VAETrainConfig,
    "train_256": VAETrainConfig,
    "eval": EvalConfig,
    "latents": LatentsConfig,
    "ldm": LDMConfig,
    "generation": GenerationConfig,
    "tracking": TrackingConfig,
    "schedule": ScheduleConfig,
    "benchmark": BenchmarkConfig,
}


def load_params(path: str | Path, *names: str) -> dict[str, Any]:
    """Parse and validate the named sections of a params file.

    Returns {section name: dataclass instance}. Raises ConfigError naming the file, section or key.
    """
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section '{unknown[0]}'; allowed sections: {sorted(SECTIONS)}")
    for name in names:
        if name not in SECTIONS:
            raise ConfigError(f"{name}: not a params section; allowed sections: {sorted(SECTIONS)}")
    return {name: parse(SECTIONS[name], raw.get(name), name) for name in names}
