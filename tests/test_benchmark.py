"""The encoder benchmark: its counters against hand counts, its executor, the optimised encoders against a
straightforward implementation, and the structure and arithmetic of its result. No timing assertions."""

import json
import statistics
import sys
import threading
from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import AttentionBlock, ResBlock
from models.litevae_encoder import EncoderConfig, LiteVAEEncoder, UNetSpec
from models.sd_vae import Downsample, SDEncoderSpec, SDVAEEncoder
from models.wavelets import haar_pyramid
from pipeline.benchmark.encoders import inference, run_benchmark, training_step
from pipeline.benchmark.measure import (
    BatchParallel,
    ConvProbe,
    MatmulProbe,
    PeakTensorMemory,
    count_gflops,
    cpu_threads,
)
from pipeline.config.parsing import ConfigError, parse
from pipeline.config.schema import BenchmarkConfig, load_params
from pipeline.core.precision import Precision

CPU_FP32 = Precision("off", torch.device("cpu"))
TINY = BenchmarkConfig(encoders=("sd_vae", "S"), resolution=16, batch_size=3, repeats=2, peak_matmul_sizes=(32,),
                       peak_conv_channels=(64,), devices=("cpu",), retain_freed_memory=False, train_encoders=("sd_vae", "S"),
                       train_batch_size=2)


# A straightforward implementation of both encoders, written from the paper and SD's model.py: out-of-place
# ops, torch.cat for the skips, NCHW, the whole batch in one call. The optimised modules must match it.

def ref_norm_act_conv(layers: nn.Sequential, x):
    norm, _, conv = layers
    return conv(F.silu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)))


def ref_resblock(block: ResBlock, x):
    return block.skip(x) + ref_norm_act_conv(block.block_out, ref_norm_act_conv(block.block_in, x))


def ref_attention(block: AttentionBlock, x):
    batch, channels, height, width = x.shape
    q, k, v = block.qkv(block.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)  # (B, C, HW)
    weights = torch.softmax(q.transpose(1, 2) @ k / channels**0.5, dim=-1)  # (B, HW, HW)
    h = (v @ weights.transpose(1, 2)).reshape(batch, channels, height, width)  # (B, C, H, W)
    return x + block.proj_out(h)


def ref_unet(unet, x):
    x = unet.conv_in(x)
    skips = []
    for block in unet.down:
        x = ref_resblock(block, x)
        skips.append(x)
    for block in unet.mid:
        x = ref_resblock(block, x)
    for block in unet.up:
        x = ref_resblock(block, torch.cat([x, skips.pop()], dim=1))
    return unet.conv_out(x)


def ref_litevae(encoder: LiteVAEEncoder, image):
    features = []
    for level, coeffs in enumerate(haar_pyramid(image, 3), start=1):
        feature = ref_unet(encoder.extractors[level - 1], coeffs / 2**level)
        features.append(F.avg_pool2d(feature, 2 ** (3 - level)) if level < 3 else feature)
    return ref_unet(encoder.aggregator, torch.cat(features, dim=1))


def ref_sd_vae(encoder: SDVAEEncoder, image):
    x = encoder.conv_in(image)
    for layer in encoder.stages:
        x = layer.conv(F.pad(x, (0, 1, 0, 1))) if isinstance(layer, Downsample) else ref_resblock(layer, x)
    resblock_in, attention, resblock_out = encoder.mid
    x = ref_resblock(resblock_out, ref_attention(attention, ref_resblock(resblock_in, x)))
    return ref_norm_act_conv(encoder.out, x)


ENCODERS = {
    "litevae_s": (lambda: LiteVAEEncoder(EncoderConfig(preset="S"), 12), ref_litevae, 32),
    "litevae_tiny": (lambda: LiteVAEEncoder(
        EncoderConfig(extractor=UNetSpec(8, (1, 2)), aggregator=UNetSpec(8, (1, 3)), num_res_blocks=1), 4),
        ref_litevae, 32),
    "sd_vae_narrow": (lambda: SDVAEEncoder(SDEncoderSpec(32, (1, 2, 4, 4), 2), 4), ref_sd_vae, 16),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_optimised_inference_equals_the_straightforward_implementation(name):
    make, reference, side = ENCODERS[name]
    torch.manual_seed(0)
    model = make().eval()
    images = torch.rand(3, 3, side, side) * 2 - 1
    with torch.no_grad():
        expected = reference(model, images)
    # the benchmark's path: channels_last, inference mode, images spread over two single-threaded workers
    model.to(memory_format=torch.channels_last)
    executor = BatchParallel(2)
    with cpu_threads(1):
        outputs = executor(inference(model, CPU_FP32), images)
    executor.close()
    torch.testing.assert_close(torch.cat(outputs), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["litevae_tiny", "sd_vae_narrow"])
def test_optimised_gradients_equal_the_straightforward_implementation(name):
    make, reference, side = ENCODERS[name]
    torch.manual_seed(0)
    model = make()
    images = torch.rand(2, 3, side, side) * 2 - 1
    expected = torch.autograd.grad(reference(model, images).sum(), list(model.parameters()))
    training_step(model, CPU_FP32)(images)
    grads = torch.cat([param.grad.flatten() for param in model.parameters()])
    expected = torch.cat([grad.flatten() for grad in expected])
    # absolute tolerance on the model's gradient scale: biases of convs that feed a GroupNorm have an exact
    # gradient of zero, which float32 rounding leaves at ~1e-7 in either implementation
    torch.testing.assert_close(grads, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("task_images, chunks", [(None, [[0, 1], [2, 3]]), (1, [[0], [1], [2], [3]])])
def test_batch_parallel_runs_tasks_concurrently_in_batch_order(task_images, chunks):
    both_running = threading.Barrier(2, timeout=10)  # each task waits until the other worker holds one
    workers = set()

    def work(chunk):
        workers.add(threading.get_ident())
        both_running.wait()
        return chunk * 10

    executor = BatchParallel(2, task_images)
    outputs = executor(work, torch.arange(4.0))
    executor.close()
    assert [o.tolist() for o in outputs] == [[10 * i for i in chunk] for chunk in chunks]
    assert len(workers) == 2


def test_cpu_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_peak_tensor_memory_counts_new_live_storages_only():
    outside = torch.zeros(1024)
    with PeakTensorMemory() as tracker:
        first = torch.ones(256)  # 1 KiB
        second = torch.ones(256)  # 2 KiB live
        first.add_(1)  # in place: no new storage
        second.view(16, 16).mul_(2)  # a view: no new storage
        outside.mul_(2)  # a storage from before the mode
        del first
        third = torch.ones(512)  # 2 KiB new, 1 KiB freed: 3 KiB live, the peak
        del second, third
        torch.ones(128)  # 0.5 KiB, all else freed
    assert tracker.peak == 3 * 1024


def test_count_gflops_matches_hand_counts():
    conv_flops = 2 * (3 * 3 * 3) * 4 * (8 * 8)  # 2 x multiply-adds per output x outputs
    make = partial(nn.Conv2d, 3, 4, 3, padding=1)
    assert count_gflops(make, 8) == pytest.approx(conv_flops / 1e9)
    assert count_gflops(make, 8, backward=True) == pytest.approx(2 * conv_flops / 1e9)  # + weight gradient
    assert count_gflops(partial(MatmulProbe, 16), 8) == pytest.approx(2 * 16**3 / 1e9)
    # SD-VAE's 3x3 conv at width 64 for 16 px images: a 32 x 32 map (128 channels at full resolution)
    assert count_gflops(partial(ConvProbe, 64, 16), 16) == pytest.approx(2 * 9 * 64 * 64 * 32 * 32 / 1e9)


def test_config_defaults_are_the_acceptance_run_and_params_yaml_parses():
    cfg = BenchmarkConfig()
    assert (cfg.batch_size, cfg.resolution, cfg.encoders) == (8, 256, ("sd_vae", "S", "B", "M", "L"))
    assert cfg.train_resolutions == (128, 256) and cfg.train_encoders == ("sd_vae", "S", "B")
    assert cfg.cpu_parallelism == "batch" and cfg.devices == ("cpu", "cuda")
    assert load_params("params.yaml", "benchmark")["benchmark"] == cfg


@pytest.mark.parametrize("section, key", [
    ({"encoders": ["S", "B"]}, "benchmark.encoders"),
    ({"encoders": ["sd_vae", "S"]}, "benchmark.train_encoders"),  # B, trained by default, is not measured
    ({"resolution": 100}, "benchmark.resolution"),
    ({"train_resolutions": [128, 60]}, "benchmark.train_resolutions"),
    ({"cpu_parallelism": "openmp"}, "benchmark.cpu_parallelism"),
    ({"threads": 0}, "benchmark.threads"),
    ({"peak_matmul_sizes": [], "peak_conv_channels": []}, "benchmark.peak_matmul_sizes"),  # no peak probe
])
def test_bad_config_is_rejected_naming_the_key(section, key):
    with pytest.raises(ConfigError, match=key):
        parse(BenchmarkConfig, section, "benchmark")


def _check_result(result, cfg):
    cpu = result["cpu"]
    rows = cpu["inference"]["rows"]
    assert list(rows) == list(cfg.encoders)
    peak = cpu["inference"]["peak_gflops_per_s"]
    assert peak["min"] <= peak["median"] <= peak["max"]
    probes = cpu["inference"]["peak_probes"]
    assert set(probes) == {f"matmul_{n}" for n in cfg.peak_matmul_sizes} | {f"conv3x3_{c}ch" for c in cfg.peak_conv_channels}
    assert peak["median"] == max(probe["median"] for probe in probes.values())  # the best probe is the peak
    assert probes[peak["probe"]]["median"] == peak["median"]
    base = rows["sd_vae"]
    for row in rows.values():
        passes = row["seconds_per_pass"]
        assert len(passes) % cfg.repeats == 0  # the same number of passes in every round
        assert len(passes) == cfg.repeats or cfg.min_timed_seconds > 0
        speed = row["images_per_s"]
        assert speed["median"] == pytest.approx(statistics.median(cfg.batch_size / s for s in passes))
        assert speed["min"] == pytest.approx(cfg.batch_size / max(passes))
        assert row["gflops_per_s"] == pytest.approx(row["gflops_per_image"] * speed["median"])
        assert row["throughput_ratio"] == pytest.approx(speed["median"] / base["images_per_s"]["median"])
        assert row["flops_ratio"] == pytest.approx(base["gflops_per_image"] / row["gflops_per_image"])
        assert row["memory_ratio"] == pytest.approx(base["memory_mb_per_image"] / row["memory_mb_per_image"])
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_per_s"] / peak["median"])
        assert row["memory_mb_per_image"] > 0
    assert base["throughput_ratio"] == base["memory_ratio"] == 1.0
    assert rows["S"]["params_m"] == pytest.approx(1.035, abs=1e-3)
    assert rows["S"]["flops_ratio"] > 10  # LiteVAE-S needs a small fraction of SD-VAE's FLOPs
    for side in cfg.train_resolutions:
        train = cpu[f"train_{side}"]["rows"]
        for row in train.values():
            assert row["ms_per_image"]["min"] <= row["ms_per_image"]["median"] <= row["ms_per_image"]["max"]
            assert row["time_ratio"] == pytest.approx(
                train["sd_vae"]["ms_per_image"]["median"] / row["ms_per_image"]["median"])
        assert train["S"]["gflops_per_image"] == pytest.approx(3 * rows["S"]["gflops_per_image"] * side**2
                                                               / cfg.resolution**2, rel=0.05)
    assert cpu["switches"]["cpu_parallelism"] == cfg.cpu_parallelism
    if not torch.cuda.is_available():
        assert "skipped" in result["cuda"]


@pytest.mark.parametrize("parallelism, threads, min_timed_seconds, train_resolutions",
                         [("batch", 2, 0.2, (16, 24)), ("intra_op", 1, 0.0, (16,))])
def test_run_benchmark_result_structure_and_ratios(parallelism, threads, min_timed_seconds, train_resolutions):
    cfg = replace(TINY, cpu_parallelism=parallelism, threads=threads, min_timed_seconds=min_timed_seconds,
                  devices=("cpu", "cuda"), train_resolutions=train_resolutions)
    result = run_benchmark(cfg, log=lambda line: None)
    _check_result(result, cfg)
    json.dumps(result, allow_nan=False)  # JSON-ready: plain numbers, no NaN or infinity


def test_stage_writes_metrics_table_and_png(tmp_path, monkeypatch):
    from stages import benchmark_encoders

    params = tmp_path / "params.yaml"
    params.write_text("benchmark:\n  encoders: [sd_vae, S]\n  resolution: 16\n  batch_size: 2\n  repeats: 1\n"
                      "  min_timed_seconds: 0\n  peak_matmul_sizes: [32]\n  peak_conv_channels: [64]\n  devices: [cpu]\n  retain_freed_memory: false\n"
                      "  train_encoders: [sd_vae, S]\n  train_resolutions: [16]\ntracking:\n  experiment: test\n")
    out = {name: tmp_path / name for name in ("m.json", "t.md", "t.png")}
    monkeypatch.setattr(sys, "argv", ["benchmark_encoders", "--params", str(params), "--metrics", str(out["m.json"]),
                                      "--table", str(out["t.md"]), "--table-png", str(out["t.png"])])
    benchmark_encoders.main()
    result = json.loads(out["m.json"].read_text())
    assert result["cpu"]["inference"]["rows"]["S"]["throughput_ratio"] > 0
    table = out["t.md"].read_text()
    assert "| LiteVAE-S |" in table and "cpu_parallelism=batch" in table
    assert out["t.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_script_splits_an_encoders_time_by_op_type_and_bounds_it_by_its_convolutions():
    import re
    import subprocess
    from pathlib import Path

    from pipeline.benchmark.encoders import build

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "scripts/profile_encoder.py"), "--encoders", "B", "S",
                             "--images", "1", "--resolution", "32"], capture_output=True, text=True, timeout=300,
                            cwd=repo, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    s_section = result.stdout.split("\nS: ")[1].split("\n\n")[0]
    shares = {line.split()[0]: float(line.split()[-1].rstrip("%"))
              for line in s_section.splitlines() if line.startswith("  ")}
    assert "native_group_norm" in shares and any("convolution" in op for op in shares)
    assert 80 <= sum(shares.values()) <= 100.5  # shares of one total; op types under 0.5% are not listed
    assert "channels_last=True" in s_section
    # every convolution of the forward pass is replayed, each once
    recorded = int(re.search(r"its (\d+) convolutions alone", s_section).group(1))
    assert recorded == sum(isinstance(m, torch.nn.Conv2d) for m in build("S", 4).modules())
    whole, convolutions = map(float, re.search(r"^S: ([\d.]+)x, its convolutions alone ([\d.]+)x$",
                                                  result.stdout, re.MULTILINE).groups())
    assert 0 < whole < convolutions  # a part of the work, on the same inputs, is faster than all of it

def _windows(events: list[tuple[str, str]]) -> list[dict]:
    """Each forward pass of `events` with where it ran: inside a memory count, inside which timed call."""
    passes, memory, timed = [], False, None
    for index, (kind, what) in enumerate(events):
        if kind in ("memory", "end memory"):
            memory = kind == "memory"
        elif kind in ("timed", "end timed"):
            timed = index if kind == "timed" else None
        elif kind == "forward":
            passes.append({"name": what, "index": index, "memory": memory, "timed": timed})
    return passes


def test_memory_is_counted_after_an_untimed_pass_and_timing_predicted_from_a_plain_one(monkeypatch):
    """The warm-up's order, on the path the CPU runs: each model's memory count follows an untimed pass of it
    (what a shape's first pass allocates once, cuDNN's autotuning workspaces on a GPU, is no memory of a pass),
    and the warm-up pass that predicts the timed ones runs no memory count."""
    from pipeline.benchmark import encoders
    from pipeline.core.speed import DEFAULT_SPEED

    events: list[tuple[str, str]] = []

    def bracket(kind, measure):
        def wrapped(call, device):
            events.append((kind, ""))
            try:
                return measure(call, device)
            finally:
                events.append((f"end {kind}", ""))
        return wrapped

    monkeypatch.setattr(encoders, "peak_memory", bracket("memory", encoders.peak_memory))
    monkeypatch.setattr(encoders, "elapsed", bracket("timed", encoders.elapsed))
    cfg = replace(TINY, threads=2, repeats=1, min_timed_seconds=0.0, train_resolutions=(16,))
    bench = encoders._DeviceBenchmark(cfg, DEFAULT_SPEED, torch.device("cpu"),
                                      log=lambda line: events.append(("log", line)))
    for name, model in bench.eager.items():
        model.register_forward_pre_hook(lambda module, args, name=name: events.append(("forward", name)))
    bench.run(freed_memory_retained=False)

    logs = [index for index, (kind, _) in enumerate(events) if kind == "log"]
    inference_end = next(i for i in logs if "warm-up 1/1" in events[i][1])
    training_start = max(i for i in logs if "px passes" in events[i][1])
    training_end = next(i for i in logs if "forward+backward warm-up" in events[i][1])
    for start, end, names in ((0, inference_end, cfg.encoders), (training_start, training_end, cfg.train_encoders)):
        passes = _windows(events[start:end])
        for name in names:
            own = [p for p in passes if p["name"] == name]
            assert not own[0]["memory"] and any(p["memory"] for p in own), (name, own)  # untimed first, then counted
        if start == 0:  # every model's warm-up timing is a plain pass
            counted = {p["timed"] for p in passes if p["memory"]}
            for name in bench.names:
                assert any(p["timed"] is not None and p["timed"] not in counted for p in passes if p["name"] == name)
