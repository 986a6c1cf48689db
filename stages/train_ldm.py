"""DVC stage `train_ldm`: train the latent-diffusion UNet (section `ldm`) on latents of the frozen fine-tuned
autoencoder, normalised with statistics it first measures on its own training stream. Runs alone or under torchrun
(DDP).

Writes the final training state (the DVC output; its EMA UNet is what `eval_generation` samples), the metrics
JSON and, into the plots folder, `losses.csv`, `val.csv` and `samples.png`; logs all but the training state to
MLflow (which records that by its DVC path and md5: checkpoints are stored once, by DVC) with the loss curves, a
sample grid every `ldm.val_every` steps, the latent normalisation as tags (`latent_norm`, `latent_shift`,
`latent_scale`). The `export_ldm` stage exports the EMA UNet and registers it in MLflow. The training protocol
is in pipeline/ldm/training.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.distributed import setup, teardown
from pipeline.core.tracking import stage_run
from pipeline.ldm.training import train_ldm
from pipeline.training.loop import StageOutputs

PARAMS = ("ldm", "speed")  # the params.yaml sections this stage reads: dvc.yaml lists exactly these


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--shards", required=True, help="prepare's shard folder, or the URL of a copy of it")
    parser.add_argument("--autoencoder", type=Path, required=True, help="fine-tuned VAE checkpoint (frozen)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="final training state (DVC output)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="folder for loss curves and the sample grid")
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    dist = setup()
    try:
        with stage_run("train_ldm", {"ldm": params["ldm"], "speed": params["speed"]}, params["tracking"].experiment,
                       enabled=dist.is_main) as tracker:
            train_ldm(params["ldm"], args.autoencoder, args.shards, StageOutputs(args.checkpoint, args.metrics, args.plots),
                      tracker, dist, params["speed"])
    finally:
        teardown(dist)


if __name__ == "__main__":
    exit_on_user_error(main)
