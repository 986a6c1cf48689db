"""eval_generation: samples are a function of (seed, index), FID/KID run on random Inception weights against both
reference sets or are null with the reason, the SWD with its real floor and noise ceiling is reported either way, a
sampler refuses another autoencoder, and the two stages run end to end with their MLflow records."""

import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch
import yaml
from fixtures_ldm import TINY_UNET, tiny_ldm
from fixtures_weights import INCEPTION_FILE
from grid_reading import read_grid, shown

from pipeline.core.checkpoint import as_plain, file_sha256, load_autoencoder, save_checkpoint
from pipeline.config.parsing import ConfigError
from pipeline.core.distributed import Distributed
from pipeline.data.shards import TrainStream, shard_urls
from pipeline.evaluation.generation import eval_generation, reference_crops
from pipeline.measures.quality import to_uint8
from pipeline.ldm.sampling import LatentDiffusion, generate, initial_noise, load_ldm, load_sampler, sample_latents
from pipeline.ldm.latent_source import LatentNorm
from pipeline.ldm.training import LDMTrainer
from pipeline.config.schema import GenerationConfig
from pipeline.core.tracking import tracking_uri

@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on CPUs shared with other jobs, two threads' barriers can stall tiny models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sampler(ldm_assets):
    """A randomly initialised LDM (non-zero output) over the tiny autoencoder's 4x4x4 latents with a per-channel
    normalisation, and the autoencoder."""
    norm = LatentNorm(shift=[0.05, -0.1, 0.0, 0.3], scale=[1.7, 0.4, 1.0, 2.5])
    trainer = LDMTrainer(tiny_ldm(), (4, 4, 4), norm, file_sha256(ldm_assets.autoencoder),
                         Distributed(0, 1, torch.device("cpu")))
    torch.manual_seed(0)
    for param in trainer.ema.shadow.parameters():
        torch.nn.init.normal_(param, std=0.1)
    autoencoder, _ = load_autoencoder(ldm_assets.autoencoder)
    return trainer, autoencoder


def test_samples_depend_on_the_seed_and_their_index_only(sampler):
    trainer, autoencoder = sampler
    model = trainer.sampler()
    assert torch.equal(initial_noise(range(2, 4), (4, 4, 4), seed=0), initial_noise(range(4), (4, 4, 4), seed=0)[2:])
    first = sample_latents(model, range(4), seed=0, steps=3)
    assert torch.equal(first, sample_latents(model, range(4), seed=0, steps=3))
    assert not torch.allclose(first, sample_latents(model, range(4), seed=1, steps=3))
    halves = [sample_latents(model, range(2), seed=0, steps=3), sample_latents(model, range(2, 4), seed=0, steps=3)]
    torch.testing.assert_close(torch.cat(halves), first, rtol=1e-4, atol=1e-4)  # batched kernels round differently
    images = generate(model, autoencoder, range(2), seed=0, steps=3)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8


def test_fid_and_kid_against_both_reference_sets(sampler, ldm_assets, tmp_path, pretrained_weights):
    trainer, autoencoder = sampler
    # batches of 4 > the 3 val images, and a last batch of 1
    cfg = GenerationConfig(num_samples=5, sampling_steps=2, batch_size=4, kid_subset_size=100, kid_subsets=5,
                           grid_samples=3)
    metrics = eval_generation(cfg, trainer.sampler(), autoencoder, ldm_assets.shards, tmp_path / "grid.png")
    assert metrics["unavailable"] == {}
    for split in ("train", "val"):
        scores = metrics["reference"][split]
        assert scores["n"] == 5 and scores["kid_subset_size"] == 5  # clamped to the sample count
        assert math.isfinite(scores["fid"]) and scores["fid"] > 0 and math.isfinite(scores["kid"])
    assert metrics["fid"] == metrics["reference"]["train"]["fid"]
    assert metrics["kid"] == metrics["reference"]["train"]["kid"]
    assert math.isfinite(metrics["real_floor"]["fid"])
    swd = metrics["swd"]
    assert swd["n"] == 5 and swd["reference"] == "train" and "Karras" in swd["citation"] and swd["protocol"]
    for name in ("samples", "real_floor", "noise_ceiling"):
        assert len(swd[name]["per_level"]) == 2 and math.isfinite(swd[name]["mean"]), name  # 32 and 16 pixels
    assert metrics["network_evaluations_per_sample"] == 3
    grid = read_grid(tmp_path / "grid.png", 32, rows=1, columns=3)  # 3 samples in one labelled row
    assert grid.row_label_inked(0) and grid.title_inked() and all(grid.column_label_inked(c) for c in range(3))


def test_reference_crops_are_the_training_stream_crops_quantised_one_by_one(ldm_assets):
    cfg = GenerationConfig(num_samples=2, seed=3)
    crops = reference_crops(ldm_assets.shards, "val", 32, 7, cfg)  # 7 crops from 3 val images: several epochs
    stream = TrainStream(shard_urls(ldm_assets.shards, "val"), 32, 1, seed=3)
    expected = torch.cat([to_uint8(crop) for crop in itertools.islice(stream, 7)])  # (7, 3, 32, 32)
    assert crops.dtype == torch.uint8 and torch.equal(crops, expected)


def test_missing_inception_weights_give_null_scores_with_the_reason(sampler, ldm_assets, tmp_path, missing_weights):
    trainer, autoencoder = sampler
    cfg = GenerationConfig(num_samples=2, sampling_steps=1, reference_sets=("val",), grid_samples=2)
    metrics = eval_generation(cfg, trainer.sampler(), autoencoder, ldm_assets.shards, tmp_path / "grid.png")
    assert metrics["fid"] is None and metrics["kid"] is None and metrics["reference"] == {"val": None}
    assert set(metrics["unavailable"]) == {"fid", "kid"}
    assert str(missing_weights / INCEPTION_FILE) in metrics["unavailable"]["fid"]
    # the grid's tiles are samples 0 and 1 of seed 0, as its labels say
    grid = read_grid(tmp_path / "grid.png", 32, rows=1, columns=2)
    for index, image in enumerate(generate(trainer.sampler(), autoencoder, range(2), seed=0, steps=1)):
        assert np.array_equal(grid.tile_at(0, index), shown(image.permute(1, 2, 0).numpy()))
    # the SWD needs no pretrained network: reported without Inception, with no floor from a single reference set
    swd = metrics["swd"]
    assert swd["real_floor"] is None and swd["reference"] == "val"
    assert math.isfinite(swd["samples"]["mean"]) and math.isfinite(swd["noise_ceiling"]["mean"])


def test_a_checkpoint_samples_with_its_own_autoencoder_only(sampler, ldm_assets, tmp_path):
    trainer, _ = sampler
    # what the training loop writes: the trainer's state, its configuration and the step
    save_checkpoint(tmp_path / "ldm.pt", {**trainer.state_dict(), "config": trainer.config_dict(), "step": 0})
    model, autoencoder = load_sampler(tmp_path / "ldm.pt", ldm_assets.autoencoder)
    assert isinstance(model, LatentDiffusion) and model.latent_shape == (4, 4, 4)
    assert model.norm == trainer.norm and model.norm.scale == (1.7, 0.4, 1.0, 2.5)  # per channel, from the lists
    assert model.unet.cfg == TINY_UNET and not model.unet.training
    for name, tensor in trainer.ema.shadow.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], tensor), name
    other = tmp_path / "other_vae.pt"
    save_checkpoint(other, {"config": {"model": {"vae": as_plain(load_autoencoder(ldm_assets.autoencoder)[1])}},
                            "ema": autoencoder.state_dict(), "autoencoder": autoencoder.state_dict(), "step": 1})
    with pytest.raises(ConfigError, match="not the autoencoder checkpoint"):
        load_sampler(tmp_path / "ldm.pt", other)
    assert load_ldm(tmp_path / "ldm.pt")[1] == file_sha256(ldm_assets.autoencoder)


def test_stages_run_end_to_end_with_their_mlflow_records(ldm_assets, tmp_path, monkeypatch, missing_weights):
    from mlflow.tracking import MlflowClient

    from stages import eval_generation as eval_stage
    from stages import train_ldm as train_stage

    ldm = as_plain(tiny_ldm(steps=4, val_every=2, checkpoint_every=2))
    params = {"ldm": ldm, "generation": {"num_samples": 2, "sampling_steps": 1, "grid_samples": 2},
              "tracking": {"experiment": "test"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "train_ldm", "--params", str(tmp_path / "params.yaml"), "--shards", str(ldm_assets.shards),
        "--autoencoder", str(ldm_assets.autoencoder), "--checkpoint", str(out / "train_ldm.pt"),
        "--metrics", str(out / "train_ldm.json"), "--plots", str(out / "plots")])
    train_stage.main()
    monkeypatch.setattr(sys, "argv", [
        "eval_generation", "--params", str(tmp_path / "params.yaml"), "--checkpoint", str(out / "train_ldm.pt"),
        "--autoencoder", str(ldm_assets.autoencoder), "--shards", str(ldm_assets.shards),
        "--metrics", str(out / "eval_generation.json"), "--grid", str(out / "samples.png")])
    eval_stage.main()

    assert json.loads((out / "eval_generation.json").read_text())["fid"] is None
    client = MlflowClient(tracking_uri())
    runs = {run.data.tags["stage"]: run for run in
            client.search_runs([client.get_experiment_by_name("test").experiment_id])}
    train_run, eval_run = runs["train_ldm"], runs["eval_generation"]
    assert [p.path for p in client.list_artifacts(train_run.info.run_id, "samples")] == [
        "samples/step_0000002", "samples/step_0000004"]
    assert {m.step for m in client.get_metric_history(train_run.info.run_id, "val/loss")} == {0, 2, 4}
    summary = json.loads((out / "train_ldm.json").read_text())
    assert train_run.data.tags["latent_norm"] == summary["latent_norm"] == "per_channel"
    assert train_run.data.tags["latent_scale"] == str(summary["latent_scale"])
    assert INCEPTION_FILE in eval_run.data.tags["unavailable.fid"]
    assert {"swd_samples", "swd_real_floor", "swd_noise_ceiling"} <= set(eval_run.data.metrics)
    assert {a.path for a in client.list_artifacts(eval_run.info.run_id)} == {"eval_generation.json", "samples.png"}
