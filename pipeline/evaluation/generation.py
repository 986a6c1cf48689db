"""`eval_generation`: FID and KID of the latent diffusion model's images (paper §5, Table 7).

Sampling is pipeline/ldm/sampling.py.

Protocol of `eval_generation`. FID and KID (torch-fidelity's Inception-v3 pool3 features, pipeline/measures/fidelity.py)
compare the N samples with N real crops of each reference set: random crops at the training resolution with
random flips, drawn exactly like the training stream (pipeline/data/shards.py) from the train or val shards with the
generation seed, i.e. the distribution the LDM was trained to model. FID is biased upwards at small N: compare
FIDs only at equal N. With both reference sets, FID and KID between the two real sets are reported as the floor
a perfect model would reach at this N. Where the Inception weights cannot be loaded (pipeline/measures/pretrained.py), FID
and KID are null and `unavailable` gives the reason; the samples and their grid are produced regardless.
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
from pipeline.ldm.sampling import LatentDiffusion, generate, sample_grid
from pipeline.measures.fidelity import (
    FeatureBank,
    frechet_distance,
    kernel_inception_distance,
)
from pipeline.measures.pretrained import WeightsUnavailable, load_inception
from pipeline.measures.quality import to_uint8

FIDELITY_METRICS = ("fid", "kid")


def reference_features(shards: Path, split: str, resolution: int, count: int, cfg: GenerationConfig,
                       inception: nn.Module, device: torch.device) -> Tensor:
    """Inception features (count, 2048) of `count` random training-stream crops of split `split`."""
    # Crops are streamed one at a time: the stream only forms full batches within an epoch, and a split may hold
    # fewer images than a batch.
    crops = itertools.islice(TrainStream(shard_urls(shards, split), resolution, 1, seed=cfg.seed), count)
    bank = FeatureBank(inception, device)
    while batch := list(itertools.islice(crops, cfg.batch_size)):
        bank.add(to_uint8(torch.cat(batch)))  # (B, 3, r, r)
    return bank.features()


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
    kept: list[Tensor] = []  # the first grid_samples images
    seconds = 0.0  # sampling and decoding only
    for start in tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="eval_generation: sampling", unit="batch"):
        began = time.perf_counter()
        images = generate(model, autoencoder, range(start, min(start + cfg.batch_size, cfg.num_samples)),
                          cfg.seed, steps)
        seconds += time.perf_counter() - began
        if fake is not None:
            fake.add(images)
        kept.append(images[:cfg.grid_samples - sum(len(k) for k in kept)])
    write_bytes(grid_path, sample_grid(torch.cat(kept), f"seed {cfg.seed}, {steps} steps"))

    references: dict[str, dict | None] = {split: None for split in cfg.reference_sets}
    floor = None
    if inception is not None:
        real = {split: reference_features(shards, split, model.resolution, cfg.num_samples, cfg, inception, device)
                for split in tqdm(cfg.reference_sets, desc="eval_generation: reference crops", unit="set")}
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
        "unavailable": unavailable,
        "protocol": (
            "N samples from per-index seeded noise, EDM Heun sampler, decoded and quantised to 8 bits; FID/KID on "
            "Inception-v3 pool3 features against N random training-stream crops (random position and flip at the "
            "training resolution) of each reference set; real_floor compares the train and val crops (FID is "
            "biased upwards for small N: compare only at equal N)"
        ),
    }
