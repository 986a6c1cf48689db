"""Writing the export folders (pipeline/export/layout.py) from training checkpoints.

The autoencoder export's latent statistics are measured exactly as `train_ldm` measures them before it trains
(pipeline/ldm/latent_stats.py `stream_statistics`: the first crops of the training stream at `ldm.resolution`,
`ldm.stats_crops` of them with `ldm.latents: on_the_fly` or the `ldm.cache_size` cached ones with `cache`, the same
seed, batches and precision), so for a `train_ldm` run in one process the two exports hold the same
normalisation. The LDM export stores the normalisation it was trained with (from its checkpoint),
and names the autoencoder export it needs by relative path and weights SHA-256, after checking that this export
came from the autoencoder checkpoint the LDM was trained on.

Every file is canonical (sorted keys, no timestamps; safetensors weights), and the folder is written under a
temporary name and renamed: the same checkpoint exports to the same bytes, and a killed export leaves nothing.
config.json records the code that wrote it (`code`: package version and git commit), which a loader names when
the weights no longer fit the model its code builds.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from importlib.metadata import version
from pathlib import Path

from models.autoencoder import DOWNSAMPLING, Autoencoder, AutoencoderConfig
from pipeline.config.parsing import ConfigError, parse
from pipeline.config.schema import LDMConfig, SpeedConfig
from pipeline.core.checkpoint import as_plain, load_checkpoint
from pipeline.core.distributed import Distributed
from pipeline.core.files import atomic_dir
from pipeline.core.precision import Precision
from pipeline.core.speed import DEFAULT_SPEED, ready_to_encode
from pipeline.data.shards import shard_urls
from pipeline.export.layout import (
    AUTOENCODER_FORMAT,
    CONFIG,
    LATENT_STATS,
    LDM_FORMAT,
    MODEL_CARD,
    PACKAGE,
    WEIGHTS,
    canonical_json,
    params_hash,
    read_config,
    save_weights,
    sha256_file,
)
from pipeline.export.model_card import autoencoder_card, ldm_card
from pipeline.ldm.latent_source import LatentNorm
from pipeline.ldm.latent_stats import LatentStats, stream_statistics

CHECKOUT = Path(__file__).resolve().parents[2]  # pipeline/export/writer.py


def code_version() -> dict:
    """config.json's `code`: the package version and the git commit of the checkout this code runs from (None
    outside a git checkout, e.g. an installed wheel, or without git)."""
    commit = None
    if (CHECKOUT / ".git").exists():  # else an enclosing repository's HEAD would not describe this code
        with contextlib.suppress(OSError):  # no git on this machine
            result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True,
                                    check=False)
            commit = result.stdout.strip() if result.returncode == 0 else None
    return {"package": PACKAGE, "version": version(PACKAGE), "git_commit": commit}


def _read_json(path: Path | None) -> dict | None:
    return None if path is None else json.loads(Path(path).read_text())


def _latent_stats(stats: LatentStats, resolution: int, source: str, kind: str, target_std: float,
                  norm: LatentNorm) -> dict:
    """latent_stats.json: the moments (per channel and over all channels), Rombach et al.'s scalar scale/shift,
    and the normalisation map the LDM's latents use."""
    return {
        **stats.as_dict(),
        "resolution": resolution,
        "source": source,
        "scalar": {"shift": stats.mean, "scale": 1 / stats.std,
                   "formula": "(z - shift) * scale has mean 0 and std 1 over all channels"},
        "normalisation": {"kind": kind, "target_std": target_std, **norm.as_dict(),
                          "formula": "x = (z - shift) * scale, per channel (or one value for all)"},
    }


def _write_folder(out: Path, weights: dict, config: dict, stats: dict, card_of) -> dict:
    """Write weights, config.json (with the weights' SHA-256), latent_stats.json and the card into `out`."""
    with atomic_dir(out) as tmp:
        save_weights(tmp / WEIGHTS, weights)
        config = {**config, "weights": WEIGHTS, "weights_sha256": sha256_file(tmp / WEIGHTS)}
        (tmp / CONFIG).write_text(canonical_json(config))
        (tmp / LATENT_STATS).write_text(canonical_json(stats))
        (tmp / MODEL_CARD).write_text(card_of(config))
    return config


def export_autoencoder(checkpoint: Path, shards: Path, ldm: LDMConfig, out: Path, dist: Distributed,
                       params: dict, manifest: Path | None = None, eval_recon: Path | None = None,
                       speed: SpeedConfig = DEFAULT_SPEED) -> dict:
    """Export the EMA autoencoder of a VAE training checkpoint into folder `out`, with the latent statistics of
    the training stream in `shards` under the `ldm` section (module doc); returns the config.json written.

    params: the params sections of the model's lineage as plain dicts (hashed into the card). manifest,
    eval_recon: the prepare manifest and eval_recon metrics the card reports (None: not reported). speed: the
    switches train_ldm encodes with (the layout changes the statistics' last bits).
    """
    state = load_checkpoint(checkpoint)
    cfg = parse(AutoencoderConfig, state["config"]["model"]["vae"], f"{checkpoint}:config.model.vae")
    model = Autoencoder(cfg)
    model.load_state_dict(state["ema"])
    weights = model.state_dict()  # taken before compiling: a compiled encoder's keys carry `_orig_mod.`
    ready_to_encode(model, speed, dist.device)
    stats = stream_statistics(model, shard_urls(shards, "train"), ldm, Precision(ldm.amp, dist.device), dist)
    norm = stats.norm(ldm.latent_norm, ldm.diffusion.sigma_data)
    source = (f"the first crops of train_ldm's training stream over the train shards ({ldm.resolution} px random "
              f"crops and flips, seed {ldm.seed}, batches of {ldm.batch_size}; latents: {ldm.latents}), "
              "exact posterior moments")
    stats_json = _latent_stats(stats, ldm.resolution, source, ldm.latent_norm, ldm.diffusion.sigma_data, norm)
    config = {
        "format": AUTOENCODER_FORMAT,
        "autoencoder": as_plain(cfg),
        "downsampling": DOWNSAMPLING,
        "image_range": "decode returns [0, 1]; the network itself works in [-1, 1]",
        "parameters": {"encoder": sum(p.numel() for p in model.encoder.parameters()),
                       "decoder": sum(p.numel() for p in model.decoder.parameters())},
        "source": {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                   "pretrain_steps": int(state.get("start_global_step", 0)), "finetune_steps": int(state["step"]),
                   "resolution": state["config"]["train"]["resolution"]},
        "params_hash": params_hash(params),
        "code": code_version(),
    }
    manifest_json, eval_json = _read_json(manifest), _read_json(eval_recon)
    return _write_folder(out, weights, config, stats_json, lambda final: autoencoder_card(
        final, stats_json, manifest_json, eval_json, final["params_hash"], sorted(params)))


def export_ldm(checkpoint: Path, autoencoder_export: Path, out: Path, params: dict, manifest: Path | None = None,
               train_metrics: Path | None = None, generation_metrics: Path | None = None) -> dict:
    """Export the EMA UNet of a `train_ldm` checkpoint into folder `out`, naming `autoencoder_export` (which must
    come from the autoencoder checkpoint the LDM was trained on); returns the config.json written."""
    state = load_checkpoint(checkpoint)
    trained = state["config"]
    vae_config = read_config(autoencoder_export, AUTOENCODER_FORMAT)
    if vae_config["source"]["checkpoint_sha256"] != trained["autoencoder_sha256"]:
        raise ConfigError(f"{autoencoder_export}: exported from {vae_config['source']['checkpoint']}, not from the "
                          f"autoencoder checkpoint {checkpoint} was trained on (SHA-256 differs); re-run export_vae "
                          "and train_ldm (dvc repro export_ldm)")
    cfg = parse(LDMConfig, trained["ldm"], f"{checkpoint}:config.ldm")
    norm = LatentNorm(**state["latent_norm"])
    stats = LatentStats.from_dict(state["latent_stats"])
    source = (f"the first crops of this LDM's training stream ({cfg.resolution} px random crops and flips, seed "
              f"{cfg.seed}), measured by train_ldm before it trained; exact posterior moments")
    stats_json = _latent_stats(stats, cfg.resolution, source, cfg.latent_norm, cfg.diffusion.sigma_data, norm)
    config = {
        "format": LDM_FORMAT,
        "unet": as_plain(cfg.unet),
        "diffusion": as_plain(cfg.diffusion),
        "latent_shape": list(trained["latent_shape"]),
        "resolution": cfg.resolution,
        "parameters": sum(t.numel() for t in state["ema"].values()),
        "autoencoder": {"export": os.path.relpath(Path(autoencoder_export).resolve(), Path(out).resolve()),
                        "weights_sha256": vae_config["weights_sha256"]},
        "source": {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                   "autoencoder_checkpoint_sha256": trained["autoencoder_sha256"], "steps": int(state["step"])},
        "params_hash": params_hash(params),
        "code": code_version(),
    }
    train_json, generation_json, manifest_json = (_read_json(p) for p in (train_metrics, generation_metrics, manifest))
    return _write_folder(out, state["ema"], config, stats_json, lambda final: ldm_card(
        final, stats_json, train_json, generation_json, final["params_hash"], sorted(params), manifest_json))
