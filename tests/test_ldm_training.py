"""train_ldm: the trainer learns, a single latent is memorised and regenerated, both latent sources feed the
same crops, the latent statistics are checked, N steps + resume + N steps equal 2N steps exactly, and the stage
runs under DDP (gloo, 2 processes)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from fixtures_ldm import LATENT_CHANNELS, tiny_ldm

from models.diffusion import DiffusionConfig
from pipeline.core.checkpoint import as_plain, load_autoencoder, load_checkpoint
from pipeline.config.parsing import ConfigError, parse
from pipeline.core.distributed import Distributed
from pipeline.ldm.sampling import sample_latents
from pipeline.ldm.latent_source import (
    CachedLatents,
    LatentNorm,
    OnTheFlyLatents,
    held_out_latents,
    read_latent_norm,
)
from pipeline.ldm.training import LDMTask, LDMTrainer, held_out_loss, held_out_sigmas, train_ldm
from pipeline.data.shards import shard_urls
from pipeline.config.schema import LDMConfig
from pipeline.core.precision import Precision
from pipeline.core.tracking import Tracker
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
    """F = 0 gives an expected loss of 1 at every sigma on unit-variance data (EDM's weighting); the draws are
    fixed by the seed, and independent of the evaluation batch size."""
    latents = torch.randn(256, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    zero = lambda x_in, c_noise: torch.zeros_like(x_in)  # noqa: E731
    cfg = DiffusionConfig()
    loss = held_out_loss(zero, latents, cfg, seed=1, batch_size=64)
    assert loss == pytest.approx(1.0, abs=0.05)
    assert held_out_loss(zero, latents, cfg, seed=1, batch_size=1000) == pytest.approx(loss, rel=1e-6)
    assert held_out_loss(zero, latents, cfg, seed=2, batch_size=64) != loss


def test_training_loss_falls_on_a_tiny_latent_set():
    # smooth, image-like latents of unit variance (for white noise the zero network is already the best linear
    # denoiser)
    latents = F.interpolate(torch.randn(4, 4, 2, 2, generator=torch.Generator().manual_seed(1)), size=(8, 8),
                            mode="bilinear")
    latents = latents / latents.std()  # (4, 4, 8, 8)
    trainer = trainer_for((4, 8, 8), lr=1e-2)
    before = held_out_loss(trainer.unet, latents, trainer.cfg.diffusion, seed=0, batch_size=32)
    draws = torch.Generator().manual_seed(0)
    for step in range(40):
        trainer.train_step(point_moments(latents[torch.randint(4, (8,), generator=draws)]), step)
    assert trainer.ema.updates == 40
    assert held_out_loss(trainer.unet, latents, trainer.cfg.diffusion, seed=0, batch_size=32) < 0.8 * before


def test_unet_trained_on_one_latent_generates_it():
    point = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    trainer = trainer_for((4, 8, 8), lr=1e-2, diffusion=DiffusionConfig(sampling_steps=18))
    for step in range(150):
        trainer.train_step(point_moments(point.expand(8, -1, -1, -1)), step)
    samples = sample_latents(trainer.sampler(), range(8), seed=3, steps=18)  # the EMA UNet
    # unrelated unit-variance samples would be at mean squared distance ~2
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
    latents = held_out_latents(autoencoder, urls, cfg, norm)
    assert latents.shape == (2, LATENT_CHANNELS, 4, 4)
    raw = held_out_latents(autoencoder, urls, cfg, IDENTITY)
    torch.testing.assert_close(norm.denormalise(latents), raw)
    assert not torch.equal(raw, held_out_latents(autoencoder, urls, tiny_ldm(val_images=2, batch_size=1, seed=1),
                                                 IDENTITY))


def test_latent_statistics_are_checked(tmp_path):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"shift": 0.5, "scale": 2.0, "latent_shape": [12, 32, 32]}))
    norm = read_latent_norm(stats, 12)
    z = torch.randn(2, 12, 4, 4)
    torch.testing.assert_close(norm.normalise(z), (z - 0.5) * 2.0)
    torch.testing.assert_close(norm.denormalise(norm.normalise(z)), z)
    with pytest.raises(ConfigError, match="12-channel latents, but the autoencoder has 4"):
        read_latent_norm(stats, 4)
    stats.write_text(json.dumps({"shift": 0.5, "scale": 0.0}))
    with pytest.raises(ConfigError, match="positive 'scale'"):
        read_latent_norm(stats, 12)
    with pytest.raises(FileNotFoundError, match="run the analyze_latents stage"):
        read_latent_norm(tmp_path / "absent.json", 12)


def test_resolution_must_suit_the_autoencoder_and_the_unet():
    with pytest.raises(ConfigError, match=r"^ldm.resolution: 40 is not a multiple of 16"):
        parse(LDMConfig, {"resolution": 40}, "ldm")
    with pytest.raises(ConfigError, match=r"^ldm.latents: got 'disk'"):
        parse(LDMConfig, {"latents": "disk"}, "ldm")


def _run(assets, cfg: LDMConfig, folder) -> StageOutputs:
    outputs = StageOutputs(folder / "train_ldm.pt", folder / "train_ldm.json", folder / "plots")
    train_ldm(cfg, assets.autoencoder, assets.stats, assets.shards, outputs, Tracker(None), CPU)
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
    assert (outputs.plots / "samples.png").is_file() and (outputs.plots / "losses.csv").is_file()


def test_a_partial_checkpoint_of_another_configuration_is_ignored(ldm_assets, tmp_path):
    first = _run(ldm_assets, tiny_ldm(steps=4, checkpoint_every=2), tmp_path)
    first.partial.parent.mkdir(exist_ok=True)
    first.checkpoint.rename(first.partial)  # as if a run of another config stopped at step 4
    outputs = _run(ldm_assets, tiny_ldm(steps=2, lr=5e-4), tmp_path)
    assert load_checkpoint(outputs.checkpoint)["step"] == 2
    assert not outputs.partial.exists()


def test_two_process_gloo_run(ldm_assets, tmp_path):
    params = {"ldm": as_plain(tiny_ldm(steps=3, checkpoint_every=2)), "tracking": {"experiment": "test"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "stages.train_ldm", "--params", str(tmp_path / "params.yaml"), "--shards", str(ldm_assets.shards),
         "--autoencoder", str(ldm_assets.autoencoder), "--latent-stats", str(ldm_assets.stats),
         "--checkpoint", str(tmp_path / "ldm.pt"), "--metrics", str(tmp_path / "m.json"),
         "--plots", str(tmp_path / "plots")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["batch_size"] == 4 and summary["steps"] == 3
    assert not (tmp_path / "partial" / "ldm.pt").exists()
