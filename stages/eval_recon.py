"""DVC stage `eval_recon`: rFID, KID, LPIPS, PSNR and SSIM of the fine-tuned EMA autoencoder on the val set under
two named protocols: `resized_views` (whole central squares resized to r, at `eval.resolution` and across
`eval.resolutions`: Fig. 5) and `native_crops` (crops at `eval.resolution` tiled at the stored scale, as training
validation, next to the flat-colour and bicubic x8 baselines); and a reconstruction grid.

Writes the metrics JSON (one section per protocol, described under `protocols`) and, into the plots folder,
`sweep_{rfid,lpips,psnr,ssim}.csv` (DVC plots), `resolution_sweep.png` and `reconstructions.png`; logs all of
them to MLflow with the metrics (headline as `<protocol>/<metric>` at step 0, the resized-views sweep as
`sweep_<metric>` with the resolution as step) and, for a metric whose pretrained weights are missing, the reason
as tag `unavailable.<metric>`. The protocols are in pipeline/evaluation/reconstruction.py.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.files import write_json
from pipeline.core.tracking import stage_run
from pipeline.evaluation.reconstruction import SWEEP_METRICS, eval_recon

PARAMS = ("eval",)  # the params.yaml sections this stage reads: dvc.yaml lists exactly these

HEADLINE = {  # logged to MLflow as `<protocol>/<metric>`
    "resized_views": ("rfid", "kid", "lpips", "psnr", "ssim"),
    "native_crops": ("psnr", "ssim", "lpips", "baseline_flat_psnr", "baseline_flat_ssim",
                     "baseline_bicubic_x8_psnr", "baseline_bicubic_x8_ssim"),
}


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--shards", required=True, help="prepare's shard folder, or the URL of a copy of it")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="folder for the sweep plots and the grid")
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    with stage_run("eval_recon", {"eval": params["eval"]}, params["tracking"].experiment) as tracker:
        metrics, files = eval_recon(params["eval"], args.checkpoint, args.shards, args.plots)
        write_json(args.metrics, metrics)
        tracker.set_tags({f"unavailable.{name}": reason for name, reason in metrics["unavailable"].items()})
        for protocol, keys in HEADLINE.items():
            scores = metrics[protocol] or {}  # native_crops is None when no val image holds a crop
            tracker.log_metrics({f"{protocol}/{k}": scores[k] for k in keys if scores.get(k) is not None}, step=0)
        for resolution, scores in metrics["sweep"].items():
            tracker.log_metrics({f"sweep_{k}": scores[k] for k in SWEEP_METRICS if scores[k] is not None},
                                step=int(resolution))
        for path in (args.metrics, *files):
            tracker.log_artifact(path)


if __name__ == "__main__":
    exit_on_user_error(main)
