"""Encoder efficiency (the paper's Table 3) on this machine: parameters, GFLOPs, throughput, memory and
forward+backward cost of the SD-VAE encoder and LiteVAE S/B/M/L, with every ratio taken against SD-VAE.

How it measures, so that the ratios can be trusted on a shared machine:
- every encoder is built, warmed up and timed in one process; each round runs every encoder once, in an
  order rotated from round to round, so slow spells of the machine fall on all of them alike;
- a dense matmul runs in the same rounds, through the same executor: the GFLOP/s the hardware gives this
  process at that moment, beside which each encoder's achieved GFLOP/s is read;
- results are the median of `repeats` timed passes, with the min and max; the 1-minute load average is
  recorded before and after;
- GFLOPs come from `torch.utils.flop_counter` on the meta device (2 per multiply-add; convolutions, matmuls
  and attention only), so counting costs nothing;
- memory is the peak of the tensor memory a pass allocates, per image, not counting weights and input (CPU:
  tensor storages alive at once in the calling thread's task, over the images of that task; GPU:
  `max_memory_allocated` over the batch).

Speed-ups are switches of `BenchmarkConfig`, applied to every encoder alike, and listed in the result:
channels_last weights and activations; inference mode; on CPU, batch parallelism (the images of a batch
spread over worker threads that run one intra-op thread each, instead of every op spread over all cores:
LiteVAE's many small ops otherwise spend their time at OpenMP barriers, and on a loaded machine at barriers
waiting for a descheduled thread) and glibc keeping freed memory (no page faults on every new activation);
optional torch.compile; on GPU, cuDNN autotuning and optional autocast. The model code itself runs GroupNorm's
SiLU and the residual sums in place (models/blocks.py), which both encoders share.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from models.autoencoder import DOWNSAMPLING, build_encoder
from models.litevae_encoder import EncoderConfig
from pipeline.precision import AmpMode, Precision

EncoderName = Literal["sd_vae", "S", "B", "M", "L"]
BASELINE = "sd_vae"
MATMUL = "matmul"  # the row of the matmul probe
MB = 2**20


@dataclass(frozen=True)
class BenchmarkConfig:
    """The `benchmark` section: what `benchmark_encoders` measures, and with which speed-ups.

    encoders: "sd_vae" (the Stable Diffusion VAE encoder, the baseline of every ratio) and LiteVAE sizes.
    latent_channels: nz of every encoder (Table 2a compares all of them at 12).
    resolution: side of the square images of the inference passes.
    batch_size: images per inference pass on the CPU; cuda_batch_size on the GPU (Table 3: 32), which
        also serves the GPU's forward+backward passes.
    warmup: untimed passes of every encoder before the timed ones (the first one measures memory). With
        batch parallelism a warm-up pass runs one task per worker: every thread, shape and code path of a
        timed pass (the whole batch, unless task_images makes tasks smaller).
    repeats: timed passes of every encoder; results are their median, min and max. The defaults (1 + 2
        passes of all five encoders at batch 8, 256 px) fill most of the 5-minute budget on 2 idle cores.
    matmul_size: n of the (n x n) @ (n x n) fp32 product per image that measures the peak GFLOP/s.
    devices: where to measure; "cuda" is skipped, and the result says why, when no GPU is present.
    amp: autocast on the GPU ("auto": bf16 where supported); the CPU always runs float32.
    channels_last: weights and activations in NHWC, the layout oneDNN and cuDNN convolve fastest.
    cpu_parallelism: "batch" (workers take whole images, one intra-op thread each) or "intra_op" (every
        op spread over all threads, PyTorch's default).
    threads: CPU worker threads (batch) or intra-op threads (intra_op); None: torch.get_num_threads().
    task_images: images a batch-parallel worker takes at a time; None: the batch split evenly over the
        workers (larger tasks run each op more efficiently, smaller ones balance a loaded machine better).
    retain_freed_memory: ask glibc to keep freed memory for reuse instead of returning it to the OS.
    compile: torch.compile every encoder (inductor); the compile time is reported. Off by default: on a
        2-core CPU it took minutes per encoder and ran slower than eager.
    train_encoders: the encoders whose forward+backward cost is measured (with "sd_vae", the baseline). By
        default the sizes the paper trains and compares (S, B): LiteVAE-M and -L would add about two
        minutes on 2 CPU cores.
    train_resolutions: image sides of the forward+backward (training) passes; at least 16, since GroupNorm
        in training needs more than one value per group at H/8.
    train_batch_size: images per forward+backward pass on the CPU.
    train_repeats: timed forward+backward passes per encoder and resolution, after one warm-up pass.
    """

    encoders: tuple[EncoderName, ...] = ("sd_vae", "S", "B", "M", "L")
    latent_channels: int = field(default=12, metadata={"ge": 1})
    resolution: int = field(default=256, metadata={"ge": DOWNSAMPLING})
    batch_size: int = field(default=8, metadata={"ge": 1})
    cuda_batch_size: int = field(default=32, metadata={"ge": 1})
    warmup: int = field(default=1, metadata={"ge": 1})
    repeats: int = field(default=2, metadata={"ge": 1})
    matmul_size: int = field(default=2048, metadata={"ge": 1})
    devices: tuple[Literal["cpu", "cuda"], ...] = ("cpu", "cuda")
    amp: AmpMode = "off"
    channels_last: bool = True
    cpu_parallelism: Literal["batch", "intra_op"] = "batch"
    threads: int | None = field(default=None, metadata={"ge": 1})
    task_images: int | None = field(default=None, metadata={"ge": 1})
    retain_freed_memory: bool = True
    compile: bool = False
    train_encoders: tuple[EncoderName, ...] = ("sd_vae", "S", "B")
    train_resolutions: tuple[int, ...] = field(default=(128, 256), metadata={"ge": 2 * DOWNSAMPLING})
    train_batch_size: int = field(default=2, metadata={"ge": 1})
    train_repeats: int = field(default=1, metadata={"ge": 1})

    def __post_init__(self) -> None:
        for name, encoders in (("encoders", self.encoders), ("train_encoders", self.train_encoders)):
            if BASELINE not in encoders:
                raise ValueError(f"{name}: must include {BASELINE!r}, the baseline of every ratio; add it")
            if len(set(encoders)) != len(encoders):
                raise ValueError(f"{name}: {encoders} names an encoder twice; list each once")
        if not set(self.train_encoders) <= set(self.encoders):
            raise ValueError(f"train_encoders: {self.train_encoders} must be among encoders {self.encoders}")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices: {self.devices} names a device twice; list each once")
        for name, sides in (("resolution", (self.resolution,)), ("train_resolutions", self.train_resolutions)):
            if any(side % DOWNSAMPLING for side in sides):
                raise ValueError(f"{name}: {sides} must be multiples of {DOWNSAMPLING}, the encoders' downsampling")


def build(name: EncoderName, latent_channels: int) -> nn.Module:
    """The encoder `name` names: (B, 3, H, W) -> (B, 2 * latent_channels, H/8, W/8)."""
    cfg = EncoderConfig(kind="sd_vae") if name == BASELINE else EncoderConfig(preset=name)
    return build_encoder(cfg, latent_channels)


class MatmulProbe(nn.Module):
    """One dense (n x n) @ (n x n) product per image: the GFLOP/s the hardware gives to the best-case
    kernel under the same executor and the same load as the encoders."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("a", torch.randn(size, size) / size**0.5)
        self.register_buffer("b", torch.randn(size, size))

    def forward(self, images: Tensor) -> Tensor:
        """(B, ...) -> (B, n, n)."""
        return torch.stack([self.a @ self.b for _ in range(images.shape[0])])  # (B, n, n)


def count_gflops(make: Callable[[], nn.Module], resolution: int, backward: bool = False) -> float:
    """GFLOPs of one image's forward pass (with `backward`, forward and backward), counted on the meta
    device: the module is built there and only shapes propagate."""
    with torch.device("meta"):
        model = make()
        image = torch.empty(1, 3, resolution, resolution)
    with FlopCounterMode(display=False) as counter:
        if backward:
            model(image).sum().backward()
        else:
            with torch.no_grad():
                model(image)
    return counter.get_total_flops() / 1e9


def _storage(tensor: Tensor) -> StorageWeakRef:
    return StorageWeakRef(tensor.untyped_storage())


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages that ops create in this thread while the mode is active.

    Storages alive on entry (weights, inputs) are not counted, nor outputs of views and in-place ops
    (they reuse an input's storage), nor kernels' private scratch buffers. A storage counts until it is
    freed, so what autograd saves for the backward pass counts while it is held.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[StorageWeakRef, int] = {}
        self._bytes = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for ref in [ref for ref in self._live if ref.expired()]:
            self._bytes -= self._live.pop(ref)
        inputs = {_storage(t) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for tensor in pytree.tree_leaves(out):
            if not isinstance(tensor, Tensor):
                continue
            ref = _storage(tensor)
            if ref not in inputs and ref not in self._live:
                self._live[ref] = tensor.untyped_storage().nbytes()
                self._bytes += self._live[ref]
        self.peak = max(self.peak, self._bytes)
        return out


Work = Callable[[Tensor], object]


class WholeBatch:
    """Runs work on the whole batch in the calling thread: PyTorch's intra-op parallelism, or the GPU."""

    def __call__(self, work: Work, batch: Tensor) -> list:
        """Returns [work(batch)]."""
        return [work(batch)]

    def warmup_batch(self, batch: Tensor) -> Tensor:
        return batch

    def images_per_task(self, batch_size: int) -> int:
        return batch_size

    def close(self) -> None:
        pass


class BatchParallel:
    """Runs work on chunks of the batch on `threads` workers, the calling thread among them.

    The batch is cut into chunks of `task_images` images (None: one chunk per worker); the calling thread
    runs the first, and each worker takes the next chunk until none is left, so a worker slowed down by
    other processes takes fewer. Run it with one intra-op thread (`cpu_threads(1)`), so that no op waits
    at a barrier for another core.
    """

    def __init__(self, threads: int, task_images: int | None = None):
        self.threads = threads
        self.task_images = task_images
        self._pool = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def images_per_task(self, batch_size: int) -> int:
        return self.task_images or -(-batch_size // self.threads)

    def __call__(self, work: Work, batch: Tensor) -> list:
        """Returns [work(chunk) for each (n, ...) chunk of the batch], in batch order."""
        chunks = batch.split(self.images_per_task(len(batch)))  # (n, C, H, W) views
        results: list = [None] * len(chunks)
        indices = iter(range(len(chunks)))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                results[index] = work(chunks[index])

        first = next(indices)  # the calling thread's own task, so a measurement in this thread always sees one
        futures = [self._pool.submit(worker) for _ in range(self.threads - 1)] if self._pool else []
        results[first] = work(chunks[first])
        worker()
        for future in futures:
            future.result()
        return results

    def warmup_batch(self, batch: Tensor) -> Tensor:
        """One chunk per worker: every thread, shape and code path of a full pass."""
        return batch[: self.threads * self.images_per_task(len(batch))]

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `count` for the block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process (no mmap for large blocks, no trimming, one heap for
    all threads: a worker thread's own heap is capped at 64 MB and mmaps anything larger), so that a new
    activation reuses warm pages instead of faulting fresh zeroed ones in. Process-wide and permanent;
    returns whether it took effect (False without glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # malloc.h
    settings = ((m_mmap_threshold, 2**30), (m_trim_threshold, 2**31 - 1), (m_arena_max, 1))
    return all(libc.mallopt(option, value) for option, value in settings)


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


def elapsed(call: Callable[[], object], device: torch.device) -> float:
    """Seconds `call()` takes: CUDA events around the work it queues on the GPU, the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    call()
    return time.perf_counter() - start_s


def peak_memory(call: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated during `call()`, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with PeakTensorMemory() as tracker:
        call()
    return tracker.peak


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

    def __init__(self, cfg: BenchmarkConfig, device: torch.device, log: Callable[[str], None]):
        self.cfg, self.device, self.log = cfg, device, log
        self.cpu = device.type == "cpu"
        self.precision = Precision(cfg.amp if not self.cpu else "off", device)
        self.threads = cfg.threads or torch.get_num_threads()
        batch_parallel = self.cpu and cfg.cpu_parallelism == "batch"
        self.executor = BatchParallel(self.threads, cfg.task_images) if batch_parallel else WholeBatch()
        self.names = [MATMUL, *cfg.encoders]
        self.eager: dict[str, nn.Module] = {MATMUL: MatmulProbe(cfg.matmul_size)}
        self.eager.update({name: build(name, cfg.latent_channels) for name in cfg.encoders})
        for model in self.eager.values():
            model.to(device).eval()
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)  # 4-D weights; activations follow them
        self.fast = {name: torch.compile(m) if cfg.compile else m for name, m in self.eager.items()}

    def switches(self, freed_memory_retained: bool) -> dict[str, Any]:
        """The speed-ups in force, the same for every encoder."""
        common = {"inference_mode": True, "channels_last": self.cfg.channels_last, "compile": self.cfg.compile,
                  "in_place_silu_and_residual_sum": True}
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
        if not self.cfg.compile:
            return {}
        task = batch[: self.executor.images_per_task(len(batch))]  # the shape of the timed passes' tasks
        return {name: elapsed(lambda: self._work(name, kind)(task), self.device) for name in names}

    def _memory(self, name: str, kind: Callable[[nn.Module, Precision], Work], batch: Tensor) -> float:
        """MB per image of a pass's peak tensor memory; the eager module, whose ops the count can see."""
        nbytes = peak_memory(lambda: self.executor(self._work(name, kind, eager=True), batch), self.device)
        return nbytes / self.executor.images_per_task(len(batch)) / MB

    def _rounds(self, names: list[str], count: int, kind: Callable[[nn.Module, Precision], Work], batch: Tensor,
                what: str, before: Callable[[str], None] = lambda name: None) -> dict[str, list[float]]:
        """`count` interleaved rounds, each timing one pass of every model (after its untimed `before`)."""
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for index in range(count):
            for name in _rotated(names, index):
                before(name)
                work = self._work(name, kind)
                seconds[name].append(elapsed(lambda: self.executor(work, batch), self.device))
                self.log(f"[{self.device.type}] {what} {index + 1}/{count} {name}: {seconds[name][-1]:.3f} s")
        return seconds

    def inference(self) -> dict[str, Any]:
        cfg = self.cfg
        batch = _images(cfg.batch_size if self.cpu else cfg.cuda_batch_size, cfg.resolution, self.device)
        warm = self.executor.warmup_batch(batch)
        compile_s = self._compile(self.names, inference, batch)
        memory = {}
        for index in range(cfg.warmup):
            for name in _rotated(self.names, index):
                if index == 0 and name != MATMUL:
                    memory[name] = self._memory(name, inference, warm)
                else:
                    self.executor(self._work(name, inference), warm)
            self.log(f"[{self.device.type}] warm-up {index + 1}/{cfg.warmup} done")
        seconds = self._rounds(self.names, cfg.repeats, inference, batch, f"{cfg.resolution} px pass")
        rows = {}
        for name in self.names:
            probe = name == MATMUL
            make = partial(MatmulProbe, cfg.matmul_size) if probe else partial(build, name, cfg.latent_channels)
            flops = count_gflops(make, cfg.resolution)
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
        memory = {}
        for name in names:
            self._zero_grads(name)
            memory[name] = self._memory(name, training_step, self.executor.warmup_batch(batch))
        self.log(f"[{self.device.type}] forward+backward warm-up at {side} px done")
        seconds = self._rounds(names, cfg.train_repeats, training_step, batch, f"{side} px forward+backward",
                               before=self._zero_grads)
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
                inference_result = self.inference()
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
    matmul peak each encoder reaches, and the same for every forward+backward resolution."""
    inference_rows = device_result["inference"]["rows"]
    probe = inference_rows.pop(MATMUL)
    peak = {key: probe["gflops_per_image"] * value for key, value in probe["images_per_s"].items()}
    device_result["inference"]["matmul_peak_gflops_per_s"] = peak
    base = inference_rows[BASELINE]
    for row in inference_rows.values():
        row["throughput_ratio"] = row["images_per_s"]["median"] / base["images_per_s"]["median"]
        row["flops_ratio"] = base["gflops_per_image"] / row["gflops_per_image"]
        row["memory_ratio"] = base["memory_mb_per_image"] / row["memory_mb_per_image"]
        row["fraction_of_matmul_peak"] = row["gflops_per_s"] / peak["median"]
    for key, section in device_result.items():
        if key.startswith("train_"):
            base = section["rows"][BASELINE]
            for row in section["rows"].values():
                row["time_ratio"] = base["ms_per_image"]["median"] / row["ms_per_image"]["median"]
                row["memory_ratio"] = base["memory_mb_per_image"] / row["memory_mb_per_image"]


def run_benchmark(cfg: BenchmarkConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every device of `cfg.devices`; returns the JSON-ready result (see the module docstring)."""
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "environment": {
            "torch": torch.__version__,
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "load_average_1min_before": os.getloadavg()[0],
        },
    }
    freed_memory_retained = "cpu" in cfg.devices and cfg.retain_freed_memory and retain_freed_memory()
    for device in cfg.devices:
        if device == "cuda" and not torch.cuda.is_available():
            result["cuda"] = {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
            log("[cuda] skipped: no CUDA device")
            continue
        device_result = _DeviceBenchmark(cfg, torch.device(device), log).run(freed_memory_retained)
        add_ratios(device_result)
        result[device] = device_result
    result["environment"]["load_average_1min_after"] = os.getloadavg()[0]
    return result


DISPLAY_NAMES = {"sd_vae": "SD-VAE", "S": "LiteVAE-S", "B": "LiteVAE-B", "M": "LiteVAE-M", "L": "LiteVAE-L"}


def _devices(result: dict[str, Any]) -> list[str]:
    return [device for device in ("cpu", "cuda") if "inference" in result.get(device, {})]


def table_rows(device_result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per encoder of a device's table, as strings."""
    inference_section = device_result["inference"]
    trains = [(key, section) for key, section in device_result.items() if key.startswith("train_")]
    header = ["encoder", "params (M)", "GFLOPs/img", "img/s median [min-max]", "x SD-VAE", "FLOP ceiling",
              "GFLOP/s (% matmul)", "MB/img", "x less memory"]
    for _, section in trains:
        side = section["resolution"]
        header += [f"fwd+bwd {side}: ms/img (x faster)", f"fwd+bwd {side}: MB/img (x less)"]
    rows = []
    for name, row in inference_section["rows"].items():
        speed = row["images_per_s"]
        cells = [
            DISPLAY_NAMES[name], f"{row['params_m']:.2f}", f"{row['gflops_per_image']:.1f}",
            f"{speed['median']:.2f} [{speed['min']:.2f}-{speed['max']:.2f}]", f"{row['throughput_ratio']:.2f}",
            f"{row['flops_ratio']:.2f}", f"{row['gflops_per_s']:.1f} ({row['fraction_of_matmul_peak']:.0%})",
            f"{row['memory_mb_per_image']:.1f}", f"{row['memory_ratio']:.2f}",
        ]
        for _, section in trains:
            train = section["rows"].get(name)
            cells += [f"{train['ms_per_image']['median']:.0f} ({train['time_ratio']:.2f})",
                      f"{train['memory_mb_per_image']:.0f} ({train['memory_ratio']:.2f})"] if train else ["-", "-"]
        rows.append(cells)
    return header, rows


def table_caption(device: str, result: dict[str, Any]) -> list[str]:
    """The lines that say what a device's table measured: hardware, batch, switches, peak and load."""
    device_result = result[device]
    inference_section = device_result["inference"]
    peak = inference_section["matmul_peak_gflops_per_s"]
    trains = [s for k, s in device_result.items() if k.startswith("train_")]
    switches = ", ".join(f"{key}={value}" for key, value in device_result["switches"].items())
    environment = result["environment"]
    return [
        f"{device.upper()}: {device_result['device']}, {device_result['precision']}, batch "
        f"{inference_section['batch_size']} at {inference_section['resolution']} px (forward+backward: batch "
        f"{trains[0]['batch_size'] if trains else '-'}); median of {result['config']['repeats']} interleaved passes",
        f"matmul peak in the same rounds: {peak['median']:.1f} GFLOP/s [{peak['min']:.1f}-{peak['max']:.1f}]; "
        f"1-min load average {environment['load_average_1min_before']:.2f} before, "
        f"{environment['load_average_1min_after']:.2f} after",
        f"speed-ups (all encoders): {switches}",
    ]


def markdown_table(result: dict[str, Any]) -> str:
    """Every measured device's table in Markdown, with its caption."""
    parts = ["# Encoder efficiency (paper Table 3 on this machine)"]
    for device in _devices(result):
        header, rows = table_rows(result[device])
        parts.append("\n".join(f"- {line}" for line in table_caption(device, result)))
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines))
    for device in ("cpu", "cuda"):
        if "skipped" in result.get(device, {}):
            parts.append(f"{device.upper()} skipped: {result[device]['skipped']}")
    return "\n\n".join(parts) + "\n"


def table_png(result: dict[str, Any]) -> bytes:
    """The Markdown tables rendered as one PNG (a table per measured device)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = _devices(result)
    fig, axes = plt.subplots(len(devices), 1, figsize=(18, 3.6 * len(devices)), squeeze=False)
    for ax, device in zip(axes[:, 0], devices):
        header, rows = table_rows(result[device])
        ax.axis("off")
        labels = [label.replace(": ", "\n").replace(" median ", "\nmedian ") for label in header]
        table = ax.table(cellText=rows, colLabels=labels, loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(list(range(len(header))))
        table.scale(1, 1.6)
        for column in range(len(header)):
            table[0, column].set_height(table[0, column].get_height() * 1.8)  # two-line labels
        ax.set_title("\n".join(table_caption(device, result)), fontsize=8, loc="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Every number of the result under its dotted path, e.g. `cpu.inference.rows.B.throughput_ratio`."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", {device: result[device] for device in _devices(result)})
    return flat
