"""DVC stage `prepare`: source images -> train/val WebDataset shards, manifest, contact sheet."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.files import write_json
from pipeline.core.tracking import stage_run
from pipeline.data.prepare import check_watched, prepare

PARAMS = ("data",)  # the params.yaml sections this stage reads: dvc.yaml lists exactly these


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--contact-sheet", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    check_watched(params["data"])
    with stage_run("prepare", {"data": params["data"]}, params["tracking"].experiment) as tracker:
        summary = prepare(params["data"], args.shards, args.manifest, args.contact_sheet)
        write_json(args.metrics, summary)
        tracker.log_metrics(summary, step=0)
        for path in (args.manifest, args.contact_sheet, args.metrics):
            tracker.log_artifact(path)


if __name__ == "__main__":
    exit_on_user_error(main)
