"""The `analyze_latents` stage: how Gaussian the latent space is (paper Table 6), the latents' statistics, and a
picture of the latents (Figs. 2 and 4).

The latents are what `train_ldm` models: posterior samples z = mean + std * eps (one seeded draw per view) of
the val views (pipeline/data/views.py) at `resolution`. Table 6's protocol: each latent is flattened to a vector of
D = nz x h x w values, and the unbiased MMD^2 between the N latent vectors
and N samples of N(0, I_D) is computed with RBF kernels exp(-|a - b|^2 / (2 sigma^2)) for every bandwidth
sigma, repeated for `draws` fresh Gaussian samples and reported as mean and std over the draws. It is reported
for the raw latents (Table 6's comparison) and for the latents normalised to unit variance by the global
statistics below, (z - shift) * scale. The paper's absolute values are not reproducible from its text (its MMD scale is not stated; MMD^2 with
these kernels lies in [0, 2]) and the kernels' meaning depends on D, so compare models at equal D only, as
the optional baseline side by side does.

The metrics JSON reports the global shift (mean of all latent values) and scale (1 / their std) and the
per-channel means and stds of these val views, for analysis: `train_ldm` measures its own on its training stream
(pipeline/ldm/latent_stats.py). They are the exact moments of the posterior samples, free of sampling noise (law of
total variance): mean = mean of the posterior means, variance = variance of the posterior means + mean posterior
variance. The picture shows the posterior means (Figs. 2 and 4 show deterministic latents) and their
reconstructions.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.autoencoder import DOWNSAMPLING, Autoencoder
from pipeline.config.parsing import ConfigError
from pipeline.config.schema import LatentsConfig
from pipeline.core.checkpoint import load_autoencoder
from pipeline.core.errors import MissingInputError
from pipeline.core.files import write_bytes
from pipeline.core.grid import labelled_grid
from pipeline.data.shards import shard_urls
from pipeline.data.views import iter_images, resize_square, square_views
from pipeline.measures.quality import from_uint8, mmd_rbf, to_uint8

LATENT_PERCENTILES = (1.0, 99.0)  # per-channel display range of the latent pictures (robust to outliers)


class Encoded(NamedTuple):
    modes: Tensor  # (N, nz, h, w) float32 posterior means, on the CPU
    samples: Tensor  # (N, nz, h, w) float32 posterior samples, one per view
    posterior_var: Tensor  # (nz,) float64 mean posterior variance per channel
    views: list[np.ndarray]  # the central views of the first `picture_images` images, (r, r, 3) uint8
    view_modes: Tensor  # (len(views), nz, h, w) their posterior means


@torch.inference_mode()
def encode_views(model: Autoencoder, cfg: LatentsConfig, urls: list[str], device: torch.device) -> Encoded:
    """Posterior means and samples (drawn from `cfg.seed`) of every val view at `cfg.resolution`, encoded in
    batches of `cfg.batch_size`."""
    modes, samples, variances, views, pending = [], [], [], [], []
    generator = torch.Generator(device).manual_seed(cfg.seed)

    def flush() -> None:
        images = torch.from_numpy(np.stack(pending)).permute(0, 3, 1, 2)  # (B, 3, r, r) uint8
        posterior = model.encode(from_uint8(images).to(device))
        modes.append(posterior.mode().float().cpu())
        samples.append(posterior.sample(generator).float().cpu())
        variances.append(posterior.std.double().square().mean(dim=(2, 3)).cpu())  # (B, nz)
        pending.clear()

    images = 0
    for pixels in tqdm(iter_images(urls, cfg.max_images), desc="analyze_latents: encoding", unit="img"):
        for number, square in enumerate(square_views(pixels, cfg.views_per_image, cfg.seed, images)):
            view = resize_square(square, cfg.resolution)
            pending.append(view)
            if number == 0 and len(views) < cfg.picture_images:
                views.append(view)
            if len(pending) == cfg.batch_size:
                flush()
        images += 1
    if pending:
        flush()
    if not modes:
        raise MissingInputError(f"{urls}: the val shards hold no images; re-run prepare")
    means = torch.cat(modes)
    # Image i's central view is view 0 of its views_per_image consecutive ones.
    return Encoded(means, torch.cat(samples), torch.cat(variances).mean(dim=0), views,
                   means[::cfg.views_per_image][:len(views)])


def latent_statistics(modes: Tensor, posterior_var: Tensor) -> dict:
    """Exact moments of posterior samples z ~ N(mode, var): global shift (mean) and scale (1 / std) of all their
    values, and per-channel mean and std.

    Args:
        modes: (N, nz, h, w) posterior means.
        posterior_var: (nz,) posterior variance per channel, averaged over views and positions.
    """
    channels = modes.double().transpose(0, 1).flatten(1)  # (nz, N * h * w)
    channel_mean = channels.mean(dim=1)
    channel_var = channels.var(dim=1, correction=0) + posterior_var.double()  # (nz,) law of total variance
    shift = channel_mean.mean()  # every channel has the same number of values
    variance = (channel_var + (channel_mean - shift).square()).mean()
    return {
        "shift": float(shift),
        "scale": float(variance.rsqrt()),
        "channel_mean": channel_mean.tolist(),
        "channel_std": channel_var.sqrt().tolist(),
    }


def mmd_to_gaussian(latents: Tensor, bandwidths: tuple[float, ...], draws: int, seed: int) -> dict[str, dict]:
    """Table 6: MMD^2 between flattened (N, ...) latents and `draws` fresh N-sample draws of N(0, I).

    Returns {f"{sigma:g}": {"mean": ..., "std": ...}} over the draws.
    """
    flat = latents.flatten(1)  # (N, D)
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack([
        mmd_rbf(flat, torch.randn(flat.shape, generator=generator, dtype=torch.float64), bandwidths)
        for _ in range(draws)
    ])  # (draws, K)
    return {f"{sigma:g}": {"mean": float(values[:, k].mean()), "std": float(values[:, k].std())}
            for k, sigma in enumerate(bandwidths)}


def _latent_rgb(latent: Tensor) -> np.ndarray:
    """The first three channels of one (nz, h, w) latent as an (8h, 8w, 3) uint8 picture, each channel stretched
    between its 1st and 99th percentile (channel 0 as grey when nz < 3)."""
    channels = latent[:3] if len(latent) >= 3 else latent[:1].expand(3, -1, -1)  # (3, h, w)
    flat = channels.flatten(1).double()
    low = torch.quantile(flat, LATENT_PERCENTILES[0] / 100, dim=1).view(3, 1, 1)
    high = torch.quantile(flat, LATENT_PERCENTILES[1] / 100, dim=1).view(3, 1, 1)
    scaled = ((channels - low) / (high - low).clamp_min(1e-8)).clamp(0, 1)
    rgb = (scaled * 255).round().byte().permute(1, 2, 0).numpy()  # (h, w, 3)
    return rgb.repeat(DOWNSAMPLING, axis=0).repeat(DOWNSAMPLING, axis=1)


@torch.inference_mode()
def _picture_columns(model: Autoencoder, encoded: Encoded, device: torch.device) -> list[list[np.ndarray]]:
    """Per picture view: [reconstruction, latent channels 0-2] of its posterior mean, (r, r, 3) uint8 each."""
    latents = encoded.view_modes
    recon, _ = model.decode(latents.to(device))
    recon = to_uint8(recon).permute(0, 2, 3, 1).cpu().numpy()  # (k, r, r, 3)
    return [[image, _latent_rgb(latent)] for image, latent in zip(recon, latents)]


def _analyse(path: str | Path, cfg: LatentsConfig, urls: list[str],
             device: torch.device) -> tuple[dict, Encoded, list[list[np.ndarray]]]:
    """The report of one checkpoint, its encoded views and its picture columns."""
    model, _ = load_autoencoder(path)
    model.to(device)
    encoded = encode_views(model, cfg, urls, device)
    if len(encoded.samples) < 2:
        raise ConfigError(f"latents: {len(encoded.samples)} val view; the MMD needs at least 2, so raise "
                          "latents.views_per_image or latents.max_images")
    stats = latent_statistics(encoded.modes, encoded.posterior_var)
    normalised = (encoded.samples.double() - stats["shift"]) * stats["scale"]
    report = {
        "checkpoint": str(path),
        "samples": len(encoded.samples),
        "latent_shape": list(encoded.samples.shape[1:]),
        "dimension": encoded.samples[0].numel(),
        **stats,
        "posterior_var_mean": encoded.posterior_var.tolist(),
        "mmd": mmd_to_gaussian(encoded.samples, cfg.bandwidths, cfg.draws, cfg.seed),
        "mmd_normalised": mmd_to_gaussian(normalised, cfg.bandwidths, cfg.draws, cfg.seed),
    }
    return report, encoded, _picture_columns(model, encoded, device)


def analyze_latents(cfg: LatentsConfig, checkpoint: Path, shards: Path, picture: Path) -> dict:
    """Analyse the EMA autoencoder of `checkpoint` (and `cfg.baseline_checkpoint` if set) on the val shards;
    write the latent picture; return the metrics JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    urls = shard_urls(shards, "val")
    report, encoded, columns = _analyse(checkpoint, cfg, urls, device)
    metrics = {
        "resolution": cfg.resolution,
        "views_per_image": cfg.views_per_image,
        "draws": cfg.draws,
        "kernel": "exp(-|a - b|^2 / (2 sigma^2)) on flattened posterior samples (one per view)",
        "estimator": "unbiased MMD^2 against as many N(0, I) samples; mean and std over draws",
        "model": report,
    }
    headers = ["input", "reconstruction", "latent ch 0-2"]
    if cfg.baseline_checkpoint:
        metrics["baseline"], _, baseline_columns = _analyse(cfg.baseline_checkpoint, cfg, urls, device)
        columns = [own + other for own, other in zip(columns, baseline_columns)]
        headers += ["baseline recon.", "baseline latent"]

    rows = [[view, *row] for view, row in zip(encoded.views, columns)]
    title = (f"analyze_latents: central val views at {cfg.resolution} px, the reconstructions of their posterior "
             f"means and latent channels 0-2 as RGB ({LATENT_PERCENTILES[0]:g}-{LATENT_PERCENTILES[1]:g} percentile "
             "range per channel)")
    write_bytes(picture, labelled_grid(rows, title, [f"val image {index}" for index in range(len(rows))], headers))
    return metrics
