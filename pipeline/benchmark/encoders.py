"""Encoder efficiency (the paper's Table 3) on this machine: parameters, GFLOPs, throughput, memory and
forward+backward cost of the SD-VAE encoder and LiteVAE S/B/M/L, with every ratio taken against SD-VAE.

How it measures, so that the ratios can be trusted on a shared machine:
- every encoder is built, warmed up and timed in one process; each round runs every encoder once, in an
  order rotated from round to round, so slow spells of the machine fall on all of them alike;
- dense-kernel probes run in the same rounds, through the same executor: GEMMs of several sizes and the SD-VAE
  encoder's own 3x3 convolutions at each of its widths, in the encoders' layout; the best of them is the
  reference peak (an upper bound: an encoder is a mix of such layers and cheaper ones), beside which each
  encoder's achieved GFLOP/s is read as a fraction;
- results are the median of an encoder's timed passes, with the min and max: one or more per round (short
  passes are repeated, see `min_timed_seconds`); the 1-minute load average is recorded before and after;
- GFLOPs come from `torch.utils.flop_counter` on the meta device (2 per multiply-add; convolutions, matmuls
  and attention only): shapes only, no arithmetic;
- memory is the peak of the tensor memory a pass allocates, per image, not counting weights and input (CPU:
  tensor storages alive at once in the calling thread's task, over the images of that task; GPU:
  `max_memory_allocated` over the batch), after an untimed pass, so that one-off allocations (cuDNN's autotuning
  workspaces) do not count; every model's timed passes follow at least one plain warm-up pass of what they run
  (compiled models: after compiling and, with CUDA graphs, recording).

Speed-ups are switches of `BenchmarkConfig` and of the `speed` section that training and encoding use too
(pipeline/core/speed.py: memory layout, torch.compile, CUDA graphs), applied to every encoder alike and listed
in the result; besides them: inference mode; on CPU, batch parallelism (the images of a batch spread over worker
threads that run one intra-op thread each, instead of every op spread over all cores: LiteVAE's many small ops
otherwise spend their time at OpenMP barriers, and on a loaded machine at barriers waiting for a descheduled
thread) and glibc keeping freed memory (no page faults on every new activation); on GPU, cuDNN autotuning and
optional autocast. The model code itself runs GroupNorm's SiLU and the residual sums in place
(models/blocks.py), which both encoders share.

The measuring tools are in pipeline/benchmark/measure.py, the tables in pipeline/benchmark/report.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from models.autoencoder import build_encoder
from models.litevae_encoder import EncoderConfig
from pipeline.benchmark.measure import (
    BatchParallel,
    WholeBatch,
    Work,
    count_gflops,
    cpu_threads,
    elapsed,
    peak_memory,
    peak_probes,
    retain_freed_memory,
)
from pipeline.config.schema import BASELINE_ENCODER as BASELINE
from pipeline.config.schema import BenchmarkConfig, EncoderName, SpeedConfig
from pipeline.core.precision import Precision
from pipeline.core.speed import DEFAULT_SPEED, fast, set_layout

PROBE = "peak:"  # the prefix of the peak probes' rows
MB = 2**20


def build(name: EncoderName, latent_channels: int) -> nn.Module:
    """The encoder `name` names: (B, 3, H, W) -> (B, 2 * latent_channels, H/8, W/8)."""
    cfg = EncoderConfig(kind="sd_vae") if name == BASELINE else EncoderConfig(preset=name)
    return build_encoder(cfg, latent_channels)


def inference(model: nn.Module, precision: Precision) -> Work:
    """Work: the model's inference-mode forward pass."""

    def run(images: Tensor) -> Tensor:
        with torch.inference_mode(), precision.autocast():  # thread-local: set in the worker
            return model(images)

    return run


def training_step(model: nn.Module, precision: Precision) -> Work:
    """Work: forward and backward pass, gradients accumulating into the parameters' .grad."""

    def run(images: Tensor) -> None:
        with torch.enable_grad(), precision.autocast():
            moments = model(images)
        moments.float().sum().backward()

    return run


def _rotated(names: list[str], shift: int) -> list[str]:
    shift %= len(names)
    return names[shift:] + names[:shift]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _images(batch_size: int, side: int, device: torch.device) -> Tensor:
    """(B, 3, side, side) uniform in [-1, 1], the same on every run."""
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch_size, 3, side, side, generator=generator) * 2 - 1).to(device)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class _DeviceBenchmark:
    """One device's measurements: the models, the executor and the precision they run with."""

    def __init__(self, cfg: BenchmarkConfig, speed: SpeedConfig, device: torch.device, log: Callable[[str], None]):
        self.cfg, self.speed, self.device, self.log = cfg, speed, device, log
        self.cpu = device.type == "cpu"
        self.precision = Precision(cfg.amp if not self.cpu else "off", device)
        self.threads = cfg.threads or len(os.sched_getaffinity(0))
        batch_parallel = self.cpu and cfg.cpu_parallelism == "batch"
        self.executor = BatchParallel(self.threads, cfg.task_images) if batch_parallel else WholeBatch()
        self.factories: dict[str, Callable[[], nn.Module]] = {
            **peak_probes(cfg.peak_matmul_sizes, cfg.peak_conv_channels, cfg.resolution),
            **{name: partial(build, name, cfg.latent_channels) for name in cfg.encoders}}
        self.names = list(self.factories)
        self.eager: dict[str, nn.Module] = {name: make() for name, make in self.factories.items()}
        for model in self.eager.values():
            model.to(device).eval()
        self.fast: dict[str, Callable] = {}

    def _prepare(self, training: bool) -> None:
        """Every model's weights in the layout `speed` gives for inference or training (activations follow
        them), and the encoders compiled for it where `speed` compiles; the probes stay single eager kernels."""
        for model in self.eager.values():
            set_layout(model, self.speed, self.device, training)
        self.fast = {name: model if name.startswith(PROBE) else fast(model, self.speed, self.device, training)
                     for name, model in self.eager.items()}

    def switches(self, freed_memory_retained: bool) -> dict[str, Any]:
        """The speed-ups in force, the same for every encoder."""
        common = {"inference_mode": True, **self.speed.switches(self.device), "in_place_silu_and_residual_sum": True}
        if self.cpu:
            parallelism = {"cpu_parallelism": self.cfg.cpu_parallelism, "threads": self.threads}
            if isinstance(self.executor, BatchParallel):
                parallelism["task_images"] = self.executor.images_per_task(self.cfg.batch_size)
            return {**common, **parallelism, "retain_freed_memory": freed_memory_retained}
        return {**common, "amp": self.precision.name, "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "tf32_convolutions": torch.backends.cudnn.allow_tf32,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}

    def _work(self, name: str, kind: Callable[[nn.Module, Precision], Work], eager: bool = False) -> Work:
        return kind(self.eager[name] if eager else self.fast[name], self.precision)

    def _compile(self, names: list[str], kind: Callable[[nn.Module, Precision], Work], batch: Tensor) -> dict:
        """With compile on, each module's first call (the compilation) alone in the calling thread: seconds."""
        if not self.speed.compiles(self.device):
            return {}
        task = batch[: self.executor.images_per_task(len(batch))]  # the shape of the timed passes' tasks
        return {name: elapsed(lambda: self._work(name, kind)(task), self.device) for name in names}

    def _memory(self, name: str, kind: Callable[[nn.Module, Precision], Work], batch: Tensor,
                before: Callable[[str], None] = lambda name: None) -> float:
        """MB per image of a pass's peak tensor memory; the eager module, whose ops the count can see. One untimed
        eager pass goes first, so that what a shape's first pass allocates once (cuDNN's autotuning workspaces
        under cudnn.benchmark) is not counted: on the GPU on the counted pass's own shape (cuDNN tunes per shape),
        on the CPU, which tunes nothing, on one image. `before(name)` runs before each pass."""
        work = self._work(name, kind, eager=True)
        before(name)
        work(batch[:1] if self.cpu else batch[: self.executor.images_per_task(len(batch))])  # (n, 3, H, W)
        before(name)
        nbytes = peak_memory(lambda: self.executor(work, batch), self.device)
        return nbytes / self.executor.images_per_task(len(batch)) / MB

    def _rounds(self, passes: dict[str, int], count: int, kind: Callable[[nn.Module, Precision], Work],
                batch: Tensor, what: str, before: Callable[[str], None] = lambda name: None) -> dict[str, list[float]]:
        """`count` interleaved rounds, each timing passes[name] passes of every model, each pass after its
        untimed `before(name)`."""
        names = list(passes)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for index in range(count):
            for name in _rotated(names, index):
                work = self._work(name, kind)
                for _ in range(passes[name]):
                    before(name)
                    seconds[name].append(elapsed(lambda: self.executor(work, batch), self.device))
                times = " ".join(f"{s:.3f}" for s in seconds[name][-passes[name]:])
                self.log(f"[{self.device.type}] {what} round {index + 1}/{count} {name}: {times} s")
        return seconds

    def inference(self) -> dict[str, Any]:
        cfg = self.cfg
        batch = _images(cfg.batch_size if self.cpu else cfg.cuda_batch_size, cfg.resolution, self.device)
        warm = self.executor.warmup_batch(batch)
        compile_s = self._compile(list(cfg.encoders), inference, batch)
        memory: dict[str, float] = {}
        warm_s: dict[str, float] = {}
        for index in range(cfg.warmup):
            for name in _rotated(self.names, index):
                if index == 0 and not name.startswith(PROBE):  # memory first, on the eager module
                    memory[name] = self._memory(name, inference, warm)
                # a plain pass of what the timed passes run: compiled, it records its CUDA graph here
                work = self._work(name, inference)
                warm_s[name] = elapsed(partial(self.executor, work, warm), self.device)
            self.log(f"[{self.device.type}] warm-up {index + 1}/{cfg.warmup}: "
                     + " ".join(f"{name} {warm_s[name]:.3f} s" for name in self.names))
        # the last plain warm-up pass, scaled from its part of the batch to the whole, predicts a timed pass
        predicted_s = {name: warm_s[name] * len(batch) / len(warm) for name in self.names}
        passes = {name: max(1, math.ceil(cfg.min_timed_seconds / cfg.repeats / predicted_s[name]))
                  for name in self.names}
        seconds = self._rounds(passes, cfg.repeats, inference, batch, f"{cfg.resolution} px passes,")
        rows = {}
        for name in self.names:
            probe = name.startswith(PROBE)
            flops = count_gflops(self.factories[name], cfg.resolution)
            images_per_s = [len(batch) / s for s in seconds[name]]
            row: dict[str, Any] = {
                "gflops_per_image": flops,
                "images_per_s": _spread(images_per_s),
                "seconds_per_pass": seconds[name],
                "gflops_per_s": flops * statistics.median(images_per_s),
            }
            if not probe:
                params = list(self.eager[name].parameters())
                row["params_m"] = sum(p.numel() for p in params) / 1e6
                row["weights_mb"] = sum(p.numel() * p.element_size() for p in params) / MB
                row["memory_mb_per_image"] = memory[name]
            if name in compile_s:
                row["compile_s"] = compile_s[name]
            rows[name] = row
        return {"batch_size": len(batch), "resolution": cfg.resolution, "rows": rows}

    def _zero_grads(self, name: str) -> None:
        for param in self.eager[name].parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)  # allocated once, outside every measurement
            else:
                param.grad.zero_()

    def training(self, side: int) -> dict[str, Any]:
        cfg = self.cfg
        names = list(cfg.train_encoders)
        batch = _images(cfg.train_batch_size if self.cpu else cfg.cuda_batch_size, side, self.device)
        compile_s = self._compile(names, training_step, batch)
        warm = self.executor.warmup_batch(batch)
        memory = {}
        for name in names:
            memory[name] = self._memory(name, training_step, warm, before=self._zero_grads)
            if self.fast[name] is not self.eager[name]:  # compiled: its first passes past compiling, untimed
                self._zero_grads(name)
                self.executor(self._work(name, training_step), warm)
        self.log(f"[{self.device.type}] forward+backward warm-up at {side} px done")
        seconds = self._rounds(dict.fromkeys(names, 1), cfg.train_repeats, training_step, batch,
                               f"{side} px forward+backward,", before=self._zero_grads)
        rows = {}
        for name in names:
            flops = count_gflops(partial(build, name, cfg.latent_channels), side, backward=True)
            ms_per_image = [s / len(batch) * 1e3 for s in seconds[name]]
            rows[name] = {
                "gflops_per_image": flops,
                "ms_per_image": _spread(ms_per_image),
                "gflops_per_s": flops / statistics.median(ms_per_image) * 1e3,
                "memory_mb_per_image": memory[name],
                **({"compile_s": compile_s[name]} if name in compile_s else {}),
            }
        return {"batch_size": len(batch), "resolution": side, "rows": rows}

    def run(self, freed_memory_retained: bool) -> dict[str, Any]:
        if not self.cpu:
            torch.backends.cudnn.benchmark = True
        intra_op = 1 if isinstance(self.executor, BatchParallel) else self.threads
        try:
            with cpu_threads(intra_op) if self.cpu else contextlib.nullcontext():
                self._prepare(training=False)
                inference_result = self.inference()
                self._prepare(training=True)
                train = {f"train_{side}": self.training(side) for side in self.cfg.train_resolutions}
        finally:
            self.executor.close()
            for model in self.eager.values():
                model.zero_grad(set_to_none=True)
        return {
            "device": _cpu_name() if self.cpu else torch.cuda.get_device_name(self.device),
            "precision": self.precision.name,
            "switches": self.switches(freed_memory_retained),
            "inference": inference_result,
            **train,
        }


def add_ratios(device_result: dict[str, Any]) -> None:
    """Ratios against the SD-VAE encoder, in place: throughput (x faster), memory (x less), the FLOP
    ceiling (SD-VAE's GFLOPs / the encoder's: the throughput ratio at equal GFLOP/s), the share of the
    reference peak (the best probe's median GFLOP/s) each encoder reaches, and the same for every
    forward+backward resolution. The probes' rows move to `peak_probes`."""
    inference_rows = device_result["inference"]["rows"]
    probe_rows = {name: inference_rows.pop(name) for name in list(inference_rows) if name.startswith(PROBE)}
    probes = {name.removeprefix(PROBE): {key: row["gflops_per_image"] * value
                                         for key, value in row["images_per_s"].items()}
              for name, row in probe_rows.items()}
    best = max(probes, key=lambda name: probes[name]["median"])
    peak = {**probes[best], "probe": best}
    device_result["inference"]["peak_probes"] = probes
    device_result["inference"]["peak_gflops_per_s"] = peak
    base = inference_rows[BASELINE]
    for row in inference_rows.values():
        row["throughput_ratio"] = row["images_per_s"]["median"] / base["images_per_s"]["median"]
        row["flops_ratio"] = base["gflops_per_image"] / row["gflops_per_image"]
        row["memory_ratio"] = base["memory_mb_per_image"] / row["memory_mb_per_image"]
        row["fraction_of_peak"] = row["gflops_per_s"] / peak["median"]
    for key, section in device_result.items():
        if key.startswith("train_"):
            base = section["rows"][BASELINE]
            for row in section["rows"].values():
                row["time_ratio"] = base["ms_per_image"]["median"] / row["ms_per_image"]["median"]
                row["memory_ratio"] = base["memory_mb_per_image"] / row["memory_mb_per_image"]


def run_benchmark(cfg: BenchmarkConfig, speed: SpeedConfig = DEFAULT_SPEED,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every device of `cfg.devices`; returns the JSON-ready result (see the module docstring)."""
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "speed": asdict(speed),
        "environment": {
            "torch": torch.__version__,
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "load_average_1min_before": os.getloadavg()[0],
        },
    }
    start_s = time.perf_counter()
    freed_memory_retained = "cpu" in cfg.devices and cfg.retain_freed_memory and retain_freed_memory()
    for device in cfg.devices:
        if device == "cuda" and not torch.cuda.is_available():
            result["cuda"] = {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
            log("[cuda] skipped: no CUDA device")
            continue
        device_result = _DeviceBenchmark(cfg, speed, torch.device(device), log).run(freed_memory_retained)
        add_ratios(device_result)
        result[device] = device_result
    result["environment"]["load_average_1min_after"] = os.getloadavg()[0]
    result["environment"]["benchmark_seconds"] = time.perf_counter() - start_s
    return result
