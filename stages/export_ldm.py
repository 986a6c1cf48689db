"""DVC stage `export_ldm`: the EMA UNet of `train_ldm` as an export folder (safetensors weights, config.json with
its sampler settings, the latent normalisation it was trained with, a model card; pipeline/export/layout.py) that
names the autoencoder export it decodes with; logged to MLflow as a pyfunc sampler from these files and registered
as `tracking.ldm_model_name`. The sections it reads are the model's lineage, hashed into the card.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.checkpoint import as_plain
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.tracking import stage_run
from pipeline.export.registry import register_ldm
from pipeline.export.writer import export_ldm

PARAMS = ("data", "model", "loss", "train_128", "train_256", "ldm", "speed", "generation")  # dvc.yaml lists exactly these


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="train_ldm's checkpoint")
    parser.add_argument("--autoencoder", type=Path, required=True, help="the autoencoder export folder")
    parser.add_argument("--manifest", type=Path, help="prepare's manifest, for the model card")
    parser.add_argument("--train-metrics", type=Path, help="train_ldm's metrics JSON, for the model card")
    parser.add_argument("--generation-metrics", type=Path, help="eval_generation's metrics JSON, for the model card")
    parser.add_argument("--out", type=Path, required=True, help="the export folder (DVC output)")
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    with stage_run("export_ldm", {"ldm": params["ldm"]}, params["tracking"].experiment) as tracker:
        export_ldm(args.checkpoint, args.autoencoder, args.out, {name: as_plain(params[name]) for name in PARAMS},
                   args.manifest, args.train_metrics, args.generation_metrics)
        register_ldm(tracker, args.out, args.autoencoder, params["tracking"].ldm_model_name)


if __name__ == "__main__":
    exit_on_user_error(main)
