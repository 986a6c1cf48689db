"""DVC stage `pretrain_vae`: train LiteVAE at 128 px (section `train_128`). Runs alone or under torchrun (DDP)."""

from __future__ import annotations

from pipeline.cli import run_stage, stage_parser
from pipeline.vae_stage import add_arguments, run


def main() -> None:
    parser = stage_parser(__doc__)
    add_arguments(parser)
    run("pretrain_vae", "train_128", parser.parse_args(), register=False)


if __name__ == "__main__":
    run_stage(main)
