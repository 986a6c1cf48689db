"""DVC stage `finetune_vae`: train LiteVAE at 256 px (section `train_256`). Runs alone or under torchrun (DDP)."""

from __future__ import annotations

from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.training.vae_stage import add_arguments, run

PARAMS = ("model", "loss", "train_256", "speed")  # the params.yaml sections this stage reads: dvc.yaml lists exactly these


def main() -> None:
    parser = stage_parser(__doc__)
    add_arguments(parser)
    run("finetune_vae", PARAMS, parser.parse_args())


if __name__ == "__main__":
    exit_on_user_error(main)
