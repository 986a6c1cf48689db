"""The numbers the claims compare, read from one experiment's outputs into a flat {name: value} mapping.

Names (the report and the tests use these and nothing else):
- `pretrain.*`, `finetune.*` (metrics/pretrain_vae.json, metrics/finetune_vae.json): `psnr`, `ssim` (EMA model on
  the stage's fixed val crops, 8-bit), `sec_per_step`, `minutes` (training time of the run), `steps`,
  `batch_size`, `resolution`, `encoder_params`, and `hf_l1` (pipeline/claims/hf_error.py, on the same crops).
- `sweep.psnr.<r>`, `sweep.ssim.<r>` (metrics/eval_recon.json, resized views at r px, Fig. 5), and
  `sweep.psnr_drop`: the mean over the sweep's other resolutions of PSNR(headline r) - PSNR(r), the drop away
  from the fine-tuning resolution (lower: less scale dependency).
- `mmd.raw.<sigma>`, `mmd.normalised.<sigma>` (metrics/analyze_latents.json): MMD^2 to N(0, I), mean over draws.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.errors import UserError

TRAINING_STAGES = {"pretrain_vae": "pretrain", "finetune_vae": "finetune"}
TRAINING_KEYS = {"psnr": "val_psnr", "ssim": "val_ssim", "steps": "steps", "batch_size": "batch_size",
                 "resolution": "resolution"}
# shown in the report, never compared: a stage that stops writing one costs the report a number, not the arm
TRAINING_FACTS = {"sec_per_step": "sec_per_step", "minutes": "train_minutes_this_run",
                  "encoder_params": "encoder_params"}


def _get(metrics: dict[str, Any], *keys: str, source: str) -> Any:
    value = metrics
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise UserError(f"{source}: no {'.'.join(keys)}; the stage's metrics JSON changed shape, update "
                            "pipeline/claims/measures.py")
        value = value[key]
    return value


def training_measures(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    prefix = TRAINING_STAGES[stage]
    out = {f"{prefix}.{name}": float(_get(metrics, key, source=f"metrics/{stage}.json"))
           for name, key in TRAINING_KEYS.items()}
    return out | {f"{prefix}.{name}": float(metrics[key]) for name, key in TRAINING_FACTS.items()
                  if isinstance(metrics.get(key), (int, float))}


def sweep_measures(metrics: dict[str, Any]) -> dict[str, float]:
    source = "metrics/eval_recon.json"
    sweep = _get(metrics, "sweep", source=source)
    headline = str(_get(metrics, "resolution", source=source))
    out = {}
    for side, row in sweep.items():
        for metric in ("psnr", "ssim"):
            out[f"sweep.{metric}.{side}"] = float(_get(row, metric, source=f"{source} sweep.{side}"))
    others = [out[f"sweep.psnr.{side}"] for side in sweep if side != headline]
    if headline in sweep and others:
        out["sweep.psnr_drop"] = out[f"sweep.psnr.{headline}"] - sum(others) / len(others)
    return out


def mmd_measures(metrics: dict[str, Any]) -> dict[str, float]:
    source = "metrics/analyze_latents.json"
    out = {}
    for kind, key in (("raw", "mmd"), ("normalised", "mmd_normalised")):
        for sigma, value in _get(metrics, "model", key, source=source).items():
            out[f"mmd.{kind}.{float(sigma):g}"] = float(_get(value, "mean", source=f"{source} model.{key}.{sigma}"))
    return out


def stage_measures(stage: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The measures of one stage's metrics JSON."""
    if stage in TRAINING_STAGES:
        return training_measures(stage, metrics)
    if stage == "eval_recon":
        return sweep_measures(metrics)
    if stage == "analyze_latents":
        return mmd_measures(metrics)
    raise ValueError(f"stage {stage!r} has no claims measures")
