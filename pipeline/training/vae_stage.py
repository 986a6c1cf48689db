"""What the `pretrain_vae` and `finetune_vae` stage CLIs share: arguments, process group, tracking."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.distributed import setup, teardown
from pipeline.core.tracking import stage_run
from pipeline.training.loop import StageOutputs
from pipeline.training.vae import train_vae


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="prepare's shard folder, or the URL of a copy of it")
    parser.add_argument("--checkpoint", type=Path, required=True, help="final training state (DVC output)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="folder for loss curves and grids")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (e.g. the pretrain stage's)")


def run(stage: str, sections: tuple[str, str, str, str], args: argparse.Namespace) -> dict:
    """Train one VAE stage from `args` with the params `sections` (model, loss, training section, speed). The
    trained autoencoder reaches MLflow's model registry through the `export_vae` stage."""
    params = load_params(args.params, *sections, "tracking")
    model, loss, train, speed = (params[name] for name in sections)
    dist = setup()
    try:
        with stage_run(stage, {name: params[name] for name in sections}, params["tracking"].experiment,
                       enabled=dist.is_main) as tracker:
            outputs = StageOutputs(args.checkpoint, args.metrics, args.plots)
            summary = train_vae(stage, model, loss, train, args.shards, outputs, tracker, dist, init=args.init,
                                section=sections[2], speed=speed)
        return summary
    finally:
        teardown(dist)
