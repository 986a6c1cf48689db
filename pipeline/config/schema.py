"""The schema of `params.yaml`: one dataclass per section, and the loader every stage uses.

A stage uses only the sections it declares in dvc.yaml, e.g. `data = load_params("params.yaml", "data")["data"]`,
but every stage validates the whole file: a mistake in any section (`dvc exp run -S` rewrites the whole file)
fails at the first stage, listing every problem at once, not hours later in the stage that reads it.

This module imports only the model configs (models/*) and pipeline.config.parsing, never a stage library, so
any stage library can import its config from here.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from models.autoencoder import DOWNSAMPLING, AutoencoderConfig
from models.diffusion import DiffusionConfig
from models.discriminator import DiscriminatorConfig
from models.ldm_unet import UNET_PRESETS, UNetConfig
from models.losses import LossConfig
from pipeline.config.cron import check_cron
from pipeline.config.parsing import ConfigError, collect, parse, read_yaml

if TYPE_CHECKING:
    import torch

AmpMode = Literal["auto", "off", "bf16", "fp16"]  # autocast on GPUs; the CPU runs fp32
EncoderName = Literal["sd_vae", "S", "B", "M", "L"]  # the encoders benchmark_encoders compares
BASELINE_ENCODER = "sd_vae"  # the baseline of every benchmark ratio


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how `prepare` stores them.

    source: `embedded` (real photos shipped in installed packages), `folder` (a directory of images, searched
    recursively) or `shards` (existing WebDataset tar shards: a path, glob, brace pattern or URL).
    workers: decoding processes (None: every core); the output is the same for any number.
    watch: the folder or file dvc.yaml makes a dependency of `prepare` (`${data.watch}`), so that changing its
    content reruns it: data.path for a folder source (the stage refuses a folder it does not cover), the local
    shard folder for local shards; the default (the module that lists the embedded photos) suits `embedded`.
    """

    source: Literal["embedded", "folder", "shards"] = "embedded"
    path: str = ""
    storage_size: int = field(default=512, metadata={"ge": 32})
    min_size: int = field(default=256, metadata={"ge": 8})
    val_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0})
    max_pixels: int = field(default=89_478_485, metadata={"ge": 1})
    shard_max_samples: int = field(default=64, metadata={"ge": 1})
    include_debian_wallpapers: bool = True
    seed: int = 0
    workers: int | None = field(default=None, metadata={"ge": 1})
    watch: str = "pipeline/data/sources.py"

    def __post_init__(self) -> None:
        if self.source != "embedded" and not self.path:
            raise ValueError(f"path: required when source is '{self.source}'; set data.path")
        if not self.watch:
            raise ValueError("watch: empty; name the folder or file whose changes rerun prepare (DVC needs a path)")
        if self.min_size > self.storage_size:
            raise ValueError(
                f"min_size: {self.min_size} exceeds storage_size {self.storage_size}; "
                "images are stored with their shorter side at most storage_size"
            )


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: the experiment every stage run goes to, and the names models are registered under."""

    experiment: str = "litevae"
    vae_model_name: str = "litevae-autoencoder"
    ldm_model_name: str = "litevae-ldm"


@dataclass(frozen=True)
class ScheduleConfig:
    """When `serve` (and `deploy`) runs the Prefect flow, and which stages it targets.

    cron: a standard 5-field cron expression (minute hour day-of-month month day-of-week; `*`, `N`, `N-M`, `/STEP`,
    lists, month and weekday names), in `timezone`, an IANA time zone name. targets: stages of dvc.yaml, run with
    everything upstream of them; checked against dvc.yaml when the schedule is registered and when a run starts.
    """

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    targets: tuple[str, ...] = ("export_ldm", "export_vae", "analyze_latents", "benchmark_encoders")

    def __post_init__(self) -> None:
        check_cron(self.cron)
        try:  # loads (and caches) the one zone, where available_timezones() would walk the whole database
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, e.g. 'Europe'
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone name, e.g. 'UTC' or "
                             "'Europe/Berlin'") from None


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section: the autoencoder (`vae`) and its discriminator."""

    vae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass(frozen=True)
class LoopConfig:
    """What every training section gives the training loop (pipeline/training/loop.py).

    batch_size: the global batch, split evenly over the processes under torchrun (it must divide).

    steps: optimisation steps of the stage. lr, warmup_steps: Adam's learning rate and its linear warm-up.
    ema_decay: decay of the weights' exponential moving average (the model that is validated and exported).
    grad_clip: max gradient norm (0: off). amp: autocast on GPUs ("auto": bf16 where supported); the CPU runs fp32.
    num_workers: DataLoader worker processes of the training stream. seed: initial weights, data order and every
    step's noise. log_every, val_every, checkpoint_every: steps between logged means of the training metrics, looks
    at validation data (also at step 0 and the end) and partial checkpoints. val_images: what a look measures: the
    VAE's fixed val crops (tiled over the val images), the LDM's val images (one central crop each).
    """

    steps: int = field(default=1000, metadata={"ge": 1})
    batch_size: int = field(default=16, metadata={"ge": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0})
    warmup_steps: int = field(default=0, metadata={"ge": 0})
    ema_decay: float = field(default=0.999, metadata={"ge": 0, "lt": 1})
    grad_clip: float = field(default=0.0, metadata={"ge": 0})
    amp: AmpMode = "auto"
    num_workers: int = field(default=1, metadata={"ge": 0})
    seed: int = 0
    log_every: int = field(default=10, metadata={"ge": 1})
    val_every: int = field(default=100, metadata={"ge": 1})
    checkpoint_every: int = field(default=100, metadata={"ge": 1})
    val_images: int = field(default=8, metadata={"ge": 1})


@dataclass(frozen=True)
class VAETrainConfig(LoopConfig):
    """One VAE training stage (`train_128`, `train_256`). Besides the loop's fields:

    resolution: training crops in pixels. disc_lr: the discriminator's learning rate. betas: both Adams' betas.
    mode_steps: decode the posterior mean instead of a sample for the first steps (at initialisation the posterior
    std is ~1, which buries the signal in noise). reset_optimizer: when starting from another stage's checkpoint,
    start Adam afresh (True) or keep its moments (False).
    """

    resolution: int = field(default=128, metadata={"ge": 16})
    disc_lr: float = field(default=1e-4, metadata={"gt": 0})
    betas: tuple[float, float] = (0.5, 0.9)
    mode_steps: int = field(default=0, metadata={"ge": 0})
    reset_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.resolution % 16:
            raise ValueError(f"resolution: {self.resolution} must be a multiple of 16 (f=8 latent, DWT levels)")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas: {self.betas} must each be in [0, 1)")


@dataclass(frozen=True)
class LDMConfig(LoopConfig):
    """The `ldm` section: `train_ldm` trains the latent-diffusion UNet on latents of the frozen fine-tuned
    autoencoder, normalised to std `diffusion.sigma_data` with statistics it measures on its own training stream
    (pipeline/ldm/latent_stats.py). Besides the loop's fields:

    unet: the UNet (models/ldm_unet.py). The default is the CPU-sized `UNET_PRESETS["tiny"]` (0.43M parameters,
        for 16x16 latents); the paper's is `UNET_PRESETS["ldm"]` (LDM-4's FFHQ / CelebA-HQ UNet, 274M). A `unet`
        mapping in params.yaml starts from UNetConfig's own defaults (the "small" preset): give every key.
    diffusion: EDM noise distribution, preconditioning and sampler (models/diffusion.py).
    resolution: training crops in pixels; latents are resolution / 8 on a side.
    latents: "on_the_fly" encodes every batch as it arrives, so each step sees fresh random crops and flips (the
        augmentation a light encoder keeps affordable). "cache" encodes the first `cache_size` crops of the same
        stream once before training and draws batches from them (the precomputed-latents workflow).
    cache_size: crops "cache" encodes, per process (about cache_size / train images fixed crops per image).
    latent_norm: "per_channel" normalises each latent channel by its own mean and std (as EDM2); "scalar" uses one
        mean and std over all channels (the scale factor of Rombach et al.'s LDM, the paper's). Either way the
        latents get mean 0 and std `diffusion.sigma_data`, the data scale EDM's preconditioning assumes.
    stats_crops: crops per process of the training stream (the first ones, with their flips, at `resolution`)
        whose latents give the statistics, all-reduced over the processes; with "cache", the cached crops instead.
        cache_size and stats_crops count crops per process (each process encodes its own), unlike batch_size.
    A look at the EMA UNet (every val_every steps) measures its loss on the central crops of `val_images` val images
    at fixed noise levels and noise, and draws a grid of `grid_samples` samples from fixed noise.
    """

    unet: UNetConfig = field(default_factory=lambda: UNET_PRESETS["tiny"])
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    resolution: int = field(default=128, metadata={"ge": 16})
    latents: Literal["on_the_fly", "cache"] = "on_the_fly"
    cache_size: int = field(default=1024, metadata={"ge": 1})
    latent_norm: Literal["per_channel", "scalar"] = "per_channel"
    stats_crops: int = field(default=1024, metadata={"ge": 1})
    grid_samples: int = field(default=16, metadata={"ge": 1})

    def __post_init__(self) -> None:
        multiple = DOWNSAMPLING * 2 ** (self.unet.num_levels - 1)
        if self.resolution % multiple:
            raise ValueError(
                f"resolution: {self.resolution} is not a multiple of {multiple} (the autoencoder's downsampling "
                f"{DOWNSAMPLING} x the UNet's 2^{self.unet.num_levels - 1}); pick a multiple of {multiple}"
            )


@dataclass(frozen=True)
class GenerationConfig:
    """The `generation` section: how `eval_generation` samples the EMA UNet of `train_ldm` and scores the samples.

    num_samples: images generated; each reference set contributes as many real crops (FID is biased upwards at
        small n, so both sides get the same n; compare FIDs only at equal n).
    sampling_steps: steps of the EDM Heun sampler (2 x steps - 1 network evaluations); null: the trained model's
        `ldm.diffusion.sampling_steps`.
    seed: sample i starts from noise seeded by (seed, i), so samples do not depend on batch_size; it also draws the
        reference crops and KID's subsets.
    batch_size: samples generated and decoded at once.
    reference_sets: the real images FID and KID compare against: random crops at the training resolution (what
        the LDM learnt) of the "train" and/or "val" images.
    inception_weights: torch-fidelity Inception-v3 weights file ("": $TORCH_HOME/hub/checkpoints/, downloaded
        there on first use where the network allows).
    kid_subset_size, kid_subsets: KID's random subsets (the size is clamped to the sample count).
    grid_samples: samples shown in the grid.
    """

    num_samples: int = field(default=1000, metadata={"ge": 2})
    sampling_steps: int | None = field(default=None, metadata={"ge": 1})
    seed: int = 0
    batch_size: int = field(default=32, metadata={"ge": 1})
    reference_sets: tuple[Literal["train", "val"], ...] = ("train", "val")
    inception_weights: str = ""
    kid_subset_size: int = field(default=1000, metadata={"ge": 2})
    kid_subsets: int = field(default=100, metadata={"ge": 1})
    grid_samples: int = field(default=16, metadata={"ge": 1})

    def __post_init__(self) -> None:
        if not self.reference_sets or len(set(self.reference_sets)) != len(self.reference_sets):
            raise ValueError(
                f"reference_sets: got {list(self.reference_sets)}; list 'train' and/or 'val', each once"
            )


@dataclass(frozen=True)
class EvalConfig:
    """The `eval` section: how `eval_recon` measures the fine-tuned autoencoder (protocol in the module doc).

    resolution: the headline metrics' resolution, of both protocols (the fine-tuning resolution); one of
        `resolutions`.
    resolutions: the resolution sweep of Fig. 5 (2^5 .. 2^9), multiples of 8 and at least 32 (LPIPS's AlexNet
        pools a smaller image down to nothing).
    views_per_image: square views per val image; more views give rFID more samples at a linear cost.
    max_images: val images used for the resized views, in shard order (null: all).
    native_crops: crops of the native-crops protocol (fewer if the val images hold fewer tiles); all val images
        are tiled, as in training validation, whose crops these are when it equals train_256.val_images.
    batch_size: views reconstructed at once (bounds memory at the largest resolution).
    lpips_net: LPIPS backbone (the paper's tables use AlexNet).
    inception_weights: torch-fidelity Inception-v3 weights file ("": $TORCH_HOME/hub/checkpoints/, downloaded
        there on first use where the network allows).
    kid_subset_size, kid_subsets: KID's random subsets (the size is clamped to the number of views).
    grid_images: views shown in the reconstruction grid (at `resolution`).
    seed: draws the random views and KID's subsets.
    """

    resolution: int = field(default=256, metadata={"ge": 32})
    resolutions: tuple[int, ...] = field(default=(32, 64, 128, 256, 512), metadata={"ge": 32})
    views_per_image: int = field(default=1, metadata={"ge": 1})
    max_images: int | None = field(default=None, metadata={"ge": 1})
    native_crops: int = field(default=8, metadata={"ge": 1})
    batch_size: int = field(default=8, metadata={"ge": 1})
    lpips_net: Literal["alex", "vgg", "squeeze"] = "alex"
    inception_weights: str = ""
    kid_subset_size: int = field(default=1000, metadata={"ge": 2})
    kid_subsets: int = field(default=100, metadata={"ge": 1})
    grid_images: int = field(default=4, metadata={"ge": 1})
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [r for r in (self.resolution, *self.resolutions) if r % DOWNSAMPLING]
        if bad:
            raise ValueError(f"resolutions: {bad} are not multiples of {DOWNSAMPLING}, the autoencoder's downsampling")
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ValueError(f"resolutions: {list(self.resolutions)} repeats a value; list each once")
        if self.resolution not in self.resolutions:
            raise ValueError(f"resolution: {self.resolution} is not in resolutions {list(self.resolutions)}; add it")


@dataclass(frozen=True)
class LatentsConfig:
    """The `latents` section of params.yaml (protocol in the module doc).

    resolution: the side in pixels every view is resized to before encoding; a multiple of 8. analyze_latents' own
        setting, independent of ldm.resolution (the quickstart measures at 256 px, its LDM trains at 128).
    views_per_image: square views per val image.
    max_images: val images used, in shard order (null: all); MMD's kernel matrices grow as N^2.
    batch_size: views encoded at once.
    bandwidths: RBF kernel bandwidths sigma of the MMD (Table 6).
    draws: Gaussian samples the MMD is repeated over (mean and std are reported).
    baseline_checkpoint: a second VAE checkpoint analysed side by side ("": none). Not a DVC dependency.
    picture_images: images shown (their central views) in the latent picture.
    seed: draws the random views and the Gaussian samples.
    """

    resolution: int = field(default=256, metadata={"ge": 16})
    views_per_image: int = field(default=1, metadata={"ge": 1})
    max_images: int | None = field(default=1024, metadata={"ge": 1})
    batch_size: int = field(default=8, metadata={"ge": 1})
    bandwidths: tuple[float, ...] = field(default=(25.0, 50.0, 100.0, 250.0, 500.0), metadata={"gt": 0.0})
    draws: int = field(default=10, metadata={"ge": 2})
    baseline_checkpoint: str = ""
    picture_images: int = field(default=4, metadata={"ge": 1})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution % DOWNSAMPLING:
            raise ValueError(f"resolution: {self.resolution} is not a multiple of {DOWNSAMPLING}, the autoencoder's "
                             "downsampling")


@dataclass(frozen=True)
class BenchmarkConfig:
    """The `benchmark` section: what `benchmark_encoders` measures, and how. Memory layout and compilation are the
    `speed` section's (pipeline/core/speed.py), which training and encoding use too.

    encoders: "sd_vae" (the Stable Diffusion VAE encoder, the baseline of every ratio) and LiteVAE sizes.
    latent_channels: nz of every encoder (Table 2a compares all of them at 12).
    resolution: side of the square images of the inference passes.
    batch_size: images per inference pass on the CPU; cuda_batch_size on the GPU (Table 3: 32), which
        also serves the GPU's forward+backward passes.
    warmup: untimed passes of every encoder before the timed ones (the first one measures memory). With
        batch parallelism a warm-up pass runs one task per worker: every thread, shape and code path of a
        timed pass (the whole batch, unless task_images makes tasks smaller).
    repeats: timed rounds; every encoder runs at least one pass per round, and results are the median, min
        and max over its passes. The defaults (1 + 2 rounds of all five encoders at batch 8, 256 px) fill
        most of the 5-minute budget on 2 idle cores.
    min_timed_seconds: an encoder whose warm-up pass was short runs several passes per round, enough for
        its timed passes to add up to about this long: LiteVAE-S's sub-second passes are the noisiest, and
        the cheapest to repeat.
    peak_matmul_sizes / peak_conv_channels: the probes of the reference peak, run in the same rounds and
        executor as the encoders: an (n x n) @ (n x n) fp32 product per image for each n, and a 3x3
        convolution C -> C on a map of side resolution * 128 / C (the SD-VAE encoder's layer at width C) for
        each C. The best probe's GFLOP/s is the peak every encoder's "fraction of peak" is read against.
    devices: where to measure; "cuda" is skipped, and the result says why, when no GPU is present.
    amp: autocast on the GPU ("auto": bf16 where supported); the CPU always runs float32.
    cpu_parallelism: "batch" (workers take whole images, one intra-op thread each) or "intra_op" (every
        op spread over all threads, PyTorch's default).
    threads: CPU worker threads (batch) or intra-op threads (intra_op); None: every core the process may run
        on (OMP_NUM_THREADS, which the Makefile sets to 1 for training, does not shrink the benchmark).
    task_images: images a batch-parallel worker takes at a time; None: the batch split evenly over the
        workers (larger tasks run each op more efficiently, smaller ones balance a loaded machine better).
    retain_freed_memory: ask glibc to keep freed memory for reuse instead of returning it to the OS.
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
    min_timed_seconds: float = field(default=5.0, metadata={"ge": 0.0})
    peak_matmul_sizes: tuple[int, ...] = field(default=(1024, 2048), metadata={"ge": 1})
    peak_conv_channels: tuple[int, ...] = field(default=(128, 256, 512), metadata={"ge": 1})
    devices: tuple[Literal["cpu", "cuda"], ...] = ("cpu", "cuda")
    amp: AmpMode = "off"
    cpu_parallelism: Literal["batch", "intra_op"] = "batch"
    threads: int | None = field(default=None, metadata={"ge": 1})
    task_images: int | None = field(default=None, metadata={"ge": 1})
    retain_freed_memory: bool = True
    train_encoders: tuple[EncoderName, ...] = ("sd_vae", "S", "B")
    train_resolutions: tuple[int, ...] = field(default=(128, 256), metadata={"ge": 2 * DOWNSAMPLING})
    train_batch_size: int = field(default=2, metadata={"ge": 1})
    train_repeats: int = field(default=1, metadata={"ge": 1})

    def __post_init__(self) -> None:
        for name, encoders in (("encoders", self.encoders), ("train_encoders", self.train_encoders)):
            if BASELINE_ENCODER not in encoders:
                raise ValueError(f"{name}: must include {BASELINE_ENCODER!r}, the baseline of every ratio; add it")
            if len(set(encoders)) != len(encoders):
                raise ValueError(f"{name}: {encoders} names an encoder twice; list each once")
        if not set(self.train_encoders) <= set(self.encoders):
            raise ValueError(f"train_encoders: {self.train_encoders} must be among encoders {self.encoders}")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices: {self.devices} names a device twice; list each once")
        if not self.peak_matmul_sizes and not self.peak_conv_channels:
            raise ValueError("peak_matmul_sizes: with peak_conv_channels empty too, nothing measures the peak; "
                             "list at least one probe (e.g. peak_matmul_sizes: [2048])")
        for name, sides in (("resolution", (self.resolution,)), ("train_resolutions", self.train_resolutions)):
            if any(side % DOWNSAMPLING for side in sides):
                raise ValueError(f"{name}: {sides} must be multiples of {DOWNSAMPLING}, the encoders' downsampling")


Switch = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class SpeedConfig:
    """The `speed` section: how every stage that runs a model runs it (pipeline/core/speed.py applies it, and its
    doc gives the measurements behind "auto").

    channels_last: NHWC weights and activations; "auto": for inference, and for training on the GPU.
    compile: torch.compile; "auto": on the GPU only.
    cuda_graphs: compiled inference on the GPU captured as CUDA graphs.
    """

    channels_last: Switch = "auto"
    compile: Switch = "auto"
    cuda_graphs: bool = True

    def uses_channels_last(self, device: torch.device, training: bool) -> bool:
        if self.channels_last != "auto":
            return self.channels_last == "on"
        return device.type == "cuda" or not training

    def compiles(self, device: torch.device) -> bool:
        if self.compile != "auto":
            return self.compile == "on"
        return device.type == "cuda"

    def switches(self, device: torch.device) -> dict[str, bool]:
        """What is in force on `device`, for logs and results."""
        return {"channels_last_inference": self.uses_channels_last(device, training=False),
                "channels_last_training": self.uses_channels_last(device, training=True),
                "compile": self.compiles(device),
                "cuda_graphs": self.compiles(device) and device.type == "cuda" and self.cuda_graphs}


@dataclass(frozen=True)
class LaunchConfig:
    """The `launch` section: how `dvc repro` starts the training stages (pipeline/core/launch.py runs them in
    its own process when the world size is 1, under torchrun otherwise).

    nproc_per_node: processes per node, one per GPU. nnodes: nodes. Their product is the world size over which
    the training sections' global batch sizes are split; each rank draws its own random stream, so a world
    size changes results and both keys are DVC params of the training stages.
    rdzv_endpoint: host:port of node 0, the node that runs DVC and holds global rank 0 (the one process that
    writes outputs and logs), where the other nodes join it (static rendezvous; used only when nnodes > 1:
    one node rendezvouses on a free local port). Not a DVC param: where the nodes meet changes no result.
    """

    nproc_per_node: int = field(default=1, metadata={"ge": 1})
    nnodes: int = field(default=1, metadata={"ge": 1})
    rdzv_endpoint: str = "127.0.0.1:29500"

    def __post_init__(self) -> None:
        host, colon, port = self.rdzv_endpoint.rpartition(":")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"rdzv_endpoint: {self.rdzv_endpoint!r} is not host:port with a port in 1-65535; "
                             "give node 0's address, e.g. 'node0.cluster:29500'")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


SECTIONS: dict[str, type] = {
    "speed": SpeedConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train_128": VAETrainConfig,
    "train_256": VAETrainConfig,
    "eval": EvalConfig,
    "latents": LatentsConfig,
    "ldm": LDMConfig,
    "generation": GenerationConfig,
    "tracking": TrackingConfig,
    "schedule": ScheduleConfig,
    "benchmark": BenchmarkConfig,
    "launch": LaunchConfig,
}


CROPPING_SECTIONS = ("train_128", "train_256", "ldm")  # they train on random `resolution` crops of the shards


def _crops_larger_than_images(sections: dict[str, Any]) -> list[str]:
    """Training crops larger than data.min_size: prepare keeps images down to min_size on their shorter side
    (whatever the source, shards included), and a training stream stops at the first one smaller than its crop."""
    data = sections.get("data")
    if data is None:
        return []
    return [f"{name}.resolution: {sections[name].resolution} exceeds data.min_size {data.min_size}, so prepare keeps "
            f"images too small for its crops; raise data.min_size (with data.storage_size if needed) to at least "
            f"{sections[name].resolution}, or lower {name}.resolution"
            for name in CROPPING_SECTIONS if name in sections and sections[name].resolution > data.min_size]


def load_params(path: str | Path, *names: str) -> dict[str, Any]:
    """Validate every section of a params file, then return the named ones as {name: dataclass instance}.

    Raises one ConfigError listing every problem in the file, one per line, each naming the section or key.
    """
    for name in names:
        if name not in SECTIONS:
            raise ConfigError(f"{name}: not a params section; allowed sections: {sorted(SECTIONS)}")
    raw = read_yaml(path)
    problems = [f"{path}: unknown section '{name}'; allowed sections: {sorted(SECTIONS)}"
                for name in raw if name not in SECTIONS]
    sections = {}
    for name, cls in SECTIONS.items():
        with collect(problems):
            sections[name] = parse(cls, raw.get(name), name)
    problems += _crops_larger_than_images(sections)
    if problems:
        raise ConfigError("\n".join(problems))
    return {name: sections[name] for name in names}
