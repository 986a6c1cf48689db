"""DVC stage `analyze_latents`: MMD of the latents to N(0, I) (Table 6), their scale and shift (for analysis:
`train_ldm` measures its own on its training stream), and a picture of the latents (Figs. 2, 4); optionally
beside a baseline VAE (`latents.baseline_checkpoint`).

Logs the metrics JSON and the picture to MLflow, with `mmd_sigma<s>` (mean over draws),
`mmd_normalised_sigma<s>` and the `baseline_` versions, and `latent_scale` / `latent_shift`. The protocol is in
pipeline/evaluation/latent_analysis.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.files import write_json
from pipeline.core.tracking import stage_run
from pipeline.evaluation.latent_analysis import analyze_latents

PARAMS = ("latents",)  # the params.yaml sections this stage reads: dvc.yaml lists exactly these


def tracked_metrics(metrics: dict) -> dict[str, float]:
    """The numbers worth a chart: MMD means per bandwidth, scale and shift, for the model and the baseline."""
    out = {}
    for role, prefix in (("model", ""), ("baseline", "baseline_")):
        if role not in metrics:
            continue
        report = metrics[role]
        for kind in ("mmd", "mmd_normalised"):
            out.update({f"{prefix}{kind}_sigma{sigma}": value["mean"] for sigma, value in report[kind].items()})
        out[f"{prefix}latent_scale"], out[f"{prefix}latent_shift"] = report["scale"], report["shift"]
    return out


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--shards", required=True, help="prepare's shard folder, or the URL of a copy of it")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--picture", type=Path, required=True)
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    with stage_run("analyze_latents", {"latents": params["latents"]}, params["tracking"].experiment) as tracker:
        metrics = analyze_latents(params["latents"], args.checkpoint, args.shards, args.picture)
        write_json(args.metrics, metrics)
        tracker.log_metrics(tracked_metrics(metrics), step=0)
        for path in (args.metrics, args.picture):
            tracker.log_artifact(path)


if __name__ == "__main__":
    exit_on_user_error(main)
