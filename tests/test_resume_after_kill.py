"""Exact resume on the path a user takes: the stage command is started, SIGKILLed at a random point after one of its
checkpoints, started again with the same command, and its final state is compared tensor for tensor with an
uninterrupted run's. Each stage reads its batches through one DataLoader worker, and `finetune_vae` trains the
discriminator."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_ldm import TINY_VAE, tiny_ldm

from models.discriminator import DiscriminatorConfig
from models.losses import LossConfig
from pipeline.config.schema import ModelConfig, VAETrainConfig
from pipeline.core.checkpoint import as_plain, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 8, 2
MODEL = ModelConfig(vae=TINY_VAE, discriminator=DiscriminatorConfig(ch=4, ch_mult=(1, 2)))
# The discriminator starts with fine-tuning (global step STEPS), as in the quickstart; LPIPS (random weights from the
# `pretrained_weights` fixture) is built, like every network, from torch's global generator.
LOSS = LossConfig(perceptual="lpips", disc_start=STEPS)
# Log windows of 5 steps: every checkpoint (steps 2, 4, 6) falls inside one, so the window's sums must resume too.
CADENCE = dict(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, log_every=5, val_every=4, num_workers=1)


def _vae_section(seed: int) -> dict:
    return as_plain(VAETrainConfig(resolution=32, batch_size=2, lr=1e-3, val_images=2, ema_decay=0.9,
                                   warmup_steps=2, seed=seed, **CADENCE))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A params.yaml: the repository's, with tiny models and short runs."""
    root = tmp_path_factory.mktemp("kill")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params |= {"model": as_plain(MODEL), "loss": as_plain(LOSS), "train_128": _vae_section(0),
               "train_256": _vae_section(1), "ldm": as_plain(tiny_ldm(latents="on_the_fly", **CADENCE))}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _command(stage: str, root: Path, out: Path, ldm_assets) -> list[str]:
    common = ["--params", str(root / "params.yaml"), "--checkpoint", str(out / f"{stage}.pt"),
              "--metrics", str(out / f"{stage}.json"), "--plots", str(out / "plots")]
    common += ["--shards", str(ldm_assets.shards)]
    if stage == "pretrain_vae":
        return common
    if stage == "finetune_vae":
        return [*common, "--init", str(root / "pretrain_vae.pt")]
    return [*common, "--autoencoder", str(ldm_assets.autoencoder)]


def _start(stage: str, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own, so the kill takes the DataLoader worker with it, as a killed job's would go.
    return subprocess.Popen([sys.executable, "-m", f"stages.{stage}", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _run(stage: str, args: list[str]) -> None:
    process = _start(stage, args)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]


def _kill_after_a_checkpoint(stage: str, args: list[str], partial: Path, rng: random.Random) -> tuple[int, float]:
    """Start the stage and SIGKILL it a random delay after its k-th checkpoint write (k random); returns both."""
    writes, delay = rng.randint(1, STEPS // CHECKPOINT_EVERY - 1), rng.uniform(0.0, 0.05)
    process = _start(stage, args)
    seen, last = 0, None
    deadline = time.monotonic() + 300
    while seen < writes:
        assert process.poll() is None, f"{stage} ended before its checkpoint {writes}: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{stage} wrote no checkpoint {writes} in 300 s"
        try:
            inode = partial.stat().st_ino  # each atomic write renames a new file into place
        except FileNotFoundError:
            inode = None
        if inode is not None and inode != last:
            seen, last = seen + 1, inode
        time.sleep(0.002)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    return writes, delay


def _tensors(state, prefix=""):
    """{dotted key: value} of every tensor and number in a nested checkpoint."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {prefix: state}
    out = {}
    for key, value in items:
        out |= _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return out


@pytest.mark.parametrize("stage", ["pretrain_vae", "finetune_vae", "train_ldm"])
def test_a_stage_killed_after_a_checkpoint_resumes_exactly(stage, workspace, ldm_assets, pretrained_weights,
                                                           tmp_path):
    if stage == "finetune_vae" and not (workspace / "pretrain_vae.pt").exists():
        _run("pretrain_vae", _command("pretrain_vae", workspace, workspace, ldm_assets))
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(stage, _command(stage, workspace, uninterrupted, ldm_assets))
    args = _command(stage, workspace, killed, ldm_assets)
    rng = random.Random()
    writes, delay = _kill_after_a_checkpoint(stage, args, killed / "partial" / f"{stage}.pt", rng)
    where = f"(killed {delay:.3f} s after checkpoint {writes})"
    assert not (killed / f"{stage}.pt").exists(), f"the run finished before the kill {where}"
    assert load_checkpoint(killed / "partial" / f"{stage}.pt")["step"] >= writes * CHECKPOINT_EVERY
    _run(stage, args)

    expected, resumed = load_checkpoint(uninterrupted / f"{stage}.pt"), load_checkpoint(killed / f"{stage}.pt")
    assert resumed["step"] == expected["step"] == STEPS
    expected_values, resumed_values = _tensors(expected), _tensors(resumed)
    timings = {key for key in expected_values if key.startswith("history.train.") and "per_s" in key}
    assert set(expected_values) == set(resumed_values)
    compared = 0
    for key in sorted(set(expected_values) - timings):
        value, other = expected_values[key], resumed_values[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), f"{key} differs after resume {where}"
            compared += 1
        else:
            assert value == other, f"{key}: {value!r} != {other!r} {where}"
    assert compared > 50
    assert not (killed / "partial" / f"{stage}.pt").exists()
    metrics = json.loads((killed / f"{stage}.json").read_text())
    assert metrics["steps"] == STEPS
    if stage == "finetune_vae":  # the discriminator trained, and identically
        assert any(row.get("disc/loss") for row in resumed["history"]["train"])
