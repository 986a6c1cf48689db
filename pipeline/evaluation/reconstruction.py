"""The `eval_recon` stage: reconstruction quality of the EMA autoencoder on the val set (paper §5, Fig. 5).

Two protocols score the same val images. A resized view squeezes a whole image (stored with its shorter side at
most data.storage_size) into r px, a native crop keeps the stored scale, so at one r they score different pixels and
report different numbers: every reported number names its protocol (`PROTOCOLS`).

`resized_views` (Fig. 5's sweep). Every val image gives `views_per_image` square views (pipeline/data/views.py:
the central square first, then seeded random squares), each resized to r x r (PIL bicubic, antialiased) for every
r in `resolutions`. The model reconstructs each view from its posterior mode; the reconstruction is quantised to
8 bits, and
- PSNR and SSIM (11x11 Gaussian window, sigma 1.5) are computed per view on the 8-bit RGB pair;
- LPIPS (v0.1, `lpips_net` backbone; AlexNet in the paper's tables) per view on the 8-bit pair in [-1, 1];
- rFID and KID compare torch-fidelity's Inception-v3 pool3 features of all N views with those of their
  reconstructions (N = images x views at every resolution). FID is biased upwards at small N (noticeably below
  about 2048 samples): compare rFID values only at equal N, which the metrics JSON records beside them.
The headline metrics are those at `resolution` (the fine-tuning resolution); the sweep repeats them at every
resolution (Fig. 5).

`native_crops` (training validation's protocol). The first `native_crops` crops of `resolution` px tiled over the
val images at their stored scale (pipeline/training/vae_validation.validation_crops, unresized), scored by the
same functions training validation uses: with `native_crops` = train_256.val_images and `resolution` = 256 the
PSNR/SSIM are finetune_vae's final val/psnr and val/ssim. LPIPS on the same 8-bit pairs, and the flat-colour and
bicubic x8 baselines on the same crops. No rFID: a handful of crops is far too few samples.

When LPIPS or Inception weights cannot be loaded (pipeline/measures/pretrained.py) that metric is null and
`unavailable` gives the reason; PSNR and SSIM are always computed.

Resized views are streamed: one val image at a time, reconstructions in batches of `batch_size` per resolution,
and only per-view scores and 2048-d features are kept, so memory does not grow with the images' pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from models.autoencoder import Autoencoder
from pipeline.config.schema import EvalConfig
from pipeline.core.checkpoint import load_autoencoder
from pipeline.core.errors import MissingInputError
from pipeline.core.files import write_bytes
from pipeline.data.shards import shard_urls
from pipeline.data.views import iter_images, resize_square, square_views
from pipeline.measures.fidelity import (
    FeatureBank,
    frechet_distance,
    kernel_inception_distance,
)
from pipeline.measures.pretrained import WeightsUnavailable, load_inception, load_lpips
from pipeline.measures.quality import from_uint8, psnr, ssim, to_uint8
from pipeline.training.vae_validation import baselines, reconstruction_grid, score_reconstructions, validation_crops

SWEEP_METRICS = ("rfid", "lpips", "psnr", "ssim")  # Fig. 5's panels, one DVC plot file each
SWEEP_FIGURE = "resolution_sweep.png"
GRID = "reconstructions.png"
PROTOCOLS = {  # the metrics JSON's section (and MLflow prefix) per protocol, with what it measures
    "resized_views": "whole central square views resized to r x r (Fig. 5 sweep); rFID is biased upwards "
                     "for n < 2048 views, compare it only at equal n",
    "native_crops": "crops at r tiled over the val images at their stored scale, as training validation "
                    "(finetune_vae's val/psnr for the same crops), next to the flat-colour and bicubic x8 baselines",
}


class EvalReport(NamedTuple):
    metrics: dict  # the metrics JSON
    files: list[Path]  # the plots and grid written


class _ResolutionEval:
    """Reconstructs the views of one resolution batch by batch and keeps their per-view scores and features."""

    def __init__(self, resolution: int, model: Autoencoder, device: torch.device, batch_size: int,
                 lpips_net: nn.Module | None, inception: nn.Module | None, keep: int):
        self.resolution, self.model, self.device, self.batch_size = resolution, model, device, batch_size
        self.lpips_net = lpips_net
        self.real = FeatureBank(inception, device) if inception is not None else None
        self.fake = FeatureBank(inception, device) if inception is not None else None
        self.keep = keep
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []  # (input, reconstruction) (r, r, 3) uint8 for the grid
        self.pending: list[np.ndarray] = []
        self.scores: dict[str, list[Tensor]] = {"psnr": [], "ssim": [], "lpips": []}
        self.upsampled = 0

    def add(self, square: np.ndarray) -> None:
        """One (S, S, 3) uint8 view; it is resized to this resolution."""
        self.upsampled += square.shape[0] < self.resolution
        self.pending.append(resize_square(square, self.resolution))
        if len(self.pending) == self.batch_size:
            self.flush()

    @torch.inference_mode()
    def flush(self) -> None:
        if not self.pending:
            return
        images = torch.from_numpy(np.stack(self.pending)).permute(0, 3, 1, 2).contiguous()  # (B, 3, r, r) uint8
        self.pending = []
        recon = to_uint8(self.model(from_uint8(images).to(self.device), sample=False).image).cpu()
        self.scores["psnr"].append(psnr(images, recon))
        self.scores["ssim"].append(ssim(images, recon))
        if self.lpips_net is not None:
            distance = self.lpips_net(from_uint8(images).to(self.device), from_uint8(recon).to(self.device))
            self.scores["lpips"].append(distance.flatten().double().cpu())  # (B,)
        if self.real is not None:
            self.real.add(images)
            self.fake.add(recon)
        for image, output in zip(images, recon):
            if len(self.kept) < self.keep:
                self.kept.append((image.permute(1, 2, 0).numpy(), output.permute(1, 2, 0).numpy()))

    def summary(self, cfg: EvalConfig) -> dict:
        """Means and population stds over views of each score, rFID and KID (None where unavailable)."""
        out: dict = {"n": int(sum(len(s) for s in self.scores["psnr"])), "upsampled_views": self.upsampled}
        for name, parts in self.scores.items():
            values = torch.cat(parts) if parts else None
            out[name] = float(values.mean()) if values is not None else None
            out[f"{name}_std"] = float(values.std(correction=0)) if values is not None else None
        out.update(rfid=None, kid=None, kid_std=None, kid_subset_size=None)
        if self.real is not None and out["n"] >= 2:
            real, fake = self.real.features(), self.fake.features()
            out["rfid"] = frechet_distance(real, fake)
            out["kid"], out["kid_std"], out["kid_subset_size"] = kernel_inception_distance(
                real, fake, cfg.kid_subset_size, cfg.kid_subsets, cfg.seed)
        return out


def _load(loader: Callable[[], nn.Module], what: str, unavailable: dict[str, str],
          metrics: tuple[str, ...]) -> nn.Module | None:
    """`loader()`, or None with the reason recorded under each of `metrics` (and printed) if weights are missing."""
    try:
        return loader()
    except WeightsUnavailable as err:
        for metric in metrics:
            unavailable[metric] = str(err)
        tqdm.write(f"eval_recon: {what} unavailable, reported as null: {err}")
        return None


def eval_recon(cfg: EvalConfig, checkpoint: Path, shards: Path, plots: Path) -> EvalReport:
    """Evaluate the EMA autoencoder of `checkpoint` on the val shards in `shards` under both protocols; write the
    resized views' sweep plots (`sweep_<metric>.csv`, `resolution_sweep.png`) and reconstruction grid into `plots`."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_autoencoder(checkpoint)
    model.to(device)
    unavailable: dict[str, str] = {}
    lpips_net = _load(lambda: load_lpips(cfg.lpips_net).to(device), f"LPIPS-{cfg.lpips_net}", unavailable, ("lpips",))
    inception = _load(lambda: load_inception(cfg.inception_weights).to(device), "rFID/KID", unavailable,
                      ("rfid", "kid"))

    runs = {r: _ResolutionEval(r, model, device, cfg.batch_size, lpips_net, inception,
                               keep=cfg.grid_images if r == cfg.resolution else 0) for r in sorted(cfg.resolutions)}
    images = 0
    for pixels in tqdm(iter_images(shard_urls(shards, "val"), cfg.max_images), desc="eval_recon", unit="img"):
        for square in square_views(pixels, cfg.views_per_image, cfg.seed, images):
            for run in runs.values():
                run.add(square)
        images += 1
    if images == 0:
        raise MissingInputError(f"{shards}: the val shards hold no images; re-run prepare")
    for run in runs.values():
        run.flush()
    if inception is not None and images * cfg.views_per_image < 2:
        for metric in ("rfid", "kid"):
            unavailable[metric] = "needs at least 2 views; raise eval.views_per_image or use more val images"

    sweep = {r: run.summary(cfg) for r, run in runs.items()}
    metrics = {
        "checkpoint": str(checkpoint),
        "resolution": cfg.resolution,
        "images": images,
        "protocols": PROTOCOLS,
        "resized_views": {"views_per_image": cfg.views_per_image, **sweep[cfg.resolution]},
        "native_crops": _native_crops(cfg, model, device, shard_urls(shards, "val"), lpips_net, unavailable),
        "lpips_net": cfg.lpips_net,
        "unavailable": unavailable,
        "sweep": {str(r): s for r, s in sweep.items()},  # resized views at every resolution
    }
    files = _write_sweep(sweep, plots)
    write_bytes(plots / GRID, _grid(runs[cfg.resolution].kept, cfg.resolution))
    return EvalReport(metrics, [*files, plots / GRID])


@torch.inference_mode()
def _native_crops(cfg: EvalConfig, model: Autoencoder, device: torch.device, urls: list[str],
                  lpips_net: nn.Module | None, unavailable: dict[str, str]) -> dict | None:
    """The `native_crops` protocol at `cfg.resolution`: the model's mean PSNR/SSIM/LPIPS and the baselines' PSNR/SSIM
    on the crops training validation scores; None, with the reason in `unavailable`, if no val image holds one."""
    try:
        crops = validation_crops(urls, cfg.resolution, cfg.native_crops)  # (N, 3, r, r) in [-1, 1], 8-bit values
    except MissingInputError as err:
        unavailable["native_crops"] = str(err)
        return None
    scores, recon = score_reconstructions(model, crops, cfg.batch_size, device)  # training validation's numbers
    lpips = None
    if lpips_net is not None:
        recon = from_uint8(to_uint8(recon))  # the 8-bit reconstruction, as PSNR/SSIM see it
        distances = [lpips_net(crops[i:i + cfg.batch_size].to(device), recon[i:i + cfg.batch_size].to(device))
                     for i in range(0, len(crops), cfg.batch_size)]  # (B, 1, 1, 1) each
        lpips = float(torch.cat(distances).flatten().double().mean())
    return {"n": len(crops), **scores, "lpips": lpips, **baselines(crops)}


def _write_sweep(sweep: dict[int, dict], plots: Path) -> list[Path]:
    """One CSV per Fig. 5 metric (rows where it is available) and the four-panel PNG."""
    files = []
    for metric in SWEEP_METRICS:
        lines = [f"resolution,log2_resolution,{metric},n"]
        lines += [f"{r},{math.log2(r):g},{s[metric]!r},{s['n']}" for r, s in sweep.items() if s[metric] is not None]
        path = plots / f"sweep_{metric}.csv"
        write_bytes(path, ("\n".join(lines) + "\n").encode())
        files.append(path)
    write_bytes(plots / SWEEP_FIGURE, _sweep_figure(sweep))
    return [*files, plots / SWEEP_FIGURE]


def _grid(kept: list[tuple[np.ndarray, np.ndarray]], resolution: int) -> bytes:
    """PNG bytes of the reconstruction grid of the kept (input, reconstruction) views, (r, r, 3) uint8 each."""
    inputs, outputs = (np.stack(images) for images in zip(*kept))  # (N, r, r, 3) each
    return reconstruction_grid(inputs, outputs, f"eval_recon: EMA autoencoder on the first val views, resized to "
                               f"{resolution} px", [f"view {index}" for index in range(len(kept))])


def _sweep_figure(sweep: dict[int, dict]) -> bytes:
    """Fig. 5's four panels (rFID, PSNR, SSIM, LPIPS against log2 resolution) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = sorted(sweep)
    x = [math.log2(r) for r in resolutions]
    n = sweep[resolutions[0]]["n"]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, metric, label in zip(axes, ("rfid", "psnr", "ssim", "lpips"), ("rFID", "PSNR (dB)", "SSIM", "LPIPS")):
        points = [(xi, sweep[r][metric]) for xi, r in zip(x, resolutions) if sweep[r][metric] is not None]
        if points:
            ax.plot(*zip(*points), marker="o")
        else:
            ax.text(0.5, 0.5, f"unavailable\n(see unavailable.{metric}\nin the metrics JSON)", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_xlabel("resolution (log2)")
        ax.set_ylabel(label)
        ax.set_xticks(x)
        ax.set_xlim(x[0] - 0.5, x[-1] + 0.5)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Reconstruction across resolutions (n = {n} views per resolution)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
