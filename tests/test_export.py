"""The export stages end to end on tiny models: export folders written by the stage commands (subprocesses, as
dvc runs them), loaded by the public API and by the README's snippet exactly as written, byte-identical on a
second export, and registered in MLflow as pyfunc models from code (no pickle) that predict what the API returns."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_export import CPU
from fixtures_ldm import tiny_ldm
from PIL import Image

from pipeline.config.schema import load_params
from pipeline.core.checkpoint import as_plain, load_checkpoint, save_checkpoint
from pipeline.core.checkpoint import load_autoencoder as load_checkpoint_autoencoder
from pipeline.core.errors import UserError
from pipeline.export import LatentDistribution, load_autoencoder, load_ldm
from pipeline.export.inputs import quantise
from pipeline.export.layout import CONFIG, LATENT_STATS, MODEL_CARD, WEIGHTS
from pipeline.export.writer import export_autoencoder, export_ldm
from pipeline.ldm.sampling import generate
from pipeline.ldm.sampling import load_ldm as load_ldm_checkpoint
from pipeline.measures.quality import from_uint8, to_uint8

REPO = Path(__file__).resolve().parents[1]
FILES = (WEIGHTS, CONFIG, LATENT_STATS, MODEL_CARD)


def test_exports_rebuild_the_trained_models_with_the_statistics_train_ldm_used(exported):
    exports = exported / "exports"
    for name in ("autoencoder", "ldm"):
        assert sorted(p.name for p in (exports / name).iterdir()) == sorted(FILES)
    vae = load_autoencoder(exports / "autoencoder")
    reference, _ = load_checkpoint_autoencoder(exported / "checkpoints" / "finetune_vae.pt")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(vae.model.state_dict()[name], tensor), name

    # The autoencoder export's statistics are train_ldm's, measured again the same way: the same numbers.
    ldm_state = load_checkpoint(exported / "checkpoints" / "train_ldm.pt")
    vae_stats = json.loads((exports / "autoencoder" / LATENT_STATS).read_text())
    ldm_stats = json.loads((exports / "ldm" / LATENT_STATS).read_text())
    assert {k: vae_stats[k] for k in ldm_state["latent_stats"]} == ldm_state["latent_stats"]
    assert vae_stats["normalisation"] == ldm_stats["normalisation"]
    assert vae_stats["normalisation"]["shift"] == ldm_state["latent_norm"]["shift"]
    assert vae_stats["resolution"] == 32 and vae_stats["normalisation"]["kind"] == "per_channel"
    assert vae_stats["scalar"]["scale"] == pytest.approx(1 / vae_stats["std"])

    config = json.loads((exports / "ldm" / CONFIG).read_text())
    assert config["autoencoder"]["export"] == "../autoencoder"
    assert config["diffusion"]["sampling_steps"] == 2 and config["latent_shape"] == [4, 4, 4]
    card = (exports / "autoencoder" / MODEL_CARD).read_text()
    assert "3 pretraining + 2 fine-tuning steps" in card and "params hash" in card

    # The LDM export samples exactly what eval_generation samples from the checkpoint.
    ldm = load_ldm(exports / "ldm")
    model, _ = load_ldm_checkpoint(exported / "checkpoints" / "train_ldm.pt")
    expected = generate(model, reference, range(3), seed=5, steps=2)
    assert torch.equal(quantise(ldm.sample(3, seed=5)), expected)
    assert torch.equal(quantise(ldm.sample(2, seed=5, start=1)), expected[1:])


def test_a_second_export_of_the_same_checkpoints_is_byte_identical(exported, ldm_assets):
    from stages import export_ldm as ldm_stage
    from stages import export_vae as vae_stage

    exports, again = exported / "exports", exported / "again"
    params = load_params(exported / "params.yaml", *ldm_stage.PARAMS)
    lineage = {name: as_plain(section) for name, section in params.items()}
    export_autoencoder(exported / "checkpoints" / "finetune_vae.pt", ldm_assets.shards, params["ldm"],
                       again / "autoencoder", CPU, {name: lineage[name] for name in vae_stage.PARAMS})
    export_ldm(exported / "checkpoints" / "train_ldm.pt", again / "autoencoder", again / "ldm", lineage,
               train_metrics=exported / "train_ldm.json")
    for name in ("autoencoder", "ldm"):
        for file in FILES:
            assert (exports / name / file).read_bytes() == (again / name / file).read_bytes(), f"{name}/{file}"


def test_readme_snippet_runs_as_written(exported):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Using the trained models"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(exported / "photo.jpg")
    cwd = os.getcwd()
    os.chdir(exported)
    try:
        namespace: dict = {}
        exec(compile(snippet, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["z"].shape == (1, 4, 6, 8)  # ceil(45 / 8), ceil(61 / 8)
    assert namespace["image"].shape == (1, 3, 48, 64) and 0 <= namespace["image"].min() <= namespace["image"].max() <= 1
    assert isinstance(namespace["posterior"], LatentDistribution) and namespace["posterior"].image_size == (45, 61)
    assert torch.equal(namespace["posterior"].mode(), namespace["z"])
    assert namespace["images"].shape == (4, 3, 32, 32)


def test_any_input_form_and_size_encodes_to_the_same_latents(exported):
    vae = load_autoencoder(exported / "exports" / "autoencoder")
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(exported / "odd.png")
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W) uint8
    latents = vae.encode(exported / "odd.png")
    for same in (Image.fromarray(pixels), pixels, tensor, tensor.float() / 255):
        assert torch.equal(vae.encode(same), latents)
    posterior = vae.encode_distribution(tensor)
    norm = vae.latent_norm
    assert torch.allclose(norm.denormalise(posterior.mean), vae.model.encode(
        torch.nn.functional.pad(from_uint8(tensor[None]), (0, 6, 0, 3), mode="replicate")).mean, atol=1e-5)
    assert posterior.sample(torch.Generator().manual_seed(0)).shape == (1, 4, 3, 5)
    assert vae.decode(latents, size=(21, 34)).shape == (1, 3, 21, 34)
    # reconstruct = posterior mean decoded, as eval_recon's forward(sample=False), in 8-bit values bit for bit
    square = tensor[:, :16, :16][None]
    expected = to_uint8(vae.model(from_uint8(square), sample=False).image)
    assert torch.equal(quantise(vae.reconstruct(square)), expected)
    (exported / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="broken.png: .*(truncated|not an image)"):
        vae.encode(exported / "broken.png")


def test_an_ldm_export_refuses_another_autoencoder(exported, ldm_assets, tmp_path):
    other = tmp_path / "other.pt"
    state = load_checkpoint(exported / "checkpoints" / "finetune_vae.pt")
    torch.manual_seed(1)
    state["ema"] = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state["ema"].items()}
    save_checkpoint(other, state)
    ldm_cfg = tiny_ldm()
    export_autoencoder(other, ldm_assets.shards, ldm_cfg, tmp_path / "autoencoder", CPU, {})
    with pytest.raises(UserError, match="not the autoencoder"):
        load_ldm(exported / "exports" / "ldm", autoencoder=tmp_path / "autoencoder")
    with pytest.raises(UserError, match="not from the autoencoder checkpoint"):
        export_ldm(exported / "checkpoints" / "train_ldm.pt", tmp_path / "autoencoder", tmp_path / "ldm", {})


def test_registered_pyfunc_models_predict_what_the_api_returns(exported, monkeypatch):
    import mlflow
    from mlflow.artifacts import download_artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{exported / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{exported / 'mlflow.db'}")
    vae = load_autoencoder(exported / "exports" / "autoencoder")
    images = np.random.default_rng(2).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    model = mlflow.pyfunc.load_model("models:/test-vae/1")
    assert model.metadata.signature is not None
    expected = quantise(vae.reconstruct(torch.from_numpy(images).permute(0, 3, 1, 2))).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(model.predict(images), expected)

    import pandas as pd

    sampler = mlflow.pyfunc.load_model("models:/test-ldm/1")
    samples = sampler.predict(pd.DataFrame({"num_samples": [2, 1], "seed": [3, 4]}))
    ldm = load_ldm(exported / "exports" / "ldm")
    assert samples.shape == (3, 32, 32, 3) and samples.dtype == np.uint8
    assert np.array_equal(samples[:2], quantise(ldm.sample(2, seed=3)).permute(0, 2, 3, 1).numpy())
    assert np.array_equal(samples[2:], quantise(ldm.sample(1, seed=4)).permute(0, 2, 3, 1).numpy())

    for name in ("test-vae", "test-ldm"):
        folder = Path(download_artifacts(f"models:/{name}/1"))
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert (folder / "MLmodel").is_file() and any(p.name == "input_example.json" for p in files)
        assert not [p for p in files if p.suffix in (".pkl", ".pickle") or "pickle" in p.name], name
