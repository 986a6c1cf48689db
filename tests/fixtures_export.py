"""Both export folders of a tiny pipeline, written by the export stage commands: a randomly initialised VAE
checkpoint in finetune_vae's format, an LDM trained 2 steps on its latents (train_ldm in-process), then
`python -m stages.export_vae` and `stages.export_ldm` as subprocesses, as dvc runs them.

Registered for every test by `pytest_plugins` in conftest.py: request `exported` by name (the root folder:
`exports/{autoencoder,ldm}`, `checkpoints/`, `params.yaml`, the MLflow store `mlflow.db` with the registered
models `test-vae` and `test-ldm`).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_ldm import tiny_ldm

from pipeline.core.checkpoint import as_plain, load_checkpoint, save_checkpoint
from pipeline.core.distributed import Distributed
from pipeline.core.tracking import Tracker
from pipeline.ldm.training import train_ldm
from pipeline.training.loop import StageOutputs

REPO = Path(__file__).resolve().parents[1]
CPU = Distributed(0, 1, torch.device("cpu"))


def run_stage(module: str, root: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LITEVAE_ROOT": str(root),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    result = subprocess.run([sys.executable, "-m", module, "--params", str(root / "params.yaml"), *args], cwd=root,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def exported(ldm_assets, tmp_path_factory):
    """A tiny VAE checkpoint in finetune_vae's format, an LDM trained 2 steps on it, and both exports written by
    the stage commands into `root/exports` (MLflow store: `root/mlflow.db`)."""
    root = tmp_path_factory.mktemp("export")
    state = load_checkpoint(ldm_assets.autoencoder)
    vae = root / "checkpoints" / "finetune_vae.pt"
    save_checkpoint(vae, {**state, "config": {**state["config"], "train": {"resolution": 32}},
                          "start_global_step": 3, "step": 2})
    ldm_cfg = tiny_ldm(steps=2, val_every=2, checkpoint_every=2, grid_samples=2)
    params = {"ldm": as_plain(ldm_cfg), "tracking": {"experiment": "test", "vae_model_name": "test-vae",
                                                      "ldm_model_name": "test-ldm"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ldm = root / "checkpoints" / "train_ldm.pt"
    train_ldm(ldm_cfg, vae, ldm_assets.shards, StageOutputs(ldm, root / "train_ldm.json", root / "plots"),
              Tracker(None), CPU)
    run_stage("stages.export_vae", root, "--checkpoint", str(vae), "--shards", str(ldm_assets.shards),
              "--out", "exports/autoencoder")
    run_stage("stages.export_ldm", root, "--checkpoint", str(ldm), "--autoencoder", "exports/autoencoder",
              "--train-metrics", str(root / "train_ldm.json"), "--out", "exports/ldm")
    return root
