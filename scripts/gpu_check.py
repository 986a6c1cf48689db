"""GPU check: the training stages' steps with bf16 autocast and the encoder benchmark at batch 32 next to the
paper's Table 3, with peak GPU memory per part, as one Markdown table.

    scripts/gpu_check.sh                                   # one GPU: set up, check the GPU, run this (< 5 min)
    python scripts/gpu_check.py --device cpu [--images DIR]   # the same commands at tiny size on the CPU

Every part is its stage's own command from dvc.yaml (`python -m pipeline.core.launch stages.pretrain_vae ...`),
run in a scratch folder (so dvc.yaml's relative paths land there) on a params.yaml made of the checkout's
params.yaml, profiles/paper.yaml (CUDA) and the check's overrides: few steps, `amp: bf16`, the encoder
benchmark on CUDA at `cuda_batch_size` 32. MLflow logs to a store in the scratch folder; the checkout is not
touched. The numbers come from each stage's metrics JSON and MLflow tags: training img/s is the stage's
median over its log windows (batch wait included), peak GPU memory is `torch.cuda.max_memory_allocated` over
the stage (validation included), the encoders' memory is the benchmark's peak above weights and input at
batch 32, plus the weights.

`--device cpu` runs the same parts at tiny size (LiteVAE-S-like models of a few thousand parameters, 32 px) on
the CPU: a check of the code path and the table's layout, whose rows say "cpu"; the benchmark's CUDA rows then
say "skipped: no CUDA". A part that fails or runs past the time budget leaves a row saying so and its log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from any directory

from pipeline.config.parsing import read_yaml
from pipeline.config.schema import load_params
from pipeline.core.files import write_bytes

PARTS = ("prepare", "pretrain_vae", "finetune_vae", "train_ldm", "benchmark_encoders")
PAPER_TABLE_3 = {  # Quadro RTX 6000, batch 32, 256 px: (img/s, GPU memory MB)
    "sd_vae": (68.0, 8860), "S": (384.0, 1324), "B": (129.0, 3155), "M": (42.24, 12130), "L": (41.6, 12130),
}
ENCODER_NAMES = {"sd_vae": "SD-VAE", "S": "LiteVAE-S", "B": "LiteVAE-B", "M": "LiteVAE-M", "L": "LiteVAE-L"}
TRAINING_WHAT = {
    "pretrain_vae": "VAE step, {params} (pretrain: L1, KL, wavelet, Gaussian{lpips})",
    "finetune_vae": "VAE step, {params} (finetune: + UNet discriminator{lpips})",
    "train_ldm": "LDM step, {params} UNet (on-the-fly encoding)",
}


def cuda_overrides(steps: int, amp: str) -> dict[str, Any]:
    """The paper's models at the paper's batch sizes for `steps` steps of each training stage, autocast `amp`."""
    loop = {"steps": steps, "amp": amp, "num_workers": 4, "log_every": max(1, steps // 5), "val_every": steps,
            "checkpoint_every": steps, "val_images": 8}
    return {
        "data": {"shard_max_samples": 2},  # enough shards for 4 loader workers
        "loss": {"perceptual": "auto", "disc_start": steps},  # LPIPS if its weights load; the discriminator in finetune
        "train_128": loop,
        "train_256": loop,
        "ldm": {**loop, "stats_crops": 256},
        "benchmark": {"devices": ["cuda"], "encoders": ["sd_vae", "S", "B", "M", "L"], "cuda_batch_size": 32,
                      "amp": "off", "repeats": 2, "min_timed_seconds": 3.0, "train_encoders": ["sd_vae", "S", "B"],
                      "train_resolutions": [128], "train_repeats": 1},
        # eager: compiling the paper's VAE, discriminator, 274M UNet and five encoders would take much of the
        # 5-minute budget; the compiled path is `dvc exp run -S speed.compile=on benchmark_encoders`
        "speed": {"compile": "off"},
        "launch": {"nproc_per_node": 1, "nnodes": 1},
    }


def cpu_overrides(images: Path | None) -> dict[str, Any]:
    """Tiny models at 32 px for 2 steps each: the same commands and code path on the CPU."""
    unet = {"channels": 8, "channel_mult": [1]}
    loop = {"resolution": 32, "steps": 2, "batch_size": 2, "num_workers": 0, "log_every": 1, "val_every": 2,
            "checkpoint_every": 2, "val_images": 2}
    data = {"source": "folder", "path": str(images), "watch": str(images), "storage_size": 64, "min_size": 32} if images else {}
    return {
        "data": {**data, "shard_max_samples": 2},
        "model": {
            "vae": {"latent_channels": 4,
                    "encoder": {"kind": "litevae", "preset": "S", "extractor": unet, "aggregator": unet,
                                "num_res_blocks": 1},
                    "decoder": {"ch": 8, "ch_mult": [1, 1, 1, 2], "num_res_blocks": 1, "mid_attention": False}},
            "discriminator": {"ch": 4, "ch_mult": [1, 2]},
        },
        "loss": {"perceptual": "off", "disc_start": 2},
        "train_128": loop,
        "train_256": loop,
        "ldm": {**loop, "unet": {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                 "attention_resolutions": [2], "num_heads": 2, "num_head_channels": None,
                                 "use_scale_shift_norm": True, "dropout": 0.0},
                "diffusion": {"sampling_steps": 2}, "stats_crops": 4, "grid_samples": 2},
        "benchmark": {"devices": ["cpu", "cuda"], "encoders": ["sd_vae", "S", "B"], "resolution": 32, "batch_size": 2,
                      "warmup": 1, "repeats": 1, "min_timed_seconds": 0.0, "peak_matmul_sizes": [64], "peak_conv_channels": [], "threads": 1,
                      "train_encoders": ["sd_vae", "S"], "train_resolutions": [16], "train_batch_size": 1},
        "launch": {"nproc_per_node": 1, "nnodes": 1},
    }


def merged(base: dict, overlay: dict) -> dict:
    """`base` with `overlay`'s leaves put in (nested mappings merged, everything else replaced)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def write_params(folder: Path, device: str, steps: int, images: Path | None) -> Path:
    """params.yaml for the check in `folder`, validated like every stage validates it."""
    import torch

    params = read_yaml(REPO / "params.yaml")
    if device == "cuda":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # bf16 needs Ampere or newer
        params = merged(merged(params, read_yaml(REPO / "profiles/paper.yaml")), cuda_overrides(steps, amp))
    else:
        params = merged(params, cpu_overrides(images))
    path = folder / "params.yaml"
    write_bytes(path, json.dumps(params, indent=1).encode())  # JSON is YAML
    load_params(path)
    return path


def stage_commands() -> dict[str, list[str]]:
    """dvc.yaml's command of every part, with `python` the interpreter running this script."""
    stages = read_yaml(REPO / "dvc.yaml")["stages"]
    commands = {}
    for part in PARTS:
        words = shlex.split(stages[part]["cmd"])
        commands[part] = [sys.executable if words[0] == "python" else words[0], *words[1:]]
    return commands


def metrics_path(command: list[str]) -> str:
    return command[command.index("--metrics") + 1]


def run_part(command: list[str], folder: Path, log: Path, timeout_s: float) -> str | None:
    """Run one stage command in `folder`; None on success, else what went wrong (the log has the rest)."""
    code_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # the checkout's code
    env = {**os.environ, "PYTHONPATH": code_path, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    with log.open("w") as out:
        try:
            code = subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, check=False,
                                  timeout=None if timeout_s == float("inf") else max(timeout_s, 1)).returncode
        except subprocess.TimeoutExpired:  # killed: the stages write outputs atomically
            return f"ran past the time budget; log: {log}"
    return None if code == 0 else f"exit {code}; log: {log}"


def run_tags(folder: Path) -> dict[str, dict[str, str]]:
    """The MLflow tags of each stage's run in the scratch store, by stage."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    tags = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            tags[run.data.tags.get("stage", "")] = dict(run.data.tags)
    return tags


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def training_row(part: str, metrics: dict, tags: dict[str, str], params: dict) -> list[str]:
    section = {"pretrain_vae": "train_128", "finetune_vae": "train_256", "train_ldm": "ldm"}[part]
    lpips = tags.get("perceptual", "")
    if part == "train_ldm":
        size = f"{metrics['unet_params'] / 1e6:.2f}M"
    else:
        size = f"encoder {metrics['encoder_params'] / 1e6:.2f}M + decoder {metrics['decoder_params'] / 1e6:.2f}M"
    perceptual = ", LPIPS" if lpips == "lpips" else f"; no LPIPS: {lpips}" if lpips else ""
    what = TRAINING_WHAT[part].format(params=size, lpips=perceptual)
    device = "cuda" if "peak_gpu_memory_mb" in metrics else "cpu"
    return [part, what, f"{device}, {tags.get('precision', '?')}",
            f"{metrics['batch_size']} x {params[section]['resolution']} px", str(metrics["steps"]),
            f"{_fmt(metrics['images_per_sec'])} img/s ({metrics['sec_per_step'] * 1e3:,.0f} ms/step)",
            _fmt(metrics.get("peak_gpu_memory_mb"), 0), "-"]


def encoder_rows(result: dict) -> list[list[str]]:
    rows = []
    for device in ("cuda", "cpu"):
        section = result.get(device)
        if section is None:
            continue
        if "skipped" in section:
            rows.append(["benchmark_encoders", "encoder inference, every encoder", device,
                         "-", "-", f"skipped: {section['skipped']}", "-", "-"])
            continue
        inference = section["inference"]
        batch = inference["batch_size"]
        for name, row in inference["rows"].items():
            speed = row["images_per_s"]
            memory = row["memory_mb_per_image"] * batch + row["weights_mb"]
            paper_speed, paper_memory = PAPER_TABLE_3[name]
            paper_ratio = paper_speed / PAPER_TABLE_3["sd_vae"][0]
            rows.append([
                "benchmark_encoders", f"{ENCODER_NAMES[name]} encoder inference ({row['params_m']:.2f}M)",
                f"{device}, {section['precision']}", f"{batch} x {inference['resolution']} px",
                f"{len(row['seconds_per_pass'])} timed passes",
                (f"{_fmt(speed['median'])} img/s [{_fmt(speed['min'])}-{_fmt(speed['max'])}], "
                 f"{row['throughput_ratio']:.2f}x SD-VAE"),
                _fmt(memory, 0), f"{paper_speed:g} img/s ({paper_ratio:.2f}x), {paper_memory:,} MB",
            ])
    return rows


HEADER = ["part", "what", "device, precision", "batch x size", "steps", "throughput", "peak memory (MB)",
          "paper Table 3 (RTX 6000, batch 32)"]


def table(rows: list[list[str]], caption: list[str]) -> str:
    lines = [f"- {line}" for line in caption] + ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "# GPU check\n\n" + "\n".join(lines) + "\n"


def check(device: str, out: Path, folder: Path, steps: int, budget_s: float, images: Path | None) -> int:
    """Run every part in `folder`, write the table to `out`; returns the number of failed parts."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (built for CUDA "
                         f"{torch.version.cuda}); run it on a machine with an NVIDIA GPU and driver, or "
                         "`python scripts/gpu_check.py --device cpu` for the tiny CPU run")
    params_file = write_params(folder, device, steps, images)
    params = read_yaml(params_file)
    commands = stage_commands()
    (folder / "logs").mkdir(exist_ok=True)
    started = time.monotonic()
    outcome: dict[str, str | None] = {}
    seconds: dict[str, float] = {}
    for part in PARTS:
        left = budget_s - (time.monotonic() - started)
        upstream_failed = part != "benchmark_encoders" and any(outcome.get(p) for p in PARTS[:PARTS.index(part)])
        if upstream_failed:
            outcome[part] = "not run: an earlier part failed"
            continue
        if left <= 0:
            outcome[part] = "not run: the time budget is spent"
            continue
        began = time.monotonic()
        print(f"gpu_check: {part} ...", flush=True)
        outcome[part] = run_part(commands[part], folder, folder / "logs" / f"{part}.log", left)
        seconds[part] = time.monotonic() - began
        print(f"gpu_check: {part} {'done' if outcome[part] is None else outcome[part]} in {seconds[part]:.0f} s",
              flush=True)

    tags = run_tags(folder)
    rows, switches = [], []
    for part in PARTS:
        if outcome[part] is not None:
            rows.append([part, "-", device, "-", "-", outcome[part], "-", "-"])
        elif part == "prepare":
            manifest = json.loads((folder / metrics_path(commands[part])).read_text())
            counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in manifest.items() if isinstance(v, int))
            rows.append([part, f"WebDataset shards ({counts})", "cpu", "-", "-", f"{seconds[part]:.0f} s", "-", "-"])
        elif part == "benchmark_encoders":
            result = json.loads((folder / metrics_path(commands[part])).read_text())
            rows += encoder_rows(result)
            switches += [f"encoder benchmark on {where}: " + ", ".join(f"{k}={v}" for k, v in on["switches"].items())
                         for where, on in result.items() if "switches" in on]
        else:
            metrics = json.loads((folder / metrics_path(commands[part])).read_text())
            rows.append(training_row(part, metrics, tags.get(part, {}), params))
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (tiny models: a code-path check, no GPU numbers)"
    caption = [(f"{name}; torch {torch.__version__}; {time.monotonic() - started:.0f} s for all parts; scratch "
                f"folder {folder}"),
               "training rows: dvc.yaml's stage commands on params.yaml + profiles/paper.yaml + the check's overrides"
               if device == "cuda" else "training rows: dvc.yaml's stage commands with tiny models at 32 px",
               ("throughput: median over the stage's log windows; training memory: the stage's "
                "torch.cuda.max_memory_allocated (GPU only); encoder memory: the benchmark's peak tensor memory above "
                "weights and input for the whole batch, plus the weights (the paper does not say how it measured)"),
               *switches]
    text = table(rows, caption)
    write_bytes(out, text.encode())
    print(text, flush=True)
    return sum(1 for value in outcome.values() if value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "gpu_check.md", help="the Markdown table")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=50, help="steps of each training stage (CUDA)")
    parser.add_argument("--budget-s", type=float, help="seconds for all parts (default: 250 on CUDA, none on the "
                        "CPU); a part still running then is stopped and later ones are skipped")
    parser.add_argument("--images", type=Path, help="an image folder instead of the embedded photos (CPU runs)")
    args = parser.parse_args()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    folder.mkdir(parents=True, exist_ok=True)
    budget_s = args.budget_s or (250.0 if args.device == "cuda" else float("inf"))
    failed = check(args.device, args.out.resolve(), folder.resolve(), args.steps, budget_s, args.images)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
