"""The eval_recon and analyze_latents stages end to end on a tiny autoencoder and two tiny val images."""

import io
import json
import sys

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from grid_reading import read_grid, shown
from PIL import Image

from models.autoencoder import Autoencoder, AutoencoderConfig
from models.litevae_encoder import EncoderConfig, UNetSpec
from models.sd_vae import DecoderConfig
from pipeline.config.schema import EvalConfig, LatentsConfig
from pipeline.core.checkpoint import as_plain, load_autoencoder, save_checkpoint
from pipeline.config.parsing import ConfigError, parse
from pipeline.evaluation.reconstruction import eval_recon
from pipeline.evaluation.latent_analysis import analyze_latents, encode_views, latent_statistics
from pipeline.data.shards import shard_urls
from pipeline.measures.quality import psnr
from pipeline.data.views import iter_images, resize_square, square_views
from pipeline.training.vae_validation import baselines, score_reconstructions, validation_crops

TINY_VAE = AutoencoderConfig(
    latent_channels=4,
    encoder=EncoderConfig(preset="S", extractor=UNetSpec(8, (1,)), aggregator=UNetSpec(8, (1,)), num_res_blocks=1),
    decoder=DecoderConfig(ch=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1, mid_attention=False),
)
IMAGE_SIZES = [(40, 56), (64, 48)]  # (height, width): shorter sides 40 and 48


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Autoencoder(TINY_VAE)
    path = tmp_path_factory.mktemp("ckpt") / "vae.pt"
    save_checkpoint(path, {"config": {"model": {"vae": as_plain(TINY_VAE)}}, "ema": model.state_dict(),
                           "autoencoder": model.state_dict(), "step": 0})
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(folder / "val-000000.tar")) as sink:
        for index, (height, width) in enumerate(IMAGE_SIZES):
            coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            sink.write({"__key__": f"{index:06d}", "png": buffer.getvalue()})
    return folder


def test_views_are_deterministic_squares_with_the_central_one_first():
    pixels = np.arange(60 * 90 * 3, dtype=np.int64).reshape(60, 90, 3).astype(np.uint8)
    views = square_views(pixels, 5, seed=1, index=3)
    assert np.array_equal(views[0], pixels[:, 15:75])
    assert all(v.shape[0] == v.shape[1] and 30 <= v.shape[0] <= 60 for v in views)
    again = square_views(pixels, 5, seed=1, index=3)
    assert all(np.array_equal(a, b) for a, b in zip(views, again))
    assert not np.array_equal(square_views(pixels, 2, seed=1, index=4)[1], views[1])


def test_eval_config_rules():
    with pytest.raises(ConfigError, match="eval.resolution: 64 is not in resolutions"):
        parse(EvalConfig, {"resolution": 64, "resolutions": [32, 128]}, "eval")
    with pytest.raises(ConfigError, match="not multiples of 8"):
        parse(EvalConfig, {"resolution": 36, "resolutions": [36]}, "eval")
    with pytest.raises(ConfigError, match=r"eval.resolutions: got \(16, 32\); must be >= 32"):
        parse(EvalConfig, {"resolution": 32, "resolutions": [16, 32]}, "eval")
    with pytest.raises(ConfigError, match="eval.lpips_net"):
        parse(EvalConfig, {"lpips_net": "resnet"}, "eval")


def test_eval_recon_with_weights(checkpoint, shards, tmp_path, pretrained_weights):
    cfg = EvalConfig(resolution=48, resolutions=(32, 48), batch_size=1, grid_images=2, kid_subsets=5)
    metrics, files = eval_recon(cfg, checkpoint, shards, tmp_path / "plots")

    assert metrics["unavailable"] == {}
    assert metrics["images"] == 2 and metrics["resized_views"]["n"] == 2
    assert set(metrics["protocols"]) == {"resized_views", "native_crops"}
    for resolution in ("32", "48"):
        scores = metrics["sweep"][resolution]
        assert scores["n"] == 2 and scores["kid_subset_size"] == 2
        assert scores["rfid"] > 0 and scores["lpips"] > 0 and 0 < scores["psnr"] < 60 and -1 <= scores["ssim"] <= 1
    assert metrics["sweep"]["32"]["upsampled_views"] == 0
    assert metrics["sweep"]["48"]["upsampled_views"] == 1  # the first image's central square is 40 px
    views = metrics["resized_views"]
    assert views["psnr"] == metrics["sweep"]["48"]["psnr"] and views["views_per_image"] == 1
    native = metrics["native_crops"]
    assert native["n"] == 1  # only the 64 x 48 image holds a 48 px tile
    assert native["lpips"] > 0 and native["psnr"] != views["psnr"]  # another protocol, other pixels

    # The grid shows every view (grid_images = n) as a labelled column, in rows input, reconstruction and error;
    # its input/reconstruction tiles (48 px, shown enlarged x2) reproduce the headline PSNR.
    grid = read_grid(tmp_path / "plots" / "reconstructions.png", 48, rows=3, columns=2)
    assert grid.tile == 96 and grid.title_inked()
    assert all(grid.row_label_inked(r) for r in range(3)) and all(grid.column_label_inked(c) for c in range(2))
    inputs, outputs = (torch.from_numpy(np.stack([grid.tile_at(row, c)[::2, ::2] for c in range(2)]))
                       .permute(0, 3, 1, 2) for row in (0, 1))  # (2, 3, 48, 48) each
    assert float(psnr(inputs, outputs).mean()) == pytest.approx(views["psnr"], rel=1e-9)
    central = square_views(next(iter_images(shard_urls(shards, "val"))), 1, 0, 0)[0]
    assert np.array_equal(grid.tile_at(0, 0), shown(resize_square(central, 48)))

    csv = (tmp_path / "plots" / "sweep_psnr.csv").read_text().splitlines()
    assert csv[0] == "resolution,log2_resolution,psnr,n"
    assert csv[1].startswith("32,5,") and csv[2].startswith("48,5.58")
    assert {p.name for p in files} == {"sweep_rfid.csv", "sweep_lpips.csv", "sweep_psnr.csv", "sweep_ssim.csv",
                                       "resolution_sweep.png", "reconstructions.png"}
    assert all(p.is_file() for p in files)


def test_eval_recon_without_weights_reports_null_with_reasons(checkpoint, shards, tmp_path, missing_weights):
    cfg = EvalConfig(resolution=32, resolutions=(32,), grid_images=1)
    metrics, _ = eval_recon(cfg, checkpoint, shards, tmp_path / "plots")
    views, native = metrics["resized_views"], metrics["native_crops"]
    assert views["rfid"] is None and views["kid"] is None and views["lpips"] is None and native["lpips"] is None
    assert "weights-inception-2015-12-05-6726825d.pth" in metrics["unavailable"]["rfid"]
    assert "alexnet-owt-7be5be79.pth" in metrics["unavailable"]["lpips"]
    assert views["psnr"] > 0 and views["ssim"] is not None and native["psnr"] > 0 and native["ssim"] is not None
    assert (tmp_path / "plots" / "sweep_rfid.csv").read_text() == "resolution,log2_resolution,rfid,n\n"


def test_eval_recon_native_crops_are_training_validation(checkpoint, shards, tmp_path, missing_weights):
    """The native_crops protocol reports what finetune_vae's final validation of the same EMA model reports."""
    cfg = EvalConfig(resolution=32, resolutions=(32,), native_crops=2, batch_size=1, grid_images=1)
    native = eval_recon(cfg, checkpoint, shards, tmp_path / "plots").metrics["native_crops"]

    crops = validation_crops(shard_urls(shards, "val"), 32, 2)  # VAETask's val crops for val_images = 2
    model, _ = load_autoencoder(checkpoint)  # the EMA weights, which training validates
    scores, _ = score_reconstructions(model, crops, 2, torch.device("cpu"))  # another batch size than the stage's
    assert native["n"] == 2
    assert native["psnr"] == scores["psnr"] and native["ssim"] == scores["ssim"]
    assert {k: native[k] for k in baselines(crops)} == baselines(crops)


def test_eval_recon_without_native_crops_reports_null_with_the_reason(checkpoint, shards, tmp_path,
                                                                     missing_weights):
    cfg = EvalConfig(resolution=64, resolutions=(64,), grid_images=1)  # no val image is 64 px on both sides
    metrics, _ = eval_recon(cfg, checkpoint, shards, tmp_path / "plots")
    assert metrics["native_crops"] is None and "at least 64px" in metrics["unavailable"]["native_crops"]
    assert metrics["resized_views"]["psnr"] > 0


def test_latent_statistics_are_the_moments_of_posterior_samples():
    generator = torch.Generator().manual_seed(0)
    modes = torch.randn(3, 2, 4, 4, generator=generator) + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    variance = torch.tensor([0.5, 2.0])
    stats = latent_statistics(modes, variance)
    # Monte Carlo: many posterior samples per mode.
    samples = modes + variance.sqrt().view(1, 2, 1, 1) * torch.randn(20000, *modes.shape, generator=generator)
    assert stats["shift"] == pytest.approx(float(samples.mean()), abs=0.01)
    assert stats["scale"] == pytest.approx(1 / float(samples.std()), rel=0.01)
    assert stats["channel_mean"] == pytest.approx(modes.mean(dim=(0, 2, 3)).tolist())
    assert stats["channel_std"] == pytest.approx(samples.transpose(0, 2).flatten(1).std(dim=1).tolist(), rel=0.01)
    exact = latent_statistics(modes, torch.zeros(2))  # no posterior noise: the moments of the modes themselves
    assert exact["scale"] == pytest.approx(1 / float(modes.double().std(correction=0)))


def test_analyze_latents_with_a_baseline(checkpoint, shards, tmp_path):
    cfg = LatentsConfig(resolution=32, views_per_image=3, batch_size=4, bandwidths=(5.0, 50.0), draws=3,
                        baseline_checkpoint=str(checkpoint), picture_images=2)
    picture = tmp_path / "latents.png"
    metrics = analyze_latents(cfg, checkpoint, shards, picture)

    model = metrics["model"]
    assert model["samples"] == 6 and model["latent_shape"] == [4, 4, 4] and model["dimension"] == 64
    assert set(model["mmd"]) == {"5", "50"} and all(v["std"] > 0 for v in model["mmd"].values())
    assert metrics["baseline"]["mmd"] == model["mmd"]  # the same checkpoint, the same views and draws

    assert len(model["channel_mean"]) == len(model["channel_std"]) == 4
    vae, _ = load_autoencoder(checkpoint)
    samples = encode_views(vae, cfg, shard_urls(shards, "val"), torch.device("cpu")).samples  # (6, 4, 4, 4)
    normalised = (samples.double() - model["shift"]) * model["scale"]  # 384 values, roughly N(0, 1)
    assert float(normalised.mean()) == pytest.approx(0.0, abs=0.2)
    assert float(normalised.std()) == pytest.approx(1.0, abs=0.15)

    grid = read_grid(picture, 32, rows=2, columns=5)
    assert all(grid.column_label_inked(c) for c in range(5)) and grid.title_inked()
    for row, pixels in enumerate(iter_images(shard_urls(shards, "val"))):  # one labelled row per image
        assert grid.row_label_inked(row)
        assert np.array_equal(grid.tile_at(row, 0), shown(resize_square(square_views(pixels, 1, 0, 0)[0], 32)))
        for own, baseline in ((1, 3), (2, 4)):  # the baseline is the same model
            assert np.array_equal(grid.tile_at(row, own), grid.tile_at(row, baseline))


def test_analyze_latents_needs_two_views(checkpoint, shards, tmp_path):
    cfg = LatentsConfig(resolution=32, max_images=1)
    with pytest.raises(ConfigError, match="views_per_image"):
        analyze_latents(cfg, checkpoint, shards, tmp_path / "p.png")


def _params(tmp_path, **sections) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**sections, "tracking": {"experiment": "test-eval"}}))
    return str(path)


def _finished_run():
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["test-eval"], output_format="list")
    assert run.info.status == "FINISHED"
    return mlflow.tracking.MlflowClient(), run


def test_eval_recon_stage_logs_metrics_reasons_and_artefacts(checkpoint, shards, tmp_path, monkeypatch,
                                                             missing_weights):
    from stages import eval_recon as stage

    params = _params(tmp_path, eval={"resolution": 32, "resolutions": [32, 40], "grid_images": 2})
    monkeypatch.setattr(sys, "argv", ["eval_recon", "--params", params, "--checkpoint", str(checkpoint),
                                      "--shards", str(shards), "--metrics", str(tmp_path / "m.json"),
                                      "--plots", str(tmp_path / "plots")])
    stage.main()

    client, run = _finished_run()
    assert run.data.tags["unavailable.rfid"].startswith("torch-fidelity's Inception-v3 weights are not at")
    assert "resized_views/lpips" not in run.data.metrics and "resized_views/rfid" not in run.data.metrics
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("resized_views/psnr", "native_crops/psnr", "native_crops/baseline_bicubic_x8_psnr"):
        protocol, name = key.split("/")
        assert run.data.metrics[key] == metrics[protocol][name]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "sweep_psnr")] == [32, 40]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"m.json", "sweep_psnr.csv", "resolution_sweep.png", "reconstructions.png"} <= logged


def test_analyze_latents_stage_logs_mmd_and_statistics(checkpoint, shards, tmp_path, monkeypatch):
    from stages import analyze_latents as stage

    params = _params(tmp_path, latents={"resolution": 32, "views_per_image": 2, "draws": 2, "bandwidths": [25]})
    monkeypatch.setattr(sys, "argv", ["analyze_latents", "--params", params, "--checkpoint", str(checkpoint),
                                      "--shards", str(shards), "--metrics", str(tmp_path / "m.json"),
                                      "--picture", str(tmp_path / "l.png")])
    stage.main()

    client, run = _finished_run()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert run.data.metrics["mmd_sigma25"] == metrics["model"]["mmd"]["25"]["mean"]
    assert run.data.metrics["latent_scale"] == metrics["model"]["scale"]
    assert {"m.json", "l.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
