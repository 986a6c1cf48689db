"""DVC stage `finetune_vae`: train LiteVAE at 256 px (section `train_256`). Runs alone or under torchrun (DDP)."""

from __future__ import annotations

from pipeline.cli import run_stage, stage_parser
from pipeline.vae_stage import add_arguments, run


def main() -> None:
    parser = stage_parser(__doc__)
    add_arguments(parser)
    run("finetune_vae", "train_256", parser.parse_args(), register=True)


if __name__ == "__main__":
    run_stage(main)
