"""`dvc repro` starts the training stages through pipeline/core/launch.py: in-process for one process, torchrun
for several (on one node, or on several nodes that meet at `launch.rdzv_endpoint`); the world size is a DVC
param; only rank 0 writes outputs and logs."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from fixtures_ldm import TINY_VAE
from PIL import Image

from models.discriminator import DiscriminatorConfig
from models.losses import LossConfig
from pipeline.config.schema import LaunchConfig, VAETrainConfig
from pipeline.core.checkpoint import as_plain, load_checkpoint
from pipeline.core.errors import USER_ERROR_EXIT, UserError
from pipeline.core.launch import WORLD_SIZE_PARAMS, stage_command, torchrun_options

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = VAETrainConfig(resolution=32, steps=3, batch_size=4, lr=1e-3, num_workers=0, log_every=1, val_every=3,
                            checkpoint_every=2, val_images=2, warmup_steps=1)  # batch 4: global, 2 per process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """dvc.yaml, the code and a params.yaml for a tiny `pretrain_vae` on 10 small images, in a fresh DVC repo
    where `prepare` already ran."""
    root = tmp_path_factory.mktemp("launch") / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for package in ("stages", "pipeline", "models"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    images = root.parent / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        coarse = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((48, 40), Image.Resampling.BILINEAR).save(images / f"{index}.png")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(images), watch=str(images), storage_size=40, min_size=32, val_fraction=0.3,
                          shard_max_samples=2)
    params["model"] = {"vae": as_plain(TINY_VAE), "discriminator": as_plain(DiscriminatorConfig(ch=4, ch_mult=(1, 2)))}
    params["loss"] = as_plain(LossConfig(perceptual="off"))
    params["train_128"] = as_plain(TINY_TRAIN)
    for section in ("train_256", "ldm"):  # crops the 40 px images hold (params are checked against data.min_size)
        params[section]["resolution"] = 32
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{root.parent / 'prepare.db'}"}
    subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=600)
    return root


@pytest.fixture
def project(prepared, tmp_path) -> Path:
    """A copy of the prepared project, for one test to change."""
    return Path(shutil.copytree(prepared, tmp_path / "project", symlinks=True))


def _set_launch(root: Path, **launch) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["launch"].update(launch)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}


def _dvc_repro(root: Path, *targets: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", "repro", *targets], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _locked_world(root: Path, stage: str) -> dict:
    params = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["params"]["params.yaml"]
    return {key: params[key] for key in WORLD_SIZE_PARAMS}


def _stage_runs(stage: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("litevae")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.stage = '{stage}'")


def _check_one_two_process_run(root: Path) -> None:
    """The stage's outputs, written once by rank 0 of a world of 2, and one MLflow run that says so."""
    metrics = json.loads((root / "metrics/pretrain_vae.json").read_text())
    assert (metrics["world_size"], metrics["batch_size"], metrics["steps"]) == (2, 4, 3)  # the batch is global
    assert load_checkpoint(root / "checkpoints/pretrain_vae.pt")["config"]["world_size"] == 2
    assert not (root / "checkpoints/partial").exists() or not any((root / "checkpoints/partial").iterdir())
    [run] = _stage_runs("pretrain_vae")  # rank 1 logged nothing
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"
    assert run.data.metrics["final/world_size"] == 2


def test_dvc_repro_runs_a_training_stage_under_torchrun_with_two_processes(project):
    _set_launch(project, nproc_per_node=2)
    result = _dvc_repro(project, "pretrain_vae")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Stage 'prepare' didn't change, skipping" in result.stdout
    assert "launch: world size 2 (1 node(s) x 2)" in result.stdout and "torch.distributed.run" in result.stdout
    _check_one_two_process_run(project)
    assert _locked_world(project, "pretrain_vae") == {"launch.nproc_per_node": 2, "launch.nnodes": 1}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "pretrain_vae"], cwd=project, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert "up to date" in status.stdout, status.stdout


def test_two_nodes_meet_at_the_rendezvous_endpoint(project):
    """Two `nodes` on this machine, one process each: node 0 under `dvc repro`, node 1 joining with --stage."""
    _set_launch(project, nnodes=2, rdzv_endpoint=f"127.0.0.1:{_free_port()}")
    node0 = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "pretrain_vae"], cwd=project, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node1 = subprocess.run([sys.executable, "-m", "pipeline.core.launch", "--node-rank", "1", "--stage",
                                "pretrain_vae"], cwd=project, env=_env(), capture_output=True, text=True, timeout=600)
        output, _ = node0.communicate(timeout=600)
    finally:
        node0.kill()
    assert node1.returncode == 0, node1.stdout[-2000:] + node1.stderr[-3000:]
    assert node0.returncode == 0, output[-3000:]
    assert "launch: world size 2 (2 node(s) x 1), node 0" in output and "--node-rank N stages.pretrain_vae" in output
    _check_one_two_process_run(project)
    assert _locked_world(project, "pretrain_vae") == {"launch.nproc_per_node": 1, "launch.nnodes": 2}


@pytest.mark.parametrize("launch, message", [
    ({"nproc_per_node": 0}, "launch.nproc_per_node: got 0; must be >= 1"),
    ({"nnodes": 2, "rdzv_endpoint": "node0"}, "launch.rdzv_endpoint: 'node0' is not host:port"),
])
def test_bad_launch_params_fail_before_anything_starts(project, launch, message):
    _set_launch(project, **launch)
    result = subprocess.run([sys.executable, "-m", "pipeline.core.launch", "--stage", "pretrain_vae"], cwd=project,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == USER_ERROR_EXIT and message in result.stderr, result.stderr
    assert not (project / "checkpoints").exists()


def test_torchrun_options_per_layout():
    assert torchrun_options(LaunchConfig(nproc_per_node=8), 0) == ["--standalone", "--nproc_per_node=8"]
    two_nodes = LaunchConfig(nproc_per_node=4, nnodes=2, rdzv_endpoint="node0.cluster:29400")
    assert two_nodes.world_size == 8
    assert torchrun_options(two_nodes, 1) == ["--nnodes=2", "--node_rank=1", "--nproc_per_node=4",
                                              "--rdzv_backend=static", "--rdzv_endpoint=node0.cluster:29400"]


def test_the_node_rank_must_be_below_nnodes(project):
    _set_launch(project, nnodes=2)
    result = subprocess.run([sys.executable, "-m", "pipeline.core.launch", "--node-rank", "2", "--stage",
                             "pretrain_vae"], cwd=project, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == USER_ERROR_EXIT
    assert "--node-rank 2: launch.nnodes is 2, so node ranks are 0 to 1" in result.stderr, result.stderr


def test_stage_command_reads_dvc_yaml():
    module, *args = stage_command(REPO / "dvc.yaml", "train_ldm")
    assert module == "stages.train_ldm" and args[:2] == ["--shards", "data/shards"]
    with pytest.raises(UserError, match="stage 'prepare' does not run through `python -m pipeline.core.launch`"):
        stage_command(REPO / "dvc.yaml", "prepare")
    with pytest.raises(UserError, match="no stage 'nope'"):
        stage_command(REPO / "dvc.yaml", "nope")


def test_a_user_error_on_the_ranks_of_a_two_process_launch_exits_2(tmp_path):
    """torchrun exits 1 whatever its ranks exited with; the launcher keeps a rank's user error (the flow's no-retry
    exit code)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["launch"].update(nproc_per_node=2)
    params["train_128"]["batch_size"] = 3  # does not divide over 2 processes: a ConfigError on each rank
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "pipeline.core.launch", "stages.pretrain_vae",
                             "--params", str(tmp_path / "params.yaml"), "--shards", str(tmp_path / "shards"),
                             "--checkpoint", str(tmp_path / "c.pt"), "--metrics", str(tmp_path / "m.json"),
                             "--plots", str(tmp_path / "plots")],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert "launch: world size 2 (1 node(s) x 2)" in result.stdout, result.stdout[-2000:]
    assert result.returncode == USER_ERROR_EXIT, result.stderr[-3000:]
    assert "error: train_128.batch_size: 3 is the global batch" in result.stderr
