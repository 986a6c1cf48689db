"""train_ldm: the trainer learns, a single latent is memorised and regenerated, both latent sources feed the
same crops, the latent statistics are the exact moments of the training stream's crops (all-reduced across gloo
processes) and normalise it to std sigma_data, N steps + resume + N steps equal 2N steps exactly, and the stage
runs under DDP (gloo, 2 processes) and records its normalisation."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing
import torch.nn.functional as F
import yaml
from fixtures_ldm import LATENT_CHANNELS, tiny_ldm
from grid_reading import read_grid

from models.diffusion import DiffusionConfig
from models.gaussian import DiagonalGaussian
from pipeline.config.parsing import ConfigError, parse
from pipeline.config.schema import LDMConfig, SpeedConfig
from pipeline.core.checkpoint import as_plain, load_autoencoder, load_checkpoint
from pipeline.core.distributed import Distributed
from pipeline.core.precision import Precision
from pipeline.core.speed import set_layout
from pipeline.core.tracking import Tracker
from pipeline.data.shards import shard_urls
from pipeline.ldm.latent_source import (
    CachedLatents,
    LatentNorm,
    OnTheFlyLatents,
    first_moments,
    held_out_latents,
)
from pipeline.ldm.latent_stats import moment_sums, statistics, stream_statistics
from pipeline.ldm.sampling import sample_latents
from pipeline.ldm.training import LDMTask, LDMTrainer, held_out_loss, held_out_sigmas, train_ldm
from pipeline.training.loop import StageOutputs

CPU = Distributed(rank=0, world_size=1, device=torch.device("cpu"))
FP32 = Precision("off", torch.device("cpu"))
IDENTITY = LatentNorm(shift=0.0, scale=1.0)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from more threads, and on CPUs shared with other jobs the threads'
    barriers can stall a training loop ten-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def point_moments(latents: torch.Tensor) -> torch.Tensor:
    """Posterior moments (B, 2C, h, w) of (B, C, h, w) latents with a negligible std (logvar -30)."""
    return torch.cat([latents, torch.full_like(latents, -30.0)], dim=1)


def trainer_for(shape, **overrides) -> LDMTrainer:
    return LDMTrainer(tiny_ldm(**overrides), shape, IDENTITY, "sha", CPU)


def test_held_out_sigmas_are_lognormal_quantiles():
    cfg = DiffusionConfig(p_mean=-1.2, p_std=1.2)
    expected = [math.exp(-1.2 - 1.2 * 0.6744897501960817), math.exp(-1.2 + 1.2 * 0.6744897501960817)]
    torch.testing.assert_close(held_out_sigmas(cfg, 2), torch.tensor(expected, dtype=torch.float64))


def test_held_out_loss_of_the_zero_network_is_one_and_fixed():
    """F = 0 gives an expected loss of 1 at every sigma on data of std sigma_data (EDM's weighting); the draws are
    fixed by the seed, and independent of the evaluation batch size."""
    cfg = DiffusionConfig()
    latents = cfg.sigma_data * torch.randn(256, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    zero = lambda x_in, c_noise: torch.zeros_like(x_in)  # noqa: E731
    loss = held_out_loss(zero, latents, cfg, seed=1, batch_size=64)
    assert loss == pytest.approx(1.0, abs=0.05)
    assert held_out_loss(zero, latents, cfg, seed=1, batch_size=1000) == pytest.approx(loss, rel=1e-6)
    assert held_out_loss(zero, latents, cfg, seed=2, batch_size=64) != loss


def test_training_loss_falls_on_a_tiny_latent_set():
    # smooth, image-like latents of std sigma_data, as normalised ones (for white noise the zero network is
    # already the best linear denoiser)
    latents = F.interpolate(torch.randn(4, 4, 2, 2, generator=torch.Generator().manual_seed(1)), size=(8, 8),
                            mode="bilinear")
    trainer = trainer_for((4, 8, 8), lr=1e-2)
    latents = latents / latents.std() * trainer.cfg.diffusion.sigma_data  # (4, 4, 8, 8)
    before = held_out_loss(trainer.unet, latents, trainer.cfg.diffusion, seed=0, batch_size=32)
    draws = torch.Generator().manual_seed(0)
    for step in range(40):
        trainer.train_step(point_moments(latents[torch.randint(4, (8,), generator=draws)]), step)
    assert trainer.ema.updates == 40
    assert held_out_loss(trainer.unet, latents, trainer.cfg.diffusion, seed=0, batch_size=32) < 0.8 * before


def test_unet_trained_on_one_latent_generates_it():
    trainer = trainer_for((4, 8, 8), lr=1e-2, diffusion=DiffusionConfig(sampling_steps=18))
    point = trainer.cfg.diffusion.sigma_data * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for step in range(150):
        trainer.train_step(point_moments(point.expand(8, -1, -1, -1)), step)
    samples = sample_latents(trainer.sampler(), range(8), seed=3, steps=18)  # the EMA UNet
    # unrelated samples of the same variance would be at twice the point's mean square
    squared_distance = (samples - point).square().flatten(1).mean(1)  # (8,)
    assert squared_distance.max().item() < 0.25 * point.square().mean().item()


def test_the_cache_holds_the_first_crops_of_the_on_the_fly_stream(ldm_assets):
    cfg = tiny_ldm(cache_size=3)
    autoencoder, _ = load_autoencoder(ldm_assets.autoencoder)
    urls = shard_urls(ldm_assets.shards, "train")
    cache = CachedLatents(autoencoder, urls, cfg, FP32, rank=0, start_step=0)
    stream = OnTheFlyLatents(autoencoder, urls, cfg, FP32, start_step=0)
    first = torch.cat([next(stream), next(stream)])  # (4, 2C, 4, 4)
    assert cache.moments.shape == (3, 2 * LATENT_CHANNELS, 4, 4)
    torch.testing.assert_close(cache.moments, first[:3])
    draws = [next(cache) for _ in range(4)]
    again = CachedLatents(autoencoder, urls, cfg, FP32, rank=0, start_step=2)
    assert all(torch.equal(a, b) for a, b in zip(draws[2:], [next(again), next(again)]))
    assert draws[0].shape == (2, 2 * LATENT_CHANNELS, 4, 4)


def test_held_out_latents_are_fixed_normalised_posterior_samples(ldm_assets):
    autoencoder, _ = load_autoencoder(ldm_assets.autoencoder)
    urls = shard_urls(ldm_assets.shards, "val")
    norm = LatentNorm(shift=0.5, scale=2.0)
    cfg = tiny_ldm(val_images=2, batch_size=1)
    latents = held_out_latents(autoencoder, urls, cfg, norm, FP32)
    assert latents.shape == (2, LATENT_CHANNELS, 4, 4)
    raw = held_out_latents(autoencoder, urls, cfg, IDENTITY, FP32)
    torch.testing.assert_close(norm.denormalise(latents), raw)
    assert not torch.equal(raw, held_out_latents(autoencoder, urls, tiny_ldm(val_images=2, batch_size=1, seed=1),
                                                 IDENTITY, FP32))


def test_a_latent_norm_maps_each_channel_and_back():
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    per_channel = LatentNorm(shift=[0.5, -1.0, 2.0], scale=[2.0, 0.5, 1.0])
    expected = (z - torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1)) * torch.tensor([2.0, 0.5, 1.0]).view(3, 1, 1)
    torch.testing.assert_close(per_channel.normalise(z), expected)
    torch.testing.assert_close(per_channel.denormalise(per_channel.normalise(z)), z)
    scalar = LatentNorm(shift=0.5, scale=2.0)
    assert scalar.shift == (0.5,) and scalar == LatentNorm([0.5], (2,))
    torch.testing.assert_close(scalar.normalise(z), (z - 0.5) * 2.0)
    assert LatentNorm(**per_channel.as_dict()) == per_channel
    with pytest.raises(ValueError, match="latent norm of 3 channels"):
        per_channel.normalise(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="positive scales"):
        LatentNorm(shift=[0.0, 0.0], scale=[1.0, 0.0])


def direct_statistics(moments: torch.Tensor) -> dict:
    """Moments of posterior samples straight from posterior moments (N, 2 nz, h, w): per channel, the mean of the
    means, and the variance of the means plus the mean variance; and the same over all values."""
    mean, logvar = moments.double().chunk(2, dim=1)  # (N, nz, h, w) each
    channel_mean = mean.mean(dim=(0, 2, 3))
    channel_var = mean.var(dim=(0, 2, 3), correction=0) + logvar.exp().mean(dim=(0, 2, 3))
    return {"crops": len(moments), "channel_mean": channel_mean.tolist(), "channel_std": channel_var.sqrt().tolist(),
            "mean": float(mean.mean()),
            "std": float((mean.var(correction=0) + logvar.exp().mean()).sqrt())}


def assert_statistics(stats, expected: dict) -> None:
    assert stats.crops == expected["crops"]
    for key in ("channel_mean", "channel_std", "mean", "std"):
        assert getattr(stats, key) == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def stream_moments(autoencoder, urls, cfg, count: int) -> torch.Tensor:
    """Posterior moments (count, 2 nz, h, w) of the first `count` crops the on-the-fly training stream encodes."""
    stream = OnTheFlyLatents(autoencoder, urls, cfg, FP32, start_step=0)
    return torch.cat([next(stream) for _ in range(math.ceil(count / cfg.batch_size))])[:count]


def test_latent_statistics_are_the_moments_of_the_training_crops(ldm_assets):
    cfg = tiny_ldm(stats_crops=5, batch_size=2)  # 3 batches, the last one cut to 1 crop
    autoencoder, _ = load_autoencoder(ldm_assets.autoencoder)
    urls = shard_urls(ldm_assets.shards, "train")
    stats = stream_statistics(autoencoder, urls, cfg, FP32, CPU)
    moments = stream_moments(autoencoder, urls, cfg, 5)  # (5, 2 nz, 4, 4)
    assert_statistics(stats, direct_statistics(moments))
    # the posterior variance counts: without it the stds are those of the means alone
    means_only = torch.cat([moments[:, :LATENT_CHANNELS], torch.full_like(moments[:, LATENT_CHANNELS:], -30.0)], 1)
    assert all(a > b for a, b in zip(stats.channel_std, statistics(moment_sums(means_only)).channel_std))


@pytest.mark.parametrize("kind", ["per_channel", "scalar"])
def test_normalised_training_latents_have_std_sigma_data(ldm_assets, kind):
    cfg = tiny_ldm(stats_crops=8, batch_size=4, latent_norm=kind)
    autoencoder, _ = load_autoencoder(ldm_assets.autoencoder)
    urls = shard_urls(ldm_assets.shards, "train")
    norm = stream_statistics(autoencoder, urls, cfg, FP32, CPU).norm(kind, cfg.diffusion.sigma_data)
    assert len(norm.scale) == (LATENT_CHANNELS if kind == "per_channel" else 1)
    # the exact moments of the normalised posterior samples: N((m - shift) scale, var scale^2); and many draws
    moments = stream_moments(autoencoder, urls, cfg, 8)
    mean, logvar = moments.chunk(2, dim=1)  # (8, nz, 4, 4) each
    log_scale_squared = 2 * torch.tensor(norm.scale).log().view(-1, 1, 1)  # (nz or 1, 1, 1)
    exact = direct_statistics(torch.cat([norm.normalise(mean), logvar + log_scale_squared], dim=1))
    sigma_data = cfg.diffusion.sigma_data
    if kind == "per_channel":
        assert exact["channel_mean"] == pytest.approx([0.0] * LATENT_CHANNELS, abs=1e-6)
        assert exact["channel_std"] == pytest.approx([sigma_data] * LATENT_CHANNELS, rel=1e-6)
    assert exact["mean"] == pytest.approx(0.0, abs=1e-6) and exact["std"] == pytest.approx(sigma_data, rel=1e-6)
    draws = torch.Generator().manual_seed(0)
    samples = torch.cat([norm.normalise(DiagonalGaussian(moments).sample(draws)) for _ in range(200)])
    assert float(samples.std()) == pytest.approx(sigma_data, rel=0.02)


def _rank_statistics(rank: int, init_file: str, assets, cfg: LDMConfig, out: Path) -> None:
    """One of 2 gloo processes: its stream statistics, written to out/<rank>.json."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        autoencoder, _ = load_autoencoder(assets.autoencoder)
        stats = stream_statistics(autoencoder, shard_urls(assets.shards, "train"), cfg, FP32,
                                  Distributed(rank, 2, torch.device("cpu")))
        (out / f"{rank}.json").write_text(json.dumps(stats.as_dict()))
    finally:
        torch.distributed.destroy_process_group()


def union_of_two_ranks(assets, cfg: LDMConfig, monkeypatch, speed: SpeedConfig | None = None) -> dict:
    """Direct statistics of the crops both ranks of a 2-process run encode, each rank's stream replayed here
    (with `speed`: the autoencoder in the layout train_ldm encodes with)."""
    autoencoder, _ = load_autoencoder(assets.autoencoder)
    if speed is not None:
        set_layout(autoencoder, speed, torch.device("cpu"), training=False)
    moments = []
    for rank in range(2):  # webdataset splits the shards by these variables when no process group is running
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        moments.append(torch.cat(list(first_moments(autoencoder, shard_urls(assets.shards, "train"), cfg, FP32,
                                                    cfg.stats_crops, "", False))))
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert not torch.equal(moments[0], moments[1])  # the ranks read different shards
    return direct_statistics(torch.cat(moments))


def test_statistics_are_all_reduced_over_gloo_processes(ldm_assets, tmp_path, monkeypatch):
    cfg = tiny_ldm(stats_crops=3)
    torch.multiprocessing.spawn(_rank_statistics, args=(str(tmp_path / "init"), ldm_assets, cfg, tmp_path),
                                nprocs=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1]  # every rank normalises with the same numbers
    union = union_of_two_ranks(ldm_assets, cfg, monkeypatch)
    assert ranks[0]["crops"] == union["crops"] == 6
    for key in ("channel_mean", "channel_std", "mean", "std"):
        assert ranks[0][key] == pytest.approx(union[key], rel=1e-9, abs=1e-12), key


def test_resolution_must_suit_the_autoencoder_and_the_unet():
    with pytest.raises(ConfigError, match=r"^ldm.resolution: 40 is not a multiple of 16"):
        parse(LDMConfig, {"resolution": 40}, "ldm")
    with pytest.raises(ConfigError, match=r"^ldm.latents: got 'disk'"):
        parse(LDMConfig, {"latents": "disk"}, "ldm")


def _run(assets, cfg: LDMConfig, folder) -> StageOutputs:
    outputs = StageOutputs(folder / "train_ldm.pt", folder / "train_ldm.json", folder / "plots")
    train_ldm(cfg, assets.autoencoder, assets.shards, outputs, Tracker(None), CPU)
    return outputs


class Interrupted(Exception):
    """Raised by the test to kill a training run mid-way."""


@pytest.mark.parametrize("latents", ["on_the_fly", "cache"])
def test_resume_equals_the_uninterrupted_run(ldm_assets, tmp_path, monkeypatch, latents):
    # checkpoints at step 3; log windows that end there, so a resumed run's windows are the same
    cfg = tiny_ldm(latents=latents, steps=6, checkpoint_every=3, log_every=3)
    full = load_checkpoint(_run(ldm_assets, cfg, tmp_path / "full").checkpoint)

    original_step = LDMTask.train_step

    def killed_after_the_checkpoint(self, moments, step):
        if step == 4:  # the partial checkpoint holds step 3; the 4th step is lost with the process
            raise Interrupted
        return original_step(self, moments, step)

    monkeypatch.setattr(LDMTask, "train_step", killed_after_the_checkpoint)
    with pytest.raises(Interrupted):
        _run(ldm_assets, cfg, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "partial" / "train_ldm.pt")["step"] == 3
    monkeypatch.setattr(LDMTask, "train_step", original_step)
    outputs = _run(ldm_assets, cfg, tmp_path / "resumed")
    resumed = load_checkpoint(outputs.checkpoint)

    assert not outputs.partial.exists()
    assert resumed["step"] == full["step"] == 6
    for key in ("unet", "ema"):
        for name, tensor in full[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name}"
    for group_full, group_resumed in zip(full["opt"]["state"].values(), resumed["opt"]["state"].values()):
        assert all(torch.equal(group_full[k], group_resumed[k]) for k in group_full)
    losses = [[row["train/loss"] for row in state["history"]["train"]] for state in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert [row["val/loss"] for row in full["history"]["val"]] == [row["val/loss"] for row in resumed["history"]["val"]]
    metrics = json.loads(outputs.metrics.read_text())
    assert metrics["steps"] == 6 and metrics["latent_shape"] == [LATENT_CHANNELS, 4, 4]
    assert resumed["latent_stats"] == full["latent_stats"] == metrics["latent_stats"]
    assert (outputs.plots / "losses.csv").is_file()
    samples = read_grid(outputs.plots / "samples.png", 32, rows=1, columns=3)  # grid_samples = 3, 32 px, labelled
    assert samples.row_label_inked(0) and samples.title_inked() and samples.column_label_inked(2)


def test_a_partial_checkpoint_of_another_configuration_is_ignored(ldm_assets, tmp_path):
    first = _run(ldm_assets, tiny_ldm(steps=4, checkpoint_every=2), tmp_path)
    first.partial.parent.mkdir(exist_ok=True)
    first.checkpoint.rename(first.partial)  # as if a run of another config stopped at step 4
    outputs = _run(ldm_assets, tiny_ldm(steps=2, lr=5e-4), tmp_path)
    assert load_checkpoint(outputs.checkpoint)["step"] == 2
    assert not outputs.partial.exists()


def test_two_process_gloo_run(ldm_assets, tmp_path, monkeypatch):
    cfg = tiny_ldm(steps=3, checkpoint_every=2, latent_norm="scalar", batch_size=4)  # global: 2 per process
    params = {"ldm": as_plain(cfg), "tracking": {"experiment": "test"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "stages.train_ldm", "--params", str(tmp_path / "params.yaml"), "--shards", str(ldm_assets.shards),
         "--autoencoder", str(ldm_assets.autoencoder), "--checkpoint", str(tmp_path / "ldm.pt"),
         "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["batch_size"] == 4 and summary["steps"] == 3
    assert not (tmp_path / "partial" / "ldm.pt").exists()
    # the statistics of both ranks' crops, and the scalar map they give
    union = union_of_two_ranks(ldm_assets, dataclasses.replace(cfg, batch_size=2), monkeypatch, SpeedConfig())
    stats = summary["latent_stats"]
    assert stats["crops"] == union["crops"] == 2 * cfg.stats_crops
    assert stats["channel_std"] == pytest.approx(union["channel_std"], rel=1e-9)
    assert summary["latent_norm"] == "scalar" and summary["latent_norm_target_std"] == 0.5
    assert summary["latent_shift"] == [stats["mean"]] and summary["latent_scale"] == [0.5 / stats["std"]]
    assert stats["std"] == pytest.approx(union["std"], rel=1e-9)
    state = load_checkpoint(tmp_path / "ldm.pt")
    assert state["latent_norm"] == {"shift": summary["latent_shift"], "scale": summary["latent_scale"]}
    assert state["config"]["ldm"]["latent_norm"] == "scalar" and state["latent_stats"] == stats
