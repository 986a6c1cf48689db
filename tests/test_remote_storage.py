"""Remote storage on the path a user takes (README "Remote storage"): a checkout runs `prepare` and `pretrain_vae`
with `dvc repro` and pushes to a DVC remote (a local folder here; S3 and SSH remotes work the same way); a fresh
`git clone` pulls the data and the checkpoint, finds `dvc status` clean and `dvc repro` reproduces nothing. Each
checkpoint is stored once: the training run in MLflow refers to the file DVC stores (its path and md5) and holds
no copy of it."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_ldm import TINY_VAE
from mlflow import MlflowClient
from project_copy import GIT, image_folder, project_copy, run, tiny_crops, tiny_data, tool_env

from models.discriminator import DiscriminatorConfig
from pipeline.config.schema import ModelConfig, VAETrainConfig
from pipeline.core.checkpoint import as_plain

DVC = [sys.executable, "-m", "dvc"]
CHECKPOINT = "checkpoints/pretrain_vae.pt"
TINY = {
    "model": as_plain(ModelConfig(vae=TINY_VAE, discriminator=DiscriminatorConfig(ch=4, ch_mult=(1, 2)))),
    "loss": {"perceptual": "off"},
    "train_128": as_plain(VAETrainConfig(resolution=32, batch_size=2, steps=4, log_every=2, val_every=4,
                                         checkpoint_every=4, val_images=2, num_workers=0)),
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A checkout that has run `dvc repro` of `prepare` and a tiny `pretrain_vae`, and its environment (MLflow
    store beside it)."""
    base = tmp_path_factory.mktemp("remote_storage")
    env = tool_env(base, MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}")
    root = project_copy(base / "checkout", ["prepare", "pretrain_vae"],
                        {"data": tiny_data(image_folder(base / "images")), **tiny_crops(), **TINY}, env)
    run([*DVC, "repro"], root, env)
    run([*GIT, "add", "-A"], root, env)  # dvc.lock, and the metrics and plots DVC leaves to git
    run([*GIT, "commit", "-q", "-m", "repro"], root, env)
    return root, env


def _locked_checkpoint(root: Path) -> dict:
    """dvc.lock's entry of the checkpoint: {"path", "md5", "size", "hash"}."""
    outs = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["pretrain_vae"]["outs"]
    (entry,) = [out for out in outs if out["path"] == CHECKPOINT]
    return entry


def _runs(env: dict[str, str]) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    return client, client.search_runs([client.get_experiment_by_name("litevae").experiment_id])


def _artefact_files(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    files = []
    for entry in client.list_artifacts(run_id, folder):
        files += _artefact_files(client, run_id, entry.path) if entry.is_dir else [entry.path]
    return files


def test_the_training_run_refers_to_the_checkpoint_dvc_stores(checkout):
    root, env = checkout
    client, runs = _runs(env)
    (training,) = [r for r in runs if r.data.tags["stage"] == "pretrain_vae"]
    files = _artefact_files(client, training.info.run_id)
    assert "pretrain_vae.json" in files and not [f for f in files if f.endswith(".pt")]
    locked = _locked_checkpoint(root)
    tags = training.data.tags
    assert (tags["checkpoint.path"], tags["checkpoint.md5"], tags["checkpoint.bytes"]) == (
        CHECKPOINT, locked["md5"], str(locked["size"]))


def test_a_fresh_clone_pulls_from_the_remote_and_reproduces_nothing(checkout, tmp_path):
    root, env = checkout
    remote = tmp_path / "remote"
    run([*DVC, "remote", "add", "-d", "storage", str(remote)], root, env)
    run([*GIT, "commit", "-q", "-am", "DVC remote"], root, env)
    run([*DVC, "push"], root, env)
    md5 = _locked_checkpoint(root)["md5"]
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # where README says a checkpoint lives

    clone = tmp_path / "clone"
    run([*GIT, "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / CHECKPOINT).exists()
    run([*DVC, "pull"], clone, env)
    assert (clone / CHECKPOINT).read_bytes() == (root / CHECKPOINT).read_bytes()
    assert sorted(p.name for p in (clone / "data" / "shards").iterdir()) == sorted(
        p.name for p in (root / "data" / "shards").iterdir())

    assert json.loads(run([*DVC, "status", "--json"], clone, env)) == {}
    runs_before = len(_runs(env)[1])
    lock = (clone / "dvc.lock").read_text()
    output = run([*DVC, "repro"], clone, env)
    assert "Running stage" not in output, output
    assert all(f"Stage '{stage}' didn't change, skipping" in output for stage in ("prepare", "pretrain_vae"))
    assert (clone / "dvc.lock").read_text() == lock and len(_runs(env)[1]) == runs_before  # no stage ran
