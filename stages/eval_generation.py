"""DVC stage `eval_generation`: sample the EMA UNet of `train_ldm` with a fixed seed, decode the samples with the
fine-tuned autoencoder, and score them with FID and KID against crops of the train (and val) images (paper
Table 7).

Writes the metrics JSON and the sample grid PNG; logs both to MLflow with `fid`, `kid` (against the first
reference set) and `fid_<set>`, `kid_<set>` and, when the Inception weights are missing, the reason as tags
`unavailable.fid` and `unavailable.kid`, and the mean multi-scale sliced Wasserstein distances (Karras et al. 2018)
`swd_samples`, `swd_real_floor` (with both reference sets) and `swd_noise_ceiling`. The protocol is in
pipeline/evaluation/generation.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.files import write_json
from pipeline.core.tracking import stage_run
from pipeline.evaluation.generation import eval_generation
from pipeline.ldm.sampling import load_sampler

PARAMS = ("generation",)  # the params.yaml sections this stage reads: dvc.yaml lists exactly these


def tracked_metrics(metrics: dict) -> dict[str, float]:
    """The headline scores, the per-reference-set ones that are available and the SWD means."""
    out = {k: metrics[k] for k in ("fid", "kid", "seconds_per_sample") if metrics[k] is not None}
    for split, scores in metrics["reference"].items():
        if scores is not None:
            out |= {f"fid_{split}": scores["fid"], f"kid_{split}": scores["kid"]}
    if metrics["real_floor"] is not None:
        out |= {"fid_real_floor": metrics["real_floor"]["fid"], "kid_real_floor": metrics["real_floor"]["kid"]}
    out |= {f"swd_{name}": metrics["swd"][name]["mean"] for name in ("samples", "real_floor", "noise_ceiling")
            if metrics["swd"][name] is not None}
    return out


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="train_ldm's checkpoint")
    parser.add_argument("--autoencoder", type=Path, required=True, help="the fine-tuned VAE it was trained on")
    parser.add_argument("--shards", required=True, help="prepare's shard folder, or the URL of a copy of it")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True, help="sample grid PNG")
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with stage_run("eval_generation", {"generation": params["generation"]},
                   params["tracking"].experiment) as tracker:
        model, autoencoder = load_sampler(args.checkpoint, args.autoencoder)
        model.unet.to(device)
        autoencoder.to(device)
        metrics = eval_generation(params["generation"], model, autoencoder, args.shards, args.grid)
        metrics["checkpoint"] = str(args.checkpoint)
        write_json(args.metrics, metrics)
        tracker.set_tags({f"unavailable.{name}": reason for name, reason in metrics["unavailable"].items()})
        tracker.log_metrics(tracked_metrics(metrics), step=0)
        for path in (args.metrics, args.grid):
            tracker.log_artifact(path)


if __name__ == "__main__":
    exit_on_user_error(main)
