"""Where an encoder's inference time goes, by op type: one batch-parallel task (the benchmark's images per worker,
one intra-op thread) under torch.profiler, with the layout the `speed` section gives for CPU inference.

    python scripts/profile_encoder.py [--encoders sd_vae S B] [--images 4] [--resolution 256] [--params params.yaml]

Prints, per encoder, the images/s of that one thread and the self time of each ATen op type as a share of the
total: convolutions (mkldnn_convolution; _slow_conv2d_forward is the GEMM path PyTorch picks for some 1x1
convolutions), GroupNorm, SiLU, cat (the UNet skips), add (residuals), pooling and the Haar transform's
pixel_unshuffle. It also times the encoder's convolutions alone, replayed on the inputs they saw: the throughput
the encoder would reach if every other op were free, i.e. the most that fusing or removing element-wise work can
buy with these convolution kernels. Whole passes and convolution replays alternate (median of 5 each), and every
encoder is compared with the first one named (SD-VAE by default: `--encoders sd_vae S`) within this one run. The
shares say which kind of work a speed-up has to remove; the throughput of both cores is the benchmark's
(`dvc repro -f benchmark_encoders`).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.benchmark.encoders import build
from pipeline.benchmark.measure import elapsed, retain_freed_memory
from pipeline.config.schema import load_params
from pipeline.core.speed import set_layout

CPU = torch.device("cpu")


def recorded_convolutions(model: nn.Module, batch: Tensor) -> list[tuple[nn.Conv2d, Tensor]]:
    """Every convolution of one forward pass of `model` on `batch`, with the input it saw, in call order."""
    calls: list[tuple[nn.Conv2d, Tensor]] = []
    hooks = [module.register_forward_hook(lambda conv, args, _output: calls.append((conv, args[0])))
             for module in model.modules() if isinstance(module, nn.Conv2d)]
    try:
        model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


@dataclass
class Profile:
    name: str
    images_per_s: float  # the whole encoder on one thread
    convolutions_images_per_s: float  # its convolutions alone, every other op free


def profile(name: str, images: int, resolution: int, speed, latent_channels: int) -> Profile:
    model = set_layout(build(name, latent_channels).eval(), speed, CPU, training=False)
    batch = torch.rand(images, 3, resolution, resolution) * 2 - 1
    with torch.inference_mode():
        model(batch)  # warm-up: oneDNN picks and caches its kernels
        convolutions = recorded_convolutions(model, batch)

        def replay() -> None:
            for conv, conv_input in convolutions:
                conv(conv_input)

        whole, convs_alone = [], []
        for _ in range(5):  # alternating, so that both see the same state of the machine
            whole.append(elapsed(lambda: model(batch), CPU))
            convs_alone.append(elapsed(replay, CPU))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(batch)
    by_op: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") and event.self_cpu_time_total > 0:
            by_op[event.key.removeprefix("aten::")] += event.self_cpu_time_total / 1e6
    result = Profile(name, images / statistics.median(whole), images / statistics.median(convs_alone))
    total = sum(by_op.values())
    print(f"\n{name}: {result.images_per_s:.2f} img/s on one thread, {images} x {resolution} px, "
          f"channels_last={speed.uses_channels_last(CPU, training=False)}; its {len(convolutions)} convolutions "
          f"alone: {result.convolutions_images_per_s:.2f} img/s")
    for op, seconds in sorted(by_op.items(), key=lambda item: -item[1]):
        if seconds / total >= 0.005:
            print(f"  {op:36s} {seconds * 1e3:8.1f} ms {seconds / total:6.1%}")
    return result


def print_ratios(profiles: list[Profile]) -> None:
    """Each encoder's throughput, whole and convolutions alone, over the first encoder's whole throughput."""
    reference = profiles[0]
    print(f"\nthroughput over {reference.name}'s whole encoder (one thread, this run):")
    for result in profiles[1:]:
        print(f"{result.name}: {result.images_per_s / reference.images_per_s:.2f}x, its convolutions alone "
              f"{result.convolutions_images_per_s / reference.images_per_s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["sd_vae", "S"],
                        help="encoders to profile; the others are compared with the first")
    parser.add_argument("--images", type=int, default=4, help="images per task (the benchmark's: batch / threads)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params, "benchmark", "speed")
    retain_freed_memory()
    torch.set_num_threads(1)
    profiles = [profile(name, args.images, args.resolution, params["speed"], params["benchmark"].latent_channels)
                for name in args.encoders]
    if len(profiles) > 1:
        print_ratios(profiles)


if __name__ == "__main__":
    main()
