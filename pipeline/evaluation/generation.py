"""`eval_generation`: FID and KID of the latent diffusion model's images (paper §5, Table 7).

Sampling is pipeline/ldm/sampling.py.

Protocol of `eval_generation`. FID and KID (torch-fidelity's Inception-v3 pool3 features, pipeline/measures/fidelity.py)
compare the N samples with N real crops of each reference set: random crops at the training resolution with
random flips, drawn exactly like the training stream (pipeline/data/shards.py) from the train or val shards with the
generation seed, i.e. the distribution the LDM was trained to model. FID is biased upwards at small N: compare
FIDs only at equal N. With both reference sets, FID and KID between the two real sets are reported as the floor
a perfect model would reach at this N. Where the Inception weights cannot be loaded (pipeline/measures/pretrained.py), FID
and KID are null and `unavailable` gives the reason; the samples and their grid are produced regardless.

Next to FID/KID, never instead of them, `swd` holds the multi-scale sliced Wasserstein distance of Karras et al.
(2018; pipeline/measures/swd.py), which needs no pretrained network, with the generation seed and equal image counts
on both sides: `samples` compares the N samples with the N crops of the first reference set, `real_floor` the train
and val crops (when both are listed), and `noise_ceiling` N images decoded by the same autoencoder from raw N(0, I)
latents z of the model's latent shape (`autoencoder.decode(z)`, not denormalised: what the decoder makes of pure
noise), seeded by (seed, N + i) so they never share a sample's noise. The real crops are drawn whether or not
Inception is available.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.autoencoder import Autoencoder
from pipeline.config.schema import GenerationConfig
from pipeline.core.files import write_bytes
from pipeline.data.shards import TrainStream, shard_urls
from pipeline.ldm.sampling import LatentDiffusion, generate, initial_noise, sample_grid
from pipeline.measures.fidelity import (
    FeatureBank,
    frechet_distance,
    kernel_inception_distance,
)
from pipeline.measures.pretrained import WeightsUnavailable, load_inception
from pipeline.measures.quality import to_uint8
from pipeline.measures.swd import CITATION as SWD_CITATION
from pipeline.measures.swd import PROTOCOL as SWD_PROTOCOL
from pipeline.measures.swd import sliced_wasserstein

FIDELITY_METRICS = ("fid", "kid")


def reference_crops(shards: Path, split: str, resolution: int, count: int, cfg: GenerationConfig) -> Tensor:
    """uint8 (count, 3, r, r): `count` random training-stream crops of split `split`, on the CPU."""
    # Crops are streamed one at a time (the stream only forms full batches within an epoch, and a split may hold
    # fewer images than a batch) and quantised as they arrive: float32 crops would take 4x the memory.
    crops = _uint8_images(count, resolution)
    stream = TrainStream(shard_urls(shards, split), resolution, 1, seed=cfg.seed)
    for index, crop in enumerate(itertools.islice(stream, count)):
        crops[index] = to_uint8(crop[0])  # (3, r, r)
    return crops


def reference_features(crops: Tensor, cfg: GenerationConfig, inception: nn.Module, device: torch.device) -> Tensor:
    """Inception features (N, 2048) of uint8 crops (N, 3, r, r)."""
    bank = FeatureBank(inception, device)
    for batch in crops.split(cfg.batch_size):
        bank.add(batch)  # (B, 3, r, r)
    return bank.features()


@torch.no_grad()
def noise_decodings(model: LatentDiffusion, autoencoder: Autoencoder, cfg: GenerationConfig) -> Tensor:
    """uint8 (N, 3, r, r) on the CPU: raw N(0, I) latents (seeded by (seed, N + i)) decoded by the autoencoder."""
    device = next(model.unet.parameters()).device
    decoded = _uint8_images(cfg.num_samples, model.resolution)
    for start in range(0, cfg.num_samples, cfg.batch_size):
        stop = min(start + cfg.batch_size, cfg.num_samples)
        z = initial_noise(range(cfg.num_samples + start, cfg.num_samples + stop), model.latent_shape,
                          cfg.seed).to(device)  # (B, nz, h, w)
        images, _ = autoencoder.decode(z)
        decoded[start:stop] = to_uint8(images).cpu()
    return decoded


def _uint8_images(count: int, resolution: int) -> Tensor:
    """An empty uint8 (count, 3, r, r) set, filled batch by batch (a list of batches and a cat would hold it twice)."""
    return torch.empty(count, 3, resolution, resolution, dtype=torch.uint8)


def _swd(crops: dict[str, Tensor], samples: Tensor, noise: Tensor, cfg: GenerationConfig) -> dict:
    real = crops[cfg.reference_sets[0]]
    return {
        "samples": sliced_wasserstein(samples, real, cfg.seed),
        "real_floor": sliced_wasserstein(crops["train"], crops["val"], cfg.seed) if len(crops) == 2 else None,
        "noise_ceiling": sliced_wasserstein(noise, real, cfg.seed),
        "reference": cfg.reference_sets[0],
        "n": len(real),
        "protocol": SWD_PROTOCOL,
        "citation": SWD_CITATION,
    }


def _scores(real: Tensor, fake: Tensor, cfg: GenerationConfig) -> dict:
    kid, kid_std, subset = kernel_inception_distance(real, fake, cfg.kid_subset_size, cfg.kid_subsets, cfg.seed)
    return {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, "kid_subset_size": subset,
            "n": len(real)}


def _inception(cfg: GenerationConfig, device: torch.device, unavailable: dict[str, str]) -> nn.Module | None:
    try:
        return load_inception(cfg.inception_weights, "generation.inception_weights").to(device)
    except WeightsUnavailable as err:
        for metric in FIDELITY_METRICS:
            unavailable[metric] = str(err)
        tqdm.write(f"eval_generation: FID/KID unavailable, reported as null: {err}")
        return None


def eval_generation(cfg: GenerationConfig, model: LatentDiffusion, autoencoder: Autoencoder, shards: Path,
                    grid_path: Path) -> dict:
    """Generate `cfg.num_samples` images, write their grid to `grid_path` and return the metrics JSON (protocol
    in the module doc)."""
    device = next(model.unet.parameters()).device
    steps = cfg.sampling_steps or model.diffusion.sampling_steps
    unavailable: dict[str, str] = {}
    inception = _inception(cfg, device, unavailable)
    fake = FeatureBank(inception, device) if inception is not None else None
    samples = _uint8_images(cfg.num_samples, model.resolution)  # all images, on the CPU, for the SWD and the grid
    seconds = 0.0  # sampling and decoding only
    for start in tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="eval_generation: sampling", unit="batch"):
        stop = min(start + cfg.batch_size, cfg.num_samples)
        began = time.perf_counter()
        images = generate(model, autoencoder, range(start, stop), cfg.seed, steps)
        seconds += time.perf_counter() - began
        if fake is not None:
            fake.add(images)
        samples[start:stop] = images
    title = f"eval_generation: EMA LDM samples, {steps} Heun steps"
    write_bytes(grid_path, sample_grid(samples[:cfg.grid_samples], title, cfg.seed))

    references: dict[str, dict | None] = {split: None for split in cfg.reference_sets}
    floor = None
    crops = {split: reference_crops(shards, split, model.resolution, cfg.num_samples, cfg)
             for split in tqdm(cfg.reference_sets, desc="eval_generation: reference crops", unit="set")}
    swd = _swd(crops, samples, noise_decodings(model, autoencoder, cfg), cfg)
    if inception is not None:
        real = {split: reference_features(split_crops, cfg, inception, device) for split, split_crops in crops.items()}
        references = {split: _scores(features, fake.features(), cfg) for split, features in real.items()}
        if len(real) == 2:
            floor = _scores(real["train"], real["val"], cfg)
    headline = references[cfg.reference_sets[0]]
    return {
        "num_samples": cfg.num_samples,
        "resolution": model.resolution,
        "latent_shape": list(model.latent_shape),
        "sampling_steps": steps,
        "network_evaluations_per_sample": 2 * steps - 1,
        "seconds_per_sample": seconds / cfg.num_samples,
        "headline_reference": cfg.reference_sets[0],
        **{key: headline[key] if headline else None for key in ("fid", "kid", "kid_std")},
        "reference": references,
        "real_floor": floor,
        "swd": swd,
        "unavailable": unavailable,
        "protocol": (
            "N samples from per-index seeded noise, EDM Heun sampler, decoded and quantised to 8 bits; FID/KID on "
            "Inception-v3 pool3 features against N random training-stream crops (random position and flip at the "
            "training resolution) of each reference set; real_floor compares the train and val crops (FID is "
            "biased upwards for small N: compare only at equal N)"
        ),
    }
