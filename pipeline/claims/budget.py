"""The claims budget (profiles/claims.yaml): how long each arm trains, on how many seeds, and how to estimate it.

The file is no params.yaml section: no DVC stage reads it. It decides which `-S` overrides each arm's
`dvc exp run` gets (pipeline/claims/arms.py), and those land in params.yaml inside each experiment, where DVC
tracks them like any other params. Its `params` mapping (a partial params file, like profiles/paper.yaml) is
applied to every arm, e.g. the paper's decoder on a GPU; the keys the arms themselves set are refused there, so
the file cannot quietly make one arm differ from its pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.config.parsing import ConfigError, parse, read_yaml


@dataclass(frozen=True)
class StageBudget:
    """One training stage of every arm: `steps` optimisation steps of `batch_size` crops (global, over all processes)."""

    steps: int = field(default=80, metadata={"ge": 1})
    batch_size: int = field(default=4, metadata={"ge": 1})


@dataclass(frozen=True)
class EncoderSeconds:
    """Seconds per training step of each encoder kind (LiteVAE at the budget's preset)."""

    litevae: float = field(default=0.0, metadata={"ge": 0.0})
    vae_small: float = field(default=0.0, metadata={"ge": 0.0})
    sd_vae: float = field(default=0.0, metadata={"ge": 0.0})


@dataclass(frozen=True)
class Estimate:
    """What `python -m pipeline.claims plan` multiplies the budget with, measured on the machine the budget is for.

    pretrain, finetune: seconds per step at the budget's batch and resolutions (the 256-only arm's 256 px
        pretraining has the 128 px step's pixels, hence its time); finetune includes the discriminator.
    stage: seconds every stage process costs besides its steps (interpreter and torch start, model build,
        validation at the first and last step, MLflow logging).
    experiment: seconds of `dvc exp run --temp` itself (temporary clone, checkout from the cache, commit) and of
        reading its results back (the high-frequency error loads its checkpoints).
    eval_recon, analyze_latents: seconds of those stages on the budget's arms.
    """

    pretrain: EncoderSeconds = field(default_factory=EncoderSeconds)
    finetune: EncoderSeconds = field(default_factory=EncoderSeconds)
    stage: float = field(default=10.0, metadata={"ge": 0.0})
    experiment: float = field(default=12.0, metadata={"ge": 0.0})
    eval_recon: float = field(default=40.0, metadata={"ge": 0.0})
    analyze_latents: float = field(default=15.0, metadata={"ge": 0.0})


@dataclass(frozen=True)
class Budget:
    """The settings of a claims profile (everything but `params`).

    seeds: every arm runs once per seed (train_128.seed = s, train_256.seed = s + 1, as params.yaml's 0 and 1);
        a claim pairs arm and baseline at equal seed. At least 2 for a noise estimate.
    litevae_preset: the LiteVAE arm's size. B (6.75M) is Table 2b's, with VAE-Small's encoder parameters.
    sd_vae_encoder: the SD-VAE-architecture encoder of Table 6 and Fig. 5. `vae_small` reuses Table 2b's arm
        (the same down-scaled SD-VAE encoder; what a CPU budget affords); `sd_vae` (34M) adds an arm.
    latent_channels: nz of every arm (Table 2b used 4, Tables 2a and 6 and the ablations 12).
    pretrain: the 128 px stage (train_128) of every arm. finetune: the 256 px stage (train_256) of the arms
        that fine-tune. val_images: validation crops of both stages (PSNR, SSIM and the high-frequency error).
    noise_factor: a difference counts when it exceeds this many seed-to-seed standard deviations
        (pipeline/claims/verdict.py).
    estimate: seconds per step and per stage on the machine this budget is for (None: no time estimate).
    """

    seeds: tuple[int, ...] = (0, 1)
    litevae_preset: Literal["S", "B", "M", "L"] = "B"
    sd_vae_encoder: Literal["vae_small", "sd_vae"] = "vae_small"
    latent_channels: int = field(default=12, metadata={"ge": 3})
    pretrain: StageBudget = field(default_factory=StageBudget)
    finetune: StageBudget = field(default_factory=lambda: StageBudget(steps=20, batch_size=2))
    val_images: int = field(default=8, metadata={"ge": 1})
    noise_factor: float = field(default=2.0, metadata={"gt": 0.0})
    estimate: Estimate | None = None

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {list(self.seeds)}; give at least one seed, each once")
        if self.pretrain.batch_size % 4 and self.pretrain.steps % 4:
            raise ValueError(
                f"pretrain: the 256-only arm spends the 128 px pixels at 256 px, which needs batch_size or steps "
                f"divisible by 4; got batch_size {self.pretrain.batch_size}, steps {self.pretrain.steps}"
            )


@dataclass(frozen=True)
class ClaimsProfile:
    """A parsed claims profile: its settings, the params every arm gets, and the file it came from."""

    budget: Budget
    params: dict[str, Any]
    path: Path


def load_profile(path: str | Path) -> ClaimsProfile:
    """Read and validate a claims profile; a ConfigError names every bad key (`claims.yaml.pretrain.steps`)."""
    path = Path(path)
    raw = read_yaml(path)
    params = raw.pop("params", None) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}.params: expected a mapping of params.yaml sections, got {params!r}")
    return ClaimsProfile(parse(Budget, raw, path.name), params, path)
