"""Measuring tools of the encoder benchmark (pipeline/benchmark/encoders.py): FLOP counts, peak tensor memory, wall
or CUDA-event time, dense-kernel probes of the hardware's peak, and the executors that run a batch either as a
whole or spread over single-threaded CPU workers."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

SD_VAE_BASE_CHANNELS = 128  # the SD-VAE encoder's width at full resolution; it doubles as the side halves


class MatmulProbe(nn.Module):
    """One dense (n x n) @ (n x n) product per image (BLAS: MKL on x86): a best-case GEMM under the same
    executor and the same load as the encoders."""

    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("a", torch.randn(size, size) / size**0.5)
        self.register_buffer("b", torch.randn(size, size))

    def forward(self, images: Tensor) -> Tensor:
        """(B, ...) -> (B, n, n)."""
        return torch.stack([self.a @ self.b for _ in range(images.shape[0])])  # (B, n, n)


class ConvProbe(nn.Module):
    """One 3x3 convolution C -> C per image on a C x side x side map, side = resolution * 128 / C: the SD-VAE
    encoder's own layer at width C (oneDNN on the CPU, cuDNN on the GPU), in the layout the encoders run in."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        side = max(1, resolution * SD_VAE_BASE_CHANNELS // channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.register_buffer("features", torch.randn(1, channels, side, side))

    def forward(self, images: Tensor) -> Tensor:
        """(B, ...) -> (B, C, side, side)."""
        return self.conv(torch.cat([self.features] * images.shape[0]))  # cat keeps the buffer's memory format


def peak_probes(matmul_sizes: tuple[int, ...], conv_channels: tuple[int, ...],
                resolution: int) -> dict[str, Callable[[], nn.Module]]:
    """{row name: probe factory}: the dense kernels whose best GFLOP/s is the reference peak."""
    probes: dict[str, Callable[[], nn.Module]] = {
        f"peak:matmul_{n}": partial(MatmulProbe, n) for n in matmul_sizes}
    probes.update({f"peak:conv3x3_{c}ch": partial(ConvProbe, c, resolution) for c in conv_channels})
    return probes


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
        """Nothing to release: no threads of its own."""


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
