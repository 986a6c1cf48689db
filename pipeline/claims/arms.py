"""The arms of the claims experiments: what each `dvc exp run` changes, which stages it runs, and its `-S` list.

One arm is one recipe, run once per seed; a claim pairs two arms at equal seed. Arms are shared between claims
wherever the same run serves, so the default LiteVAE arm is the baseline of five claims:

| arm        | changes (from the LiteVAE arm)                  | stages it runs              | claims                 |
|------------|-------------------------------------------------|-----------------------------|------------------------|
| litevae    | -                                               | pretrain, finetune, eval_recon, analyze_latents | all six |
| vae-small  | encoder: VAE-Small (Table 2b)                   | as litevae; pretrain only when an sd-vae arm runs | 2b (6, Fig. 5) |
| sd-vae     | encoder: SD-VAE, 34M (sd_vae_encoder: sd_vae)   | as litevae                  | 6, Fig. 5              |
| smc        | decoder: SMC instead of GroupNorm               | pretrain                    | 4                      |
| no-hf-loss | wavelet and Gaussian loss weights 0             | pretrain                    | HF losses (Table 9)    |
| 256-only   | the 128 px stage at 256 px, 1/4 of the crops    | pretrain, finetune          | 5                      |

The ablations (2b, 4, HF losses) compare the arms after pretraining at 128 px, as the paper's ablations compare
its ImageNet 128 x 128 models, so their extra arms stop there; Table 6 and Fig. 5 need fine-tuned models and the
evaluation stages, Table 5 the fine-tuning.

Every arm states the keys its pair could differ in (encoder, nz, decoder norm, steps, batch, resolution, seeds,
disc_start) explicitly, so neither params.yaml nor the profile's `params` can make one arm of a pair differ from
the other by accident. The discriminator starts with fine-tuning (loss.disc_start = the pretraining steps), as in
params.yaml. Validation runs at the first and last step only, and the only checkpoint is the last one: at these
budgets intermediate looks would cost more than the training they watch.

The 256-only arm (Table 5 at equal compute): compute is counted as pixels processed, steps x batch x side^2 (the
encoder and decoder are convolutional, so their cost is proportional to pixels). Its first stage runs at 256 px
with a quarter of the 128 px batch (or, if the batch is not divisible by 4, a quarter of the steps), so both arms
process the same pixels before the same 256 px fine-tuning; the report also gives both arms' measured training
minutes.

Overrides are built with pipeline.config.profiles (Hydra's override grammar, strings quoted) and checked by
applying them with DVC's own `-S` code to a copy of params.yaml, which must then load: a bad arm fails before any
experiment starts.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.claims.budget import Budget, ClaimsProfile
from pipeline.config.parsing import ConfigError
from pipeline.config.profiles import overrides
from pipeline.config.schema import load_params

CLAIMS_MODEL_NAME = "litevae-claims-autoencoder"  # export_vae would register the arms' VAEs here, not beside
                                                  # the pipeline's own registered model
EVALUATIONS = ("eval_recon", "analyze_latents")
TRAINING_SECTIONS = ("train_128", "train_256")
# Keys every arm sets: a profile's `params` may not set them (they would be silently overridden).
ARM_KEYS = (
    "model.vae.latent_channels", "model.vae.encoder.kind", "model.vae.encoder.preset", "model.vae.decoder.norm",
    "loss.disc_start", "tracking.vae_model_name",
    *(f"{section}.{key}" for section in TRAINING_SECTIONS
      for key in ("steps", "batch_size", "resolution", "seed", "val_images")),
)


@dataclass(frozen=True)
class Arm:
    """One recipe. `settings` is the partial params mapping it sets on top of the shared ones (seeds excluded);
    `encoder` is its encoder kind (for time estimates); `targets` the stages `dvc exp run` reproduces."""

    name: str
    description: str
    encoder: str
    targets: tuple[str, ...]
    settings: dict[str, Any]

    @property
    def fine_tunes(self) -> bool:
        return self.targets != ("pretrain_vae",)


@dataclass(frozen=True)
class ArmRun:
    """One arm at one seed: the DVC experiment `experiment` run with `overrides` (the `-S` values)."""

    arm: Arm
    seed: int
    experiment: str
    overrides: tuple[str, ...]


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _leaf_keys(mapping: dict[str, Any], prefix: str = "") -> list[str]:
    return [key for name, value in mapping.items()
            for key in (_leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"])]


def pretrain_at_256(budget: Budget) -> dict[str, int]:
    """The 256-only arm's first stage: the 128 px stage's pixels at 256 px (a quarter of the batch or steps)."""
    steps, batch = budget.pretrain.steps, budget.pretrain.batch_size
    if batch % 4 == 0:
        return {"resolution": 256, "steps": steps, "batch_size": batch // 4}
    return {"resolution": 256, "steps": steps // 4, "batch_size": batch}


def build_arms(budget: Budget) -> list[Arm]:
    """The arms the budget asks for, the LiteVAE arm first."""
    stage = {"val_images": budget.val_images}
    pretrain = {**stage, "resolution": 128, "steps": budget.pretrain.steps, "batch_size": budget.pretrain.batch_size}
    finetune = {**stage, "resolution": 256, "steps": budget.finetune.steps, "batch_size": budget.finetune.batch_size}

    def settings(kind: str = "litevae", norm: str = "group", first: dict | None = None, loss: dict | None = None):
        first = first or pretrain
        return {
            "model": {"vae": {"latent_channels": budget.latent_channels,
                              "encoder": {"kind": kind, "preset": budget.litevae_preset},
                              "decoder": {"norm": norm}}},
            "loss": {"disc_start": first["steps"], **(loss or {})},
            "train_128": first,
            "train_256": finetune,
            "tracking": {"vae_model_name": CLAIMS_MODEL_NAME},
        }

    small_serves = budget.sd_vae_encoder == "vae_small"
    lite = f"LiteVAE-{budget.litevae_preset}"
    arms = [
        Arm("litevae", f"{lite}, GroupNorm decoder, wavelet and Gaussian losses on: the baseline of every claim",
            "litevae", EVALUATIONS, settings()),
        Arm("vae-small", "VAE-Small encoder (the SD-VAE encoder scaled down to LiteVAE-B's size, Table 2b)"
            + ("; also the SD-VAE-architecture encoder of Table 6 and Fig. 5" if small_serves else ""),
            "vae_small", EVALUATIONS if small_serves else ("pretrain_vae",), settings(kind="vae_small")),
    ]
    if not small_serves:
        arms.append(Arm("sd-vae", "SD-VAE encoder (34M): Table 6 and Fig. 5", "sd_vae", EVALUATIONS,
                        settings(kind="sd_vae")))
    first_256 = {**pretrain, **pretrain_at_256(budget)}
    arms += [
        Arm("smc", f"{lite} with SMC instead of GroupNorm in the decoder (Table 4)", "litevae", ("pretrain_vae",),
            settings(norm="smc")),
        Arm("no-hf-loss", f"{lite} without the wavelet and Gaussian high-frequency losses", "litevae",
            ("pretrain_vae",), settings(loss={"wavelet_weight": 0.0, "gaussian_weight": 0.0})),
        Arm("256-only", f"{lite} trained at 256 px only, at the pixels of 128 px pretraining + fine-tuning (Table 5)",
            "litevae", ("pretrain_vae", "finetune_vae"), settings(first=first_256)),
    ]
    return arms


def loop_defaults(budget: Budget) -> dict[str, Any]:
    """Validation at the first and last step, one checkpoint at the end; a profile's `params` may change them."""
    def section(steps: int) -> dict[str, int]:
        return {"val_every": steps, "checkpoint_every": steps, "log_every": min(10, steps)}

    return {"train_128": section(budget.pretrain.steps), "train_256": section(budget.finetune.steps)}


def arm_runs(profile: ClaimsProfile, prefix: str) -> list[ArmRun]:
    """Every (arm, seed) of the profile, named `<prefix>-<arm>-s<seed>`, with its `-S` overrides."""
    clashes = sorted(set(_leaf_keys(profile.params)) & set(ARM_KEYS))
    if clashes:
        raise ConfigError(f"{profile.path}: params sets {clashes}, which the arms set themselves; use the budget's "
                          "own fields (seeds, litevae_preset, latent_channels, pretrain, finetune, val_images)")
    shared = _merge(loop_defaults(profile.budget), profile.params)
    runs = []
    for arm in build_arms(profile.budget):
        for seed in profile.budget.seeds:
            seeds = {"train_128": {"seed": seed}, "train_256": {"seed": seed + 1}}
            mapping = _merge(_merge(shared, arm.settings), seeds)
            runs.append(ArmRun(arm, seed, f"{prefix}-{arm.name}-s{seed}", tuple(overrides(mapping))))
    return runs


def check_overrides(runs: list[ArmRun], params_path: Path) -> None:
    """Apply every run's overrides to a copy of params.yaml with DVC's `-S` code; each result must load, and the
    LiteVAE arm must train with both high-frequency losses (the other side of the no-hf-loss arm)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls

    load_params(params_path)  # a clear error if params.yaml itself is invalid
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            params = Path(tmp) / f"{run.experiment}.yaml"
            shutil.copyfile(params_path, params)
            try:
                apply_overrides(params, list(run.overrides))
            except InvalidArgumentError as err:
                raise ConfigError(f"arm {run.experiment}: DVC cannot apply {list(run.overrides)}: {err.__cause__}") \
                    from None
            try:
                loss = load_params(params, "loss")["loss"]
            except ConfigError as err:
                raise ConfigError(f"arm {run.experiment}: {err}") from None
            if run.arm.name == "litevae" and not (loss.wavelet_weight > 0 and loss.gaussian_weight > 0):
                raise ConfigError(f"loss.wavelet_weight and loss.gaussian_weight: {loss.wavelet_weight}, "
                                  f"{loss.gaussian_weight}; the high-frequency claim needs both > 0 in the LiteVAE "
                                  "arm (set them in params.yaml or the profile's params)")


def pixels(arm: Arm, budget: Budget) -> int:
    """Training pixels one run of `arm` processes (steps x batch x side^2 over its training stages)."""
    first = arm.settings["train_128"]
    total = first["steps"] * first["batch_size"] * first["resolution"] ** 2
    if arm.fine_tunes:
        total += budget.finetune.steps * budget.finetune.batch_size * 256**2
    return total


def estimated_seconds(arm: Arm, budget: Budget) -> float | None:
    """Wall seconds of one run of `arm` by the budget's `estimate` (None without one)."""
    est = budget.estimate
    if est is None:
        return None
    # the 256-only arm's first stage processes the 128 px stage's pixels: counted as its time
    seconds = est.experiment + est.stage + budget.pretrain.steps * getattr(est.pretrain, arm.encoder)
    if arm.fine_tunes:
        seconds += est.stage + budget.finetune.steps * getattr(est.finetune, arm.encoder)
    if "eval_recon" in arm.targets:
        seconds += 2 * est.stage + est.eval_recon + est.analyze_latents
    return seconds
