"""Where an encoder's inference time goes, by op type: one batch-parallel task (the benchmark's images per worker,
one intra-op thread) under torch.profiler, with the layout the `speed` section gives for CPU inference.

    python scripts/profile_encoder.py [--encoders S sd_vae] [--images 4] [--resolution 256] [--params params.yaml]

Prints, per encoder, the images/s of that one thread (median of 5 untimed-profiler passes) and the self time of
each ATen op type as a share of the total: convolutions (mkldnn_convolution; _slow_conv2d_forward is the GEMM
path PyTorch picks for some 1x1 convolutions), GroupNorm, SiLU, cat (the UNet skips), add (residuals), pooling and
the Haar transform's pixel_unshuffle. The shares say which kind of work a speed-up has to remove; the throughput
of both cores is the benchmark's (`dvc repro -f benchmark_encoders`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from pipeline.benchmark.encoders import build
from pipeline.benchmark.measure import retain_freed_memory
from pipeline.config.schema import load_params
from pipeline.core.speed import set_layout

CPU = torch.device("cpu")


def profile(name: str, images: int, resolution: int, speed, latent_channels: int) -> None:
    model = set_layout(build(name, latent_channels).eval(), speed, CPU, training=False)
    batch = torch.rand(images, 3, resolution, resolution) * 2 - 1
    with torch.inference_mode():
        model(batch)  # warm-up: oneDNN picks and caches its kernels
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            model(batch)
            seconds.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(batch)
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") and event.self_cpu_time_total > 0:
            by_op[event.key.removeprefix("aten::")] += event.self_cpu_time_total
    total = sum(by_op.values())
    print(f"\n{name}: {images / statistics.median(seconds):.2f} img/s on one thread, {images} x {resolution} px, "
          f"channels_last={speed.uses_channels_last(CPU, training=False)}")
    for op, micros in sorted(by_op.items(), key=lambda item: -item[1]):
        if micros / total >= 0.005:
            print(f"  {op:36s} {micros / 1e3:8.1f} ms {micros / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["S", "sd_vae"])
    parser.add_argument("--images", type=int, default=4, help="images per task (the benchmark's: batch / threads)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params, "benchmark", "speed")
    retain_freed_memory()
    torch.set_num_threads(1)
    for name in args.encoders:
        profile(name, args.images, args.resolution, params["speed"], params["benchmark"].latent_channels)


if __name__ == "__main__":
    main()
