"""What the `pretrain_vae` and `finetune_vae` stage CLIs share: params, process group, tracking, export."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.distributed import setup, teardown
from pipeline.params import load_params
from pipeline.tracking import stage_run
from pipeline.vae_training import StageOutputs, train_vae


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="folder of prepared shards")
    parser.add_argument("--checkpoint", type=Path, required=True, help="final training state (DVC output)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="folder for loss curves and grids")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (e.g. the pretrain stage's)")


def run(stage: str, train_section: str, args: argparse.Namespace, register: bool) -> dict:
    """Train one VAE stage from `args`; with `register`, export the EMA autoencoder to MLflow's registry."""
    params = load_params(args.params, "model", "loss", train_section, "tracking")
    dist = setup()
    try:
        sections = {k: params[k] for k in ("model", "loss", train_section)}
        with stage_run(stage, sections, params["tracking"].experiment, enabled=dist.is_main) as tracker:
            outputs = StageOutputs(args.checkpoint, args.metrics, args.plots)
            trainer_summary = train_vae(stage, params["model"], params["loss"], params[train_section],
                                        args.shards, outputs, tracker, dist, init=args.init)
            if register and dist.is_main:
                from pipeline.checkpoint import load_autoencoder

                model, _ = load_autoencoder(args.checkpoint)
                tracker.log_model(model, "autoencoder", params["tracking"].vae_model_name)
        return trainer_summary
    finally:
        teardown(dist)
