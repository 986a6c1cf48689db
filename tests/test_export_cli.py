"""The `litevae` command through a subprocess (`python -m pipeline.export`, what the `litevae` script runs):
reconstruct a folder (PSNR equal to eval_recon's resized_views on the same val images and model; an unreadable
file skipped with its reason), encode/decode round trip, and a sample grid."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from grid_reading import read_grid, shown
from safetensors.torch import load_file

from pipeline.config.schema import EvalConfig
from pipeline.data.shards import shard_urls
from pipeline.data.views import iter_images
from pipeline.evaluation.reconstruction import eval_recon
from pipeline.export import load_autoencoder, load_ldm
from pipeline.export.inputs import quantise

REPO = Path(__file__).resolve().parents[1]


def litevae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "pipeline.export", *args, "--device", "cpu"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_reconstruct_scores_the_val_images_as_eval_recon(exported, ldm_assets, tmp_path, missing_weights):
    folder = tmp_path / "val"
    folder.mkdir()
    for index, pixels in enumerate(iter_images(shard_urls(ldm_assets.shards, "val"))):
        Image.fromarray(pixels).save(folder / f"{index}.png")  # lossless: the stored pixels
    (folder / "empty.jpg").write_bytes(b"")
    result = litevae("reconstruct", str(folder), "--out", str(tmp_path / "recon"), "--resized-view", "32",
                     "--autoencoder", str(exported / "exports" / "autoencoder"), cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "recon" / "metrics.csv").open()))
    assert [row["file"] for row in rows] == [f"{i}.png" for i in range(len(rows))] and len(rows) >= 2
    assert all((tmp_path / "recon" / row["file"]).is_file() for row in rows)
    assert "empty.jpg: empty file (0 bytes)" in result.stderr
    assert list(csv.reader((tmp_path / "recon" / "skipped.csv").open()))[1] == [str(folder / "empty.jpg"),
                                                                               "empty file (0 bytes)"]

    metrics, _ = eval_recon(EvalConfig(resolution=32, resolutions=(32,), batch_size=2),
                            exported / "checkpoints" / "finetune_vae.pt", ldm_assets.shards, tmp_path / "plots")
    assert metrics["resized_views"]["n"] == len(rows)
    cli_psnr = np.mean([float(row["psnr"]) for row in rows])
    assert abs(cli_psnr - metrics["resized_views"]["psnr"]) < 1e-3
    assert abs(np.mean([float(row["ssim"]) for row in rows]) - metrics["resized_views"]["ssim"]) < 1e-6


def test_encode_decode_round_trip_and_sample_grid(exported, tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (27, 35, 3), dtype=np.uint8)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "in" / "sub" / "a.png")
    autoencoder = ["--autoencoder", str(exported / "exports" / "autoencoder")]
    litevae("encode", str(tmp_path / "in"), "--out", str(tmp_path / "latents"), *autoencoder, cwd=tmp_path)
    latents = load_file(str(tmp_path / "latents" / "sub" / "a.safetensors"))["latents"]
    vae = load_autoencoder(exported / "exports" / "autoencoder")
    assert torch.equal(latents, vae.encode(pixels))
    litevae("decode", str(tmp_path / "latents"), "--out", str(tmp_path / "decoded"), *autoencoder, cwd=tmp_path)
    decoded = np.asarray(Image.open(tmp_path / "decoded" / "sub" / "a.png"))
    expected = (vae.decode(latents, size=(27, 35))[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(decoded, expected)

    litevae("sample", "-n", "3", "--seed", "1", "--batch-size", "2", "--ldm", str(exported / "exports" / "ldm"),
            "--out", str(tmp_path / "grid.png"), cwd=tmp_path)
    grid = read_grid(tmp_path / "grid.png", 32, rows=1, columns=3)  # three 32 px samples in one labelled row
    assert grid.title_inked() and grid.row_label_inked(0)
    ldm = load_ldm(exported / "exports" / "ldm")  # the CLI's batches of 2: samples 0-1, then sample 2
    samples = quantise(torch.cat([ldm.sample(2, seed=1), ldm.sample(1, seed=1, start=2)]))  # (3, 3, 32, 32)
    for index, sample in enumerate(samples):
        assert np.array_equal(grid.tile_at(0, index), shown(sample.permute(1, 2, 0).numpy()))
