"""The VAE training loop: it learns, resumes exactly, stops cleanly on NaN, and runs under DDP (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from grid_reading import read_grid, shown
from PIL import Image

from models.autoencoder import AutoencoderConfig
from models.discriminator import DiscriminatorConfig
from models.litevae_encoder import EncoderConfig, UNetSpec
from models.losses import LossConfig
from models.sd_vae import DecoderConfig
from pipeline.config.parsing import ConfigError
from pipeline.config.schema import DataConfig, ModelConfig, VAETrainConfig
from pipeline.core.checkpoint import as_plain, load_autoencoder, load_checkpoint
from pipeline.core.distributed import Distributed
from pipeline.core.tracking import Tracker
from pipeline.data.prepare import prepare
from pipeline.data.shards import shard_urls
from pipeline.measures.quality import to_uint8
from pipeline.training import vae_validation as validation
from pipeline.training.loop import NonFiniteLossError, StageOutputs
from pipeline.training.vae import VAETask, VAETrainer, train_vae

CPU = Distributed(rank=0, world_size=1, device=torch.device("cpu"))
TINY_MODEL = ModelConfig(
    vae=AutoencoderConfig(
        latent_channels=4,
        encoder=EncoderConfig(preset="S", extractor=UNetSpec(8, (1,)), aggregator=UNetSpec(8, (1,)), num_res_blocks=1),
        decoder=DecoderConfig(ch=8, ch_mult=(1, 1, 1, 2), num_res_blocks=1, mid_attention=False),
    ),
    discriminator=DiscriminatorConfig(ch=4, ch_mult=(1, 2)),
)
LOSS = LossConfig(perceptual="off", disc_start=2, adv_loss="non_saturating")


def _train_cfg(**overrides):
    base = dict(resolution=32, steps=4, batch_size=2, lr=1e-3, num_workers=0, log_every=1, val_every=2,
                checkpoint_every=2, val_images=2, ema_decay=0.9, warmup_steps=2, mode_steps=1)
    return VAETrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    rng = np.random.default_rng(0)
    for index in range(10):
        gradient = np.linspace(0, 255, 48)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
        noise = rng.normal(0, 20, (40, 48, 3))
        Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8)).save(root / f"{index}.png")
    cfg = DataConfig(source="folder", path=str(root), storage_size=40, min_size=32, val_fraction=0.2)
    prepare(cfg, root / "shards", root / "manifest.json", root / "sheet.png")
    return root / "shards"


def _outputs(root: Path) -> StageOutputs:
    return StageOutputs(root / "ckpt.pt", root / "metrics.json", root / "plots")


class Killed(Exception):
    """Stands in for SIGKILL: the process stops between two steps."""


def _run_until_killed(monkeypatch, at_step, *args):
    original = VAETask.train_step

    def step_or_die(self, images, step):
        if step == at_step:
            raise Killed
        return original(self, images, step)

    with monkeypatch.context() as patch:
        patch.setattr(VAETask, "train_step", step_or_die)
        with pytest.raises(Killed):
            train_vae(*args)


def test_loss_falls_on_a_fixed_batch():
    trainer = VAETrainer(TINY_MODEL, LossConfig(perceptual="off", disc_start=10**6),
                         _train_cfg(lr=3e-3, warmup_steps=0, mode_steps=10**6), CPU)
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    losses = [trainer.train_step(images, step)["train/l1"] for step in range(40)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_run_writes_checkpoint_metrics_plots_and_baselines(tmp_path, shards):
    summary = train_vae("t", TINY_MODEL, LOSS, _train_cfg(), shards, _outputs(tmp_path), Tracker(None), CPU)
    assert summary["steps"] == 4 and np.isfinite(summary["val_psnr"])
    assert summary["baseline_bicubic_x8_psnr"] > summary["baseline_flat_psnr"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    for name in ("losses.csv", "val.csv", "reconstructions.png"):
        assert (tmp_path / "plots" / name).is_file()
    # the grid: the 2 fixed val crops as columns; rows input, reconstruction, |error| x4, each labelled
    grid = read_grid(tmp_path / "plots" / "reconstructions.png", 32, rows=3, columns=2)
    crops = to_uint8(validation.validation_crops(shard_urls(shards, "val"), 32, 2)).permute(0, 2, 3, 1).numpy()
    for column, crop in enumerate(crops):
        np.testing.assert_array_equal(grid.tile_at(0, column), shown(crop))
        error = np.abs(grid.tile_at(0, column).astype(int) - grid.tile_at(1, column)) * validation.ERROR_GAIN
        np.testing.assert_array_equal(grid.tile_at(2, column), np.clip(error, 0, 255))
        assert grid.column_label_inked(column)
    assert all(grid.row_label_inked(row) for row in range(3)) and grid.title_inked()
    assert "disc_loss" in (tmp_path / "plots" / "losses.csv").read_text().splitlines()[0]
    assert not (tmp_path / "partial" / "ckpt.pt").exists()
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"autoencoder", "discriminator", "ema", "opt_ae", "opt_disc", "sched_ae", "step", "config"} <= set(state)
    model, cfg = load_autoencoder(tmp_path / "ckpt.pt")
    assert cfg == TINY_MODEL.vae and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("resolution, columns", [(16, 2), (100, 2), (128, 1)])
def test_reconstruction_grid_keeps_the_first_crops_whose_shown_tiles_fit_its_width(tmp_path, monkeypatch, resolution,
                                                                                   columns):
    monkeypatch.setattr(validation, "GRID_WIDTH", 200)  # 16 px crops are shown at 96 px
    crops = torch.rand(8, 3, resolution, resolution) * 2 - 1
    validation.write_grid(tmp_path / "grid.png", crops, -crops, "title")
    grid = read_grid(tmp_path / "grid.png", resolution, rows=3, columns=columns)
    for column, crop in enumerate(to_uint8(crops[:columns]).permute(0, 2, 3, 1).numpy()):
        np.testing.assert_array_equal(grid.tile_at(0, column), shown(crop))


def test_resume_equals_uninterrupted_run(tmp_path, shards, monkeypatch):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    cfg = _train_cfg(steps=4, log_every=3)  # the kill falls inside the first log window
    train_vae("t", TINY_MODEL, LOSS, cfg, shards, _outputs(full_dir), Tracker(None), CPU)
    outputs = _outputs(split_dir)
    _run_until_killed(monkeypatch, 3, "t", TINY_MODEL, LOSS, cfg, shards, outputs, Tracker(None), CPU)
    assert load_checkpoint(split_dir / "partial" / "ckpt.pt")["step"] == 2
    assert not (split_dir / "ckpt.pt").exists()
    train_vae("t", TINY_MODEL, LOSS, cfg, shards, outputs, Tracker(None), CPU)
    full, resumed = load_checkpoint(full_dir / "ckpt.pt"), load_checkpoint(split_dir / "ckpt.pt")
    for key in ("autoencoder", "discriminator", "ema"):
        for name, tensor in full[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"
    assert full["history"]["val"] == resumed["history"]["val"]
    timings = ("train/sec_per_step", "train/images_per_sec")
    logged = [[{k: v for k, v in row.items() if k not in timings} for row in state["history"]["train"]]
              for state in (full, resumed)]
    assert logged[0] == logged[1] and [row["step"] for row in logged[0]] == [3, 4]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, shards, monkeypatch):
    outputs = _outputs(tmp_path)
    _run_until_killed(monkeypatch, 2, "t", TINY_MODEL, LOSS, _train_cfg(steps=4), shards, outputs, Tracker(None), CPU)
    good = (tmp_path / "partial" / "ckpt.pt").read_bytes()
    original = VAETask.train_step

    def poisoned(self, images, step):
        return original(self, images * float("nan"), step)

    monkeypatch.setattr(VAETask, "train_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite autoencoder loss at step 2.*last good checkpoint"):
        train_vae("t", TINY_MODEL, LOSS, _train_cfg(steps=4), shards, outputs, Tracker(None), CPU)
    assert (tmp_path / "partial" / "ckpt.pt").read_bytes() == good
    assert not (tmp_path / "ckpt.pt").exists()


def test_changed_config_does_not_resume(tmp_path, shards, monkeypatch):
    outputs = _outputs(tmp_path)
    _run_until_killed(monkeypatch, 2, "t", TINY_MODEL, LOSS, _train_cfg(steps=4), shards, outputs, Tracker(None), CPU)
    summary = train_vae("t", TINY_MODEL, LOSS, _train_cfg(steps=4, lr=2e-3), shards, outputs, Tracker(None), CPU)
    assert load_checkpoint(tmp_path / "ckpt.pt")["history"]["train"][0]["step"] == 1
    assert summary["steps"] == 4


def test_two_process_gloo_run(tmp_path, shards):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["model"] = as_plain(TINY_MODEL)
    params["loss"] = as_plain(LOSS)
    params["train_128"] = as_plain(_train_cfg(steps=3, checkpoint_every=2, batch_size=4))  # global: 2 per process
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
         "-m", "stages.pretrain_vae", "--params", str(tmp_path / "params.yaml"), "--shards", str(shards),
         "--checkpoint", str(tmp_path / "ckpt.pt"), "--metrics", str(tmp_path / "m.json"),
         "--plots", str(tmp_path / "plots")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["batch_size"] == 4 and summary["steps"] == 3


def test_the_global_batch_must_divide_over_the_processes():
    three = Distributed(rank=0, world_size=3, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^train_256.batch_size: 4 is the global batch .* over 3 processes"):
        VAETrainer(TINY_MODEL, LOSS, _train_cfg(batch_size=4), three, section="train_256")
