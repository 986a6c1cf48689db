"""DVC stage `export_vae`: the fine-tuned EMA autoencoder as an export folder (safetensors weights, config.json,
latent_stats.json, a model card; pipeline/export/layout.py), its latent statistics measured exactly as `train_ldm`
measures them (section `ldm`); logged to MLflow as a pyfunc model from these files and registered as
`tracking.vae_model_name`. The other sections it reads are the model's lineage, hashed into the card.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.checkpoint import as_plain
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.distributed import setup, teardown
from pipeline.core.tracking import stage_run
from pipeline.export.registry import register_autoencoder
from pipeline.export.writer import export_autoencoder

PARAMS = ("data", "model", "loss", "train_128", "train_256", "ldm", "speed")  # dvc.yaml lists exactly these


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned VAE checkpoint")
    parser.add_argument("--shards", required=True,
                        help="prepare's shard folder, or the URL of a copy of it (the training stream)")
    parser.add_argument("--manifest", type=Path, help="prepare's manifest, for the model card")
    parser.add_argument("--eval-recon", type=Path, help="eval_recon's metrics JSON, for the model card")
    parser.add_argument("--out", type=Path, required=True, help="the export folder (DVC output)")
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    dist = setup()  # the device train_ldm measures its statistics on
    try:
        with stage_run("export_vae", {"ldm": params["ldm"], "speed": params["speed"]},
                       params["tracking"].experiment) as tracker:
            export_autoencoder(args.checkpoint, args.shards, params["ldm"], args.out, dist,
                               {name: as_plain(params[name]) for name in PARAMS}, args.manifest, args.eval_recon,
                               params["speed"])
            register_autoencoder(tracker, args.out, params["tracking"].vae_model_name)
    finally:
        teardown(dist)


if __name__ == "__main__":
    exit_on_user_error(main)
