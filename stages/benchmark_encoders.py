"""DVC stage `benchmark_encoders`: the paper's Table 3 on this machine. SD-VAE and LiteVAE S/B/M/L encoders'
parameters, GFLOPs, throughput, memory and forward+backward cost, with ratios against SD-VAE."""

from __future__ import annotations

from pathlib import Path

from pipeline.benchmark.encoders import run_benchmark
from pipeline.benchmark.report import flat_metrics, markdown_table, table_png
from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error, stage_parser
from pipeline.core.files import write_bytes, write_json
from pipeline.core.tracking import stage_run

PARAMS = ("benchmark", "speed")  # the params.yaml sections this stage reads: dvc.yaml lists exactly these


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--table", type=Path, required=True, help="Markdown table")
    parser.add_argument("--table-png", type=Path, required=True, help="the table as a PNG")
    args = parser.parse_args()

    params = load_params(args.params, *PARAMS, "tracking")
    cfg, speed = params["benchmark"], params["speed"]
    with stage_run("benchmark_encoders", {"benchmark": cfg, "speed": speed}, params["tracking"].experiment) as tracker:
        result = run_benchmark(cfg, speed, log=lambda line: print(line, flush=True))
        table = markdown_table(result)
        print(table, flush=True)
        write_json(args.metrics, result)
        write_bytes(args.table, table.encode())
        write_bytes(args.table_png, table_png(result))
        tracker.log_metrics(flat_metrics(result), step=0)
        tracker.set_tags({f"switch.{device}.{key}": value for device in ("cpu", "cuda")
                          for key, value in result.get(device, {}).get("switches", {}).items()})
        for path in (args.metrics, args.table, args.table_png):
            tracker.log_artifact(path)


if __name__ == "__main__":
    exit_on_user_error(main)
