"""What a partial checkpoint must match to be resumed, beyond the params: the content of the checkpoint a stage starts
from, the training shards and the precision (their changes upstream leave `checkpoints/partial/` in place); a
fine-tune keeping the pretrain optimiser still warms up; and the MLflow tags of a resumed `train_ldm` name the
normalisation it trains with."""

import dataclasses
import os
import shutil

import pytest
import torch
from fixtures_ldm import TINY_VAE, tiny_ldm

from models.discriminator import DiscriminatorConfig
from models.losses import LossConfig
from pipeline.config.schema import ModelConfig, VAETrainConfig
from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.distributed import Distributed
from pipeline.core.precision import Precision
from pipeline.core.tracking import Tracker
from pipeline.ldm import training as ldm_training
from pipeline.ldm.training import LDMTask, train_ldm
from pipeline.training import vae as vae_training
from pipeline.training.loop import StageOutputs
from pipeline.training.vae import VAETask, VAETrainer, train_vae

CPU = Distributed(rank=0, world_size=1, device=torch.device("cpu"))
MODEL = ModelConfig(vae=TINY_VAE, discriminator=DiscriminatorConfig(ch=4, ch_mult=(1, 2)))
LOSS = LossConfig(perceptual="off", disc_start=2)
IGNORED = "it was written with a different configuration"
LDM_CFG = tiny_ldm(steps=4, checkpoint_every=2, val_every=4)


def _vae_cfg(**overrides) -> VAETrainConfig:
    base = {"resolution": 32, "steps": 4, "batch_size": 2, "lr": 1e-3, "num_workers": 0, "log_every": 1,
            "val_every": 4, "checkpoint_every": 2, "val_images": 2, "warmup_steps": 2}
    return VAETrainConfig(**{**base, **overrides})


class Killed(Exception):
    """Stands in for SIGKILL: the process stops between two steps."""


def _killed_at_step_3(monkeypatch, task_class, train, *args, **kwargs) -> None:
    """Run `train(*args, **kwargs)` until the step 3 of `task_class` starts (after the checkpoint at step 2)."""
    original = task_class.train_step

    def step_or_die(self, batch, step):
        if step == 3:
            raise Killed
        return original(self, batch, step)

    with monkeypatch.context() as patch:
        patch.setattr(task_class, "train_step", step_or_die)
        with pytest.raises(Killed):
            train(*args, **kwargs)


def _outputs(folder) -> StageOutputs:
    return StageOutputs(folder / "stage.pt", folder / "stage.json", folder / "plots")


def _train_vae(shards, outputs: StageOutputs, **kwargs) -> dict:
    return train_vae("t", MODEL, LOSS, _vae_cfg(), shards, outputs, Tracker(None), CPU, **kwargs)


def _train_ldm(assets, outputs: StageOutputs, tracker: Tracker | None = None) -> dict:
    return train_ldm(LDM_CFG, assets.autoencoder, assets.shards, outputs, tracker or Tracker(None), CPU)


def _pretrained(path, seed: int) -> None:
    """A previous stage's final checkpoint (models, EMA, optimisers after one step) at `path`."""
    trainer = VAETrainer(MODEL, LOSS, _vae_cfg(seed=seed), CPU)
    torch.manual_seed(seed)
    trainer.train_step(torch.rand(2, 3, 32, 32) * 2 - 1, 0)
    save_checkpoint(path, {**trainer.state_dict(), "step": 1, "config": trainer.config_dict()})


def _killed_fine_tune(tmp_path, shards, monkeypatch) -> tuple:
    """A stage started from a pretrained checkpoint and killed after its partial checkpoint: (init, outputs)."""
    init = tmp_path / "pretrain.pt"
    _pretrained(init, seed=0)
    outputs = _outputs(tmp_path / "run")
    _killed_at_step_3(monkeypatch, VAETask, _train_vae, shards, outputs, init=init)
    return init, outputs


class CPUScaledPrecision(Precision):
    """fp16's loss scaling on CPU (autocast stays off): what a GPU run under `amp: fp16` checkpoints."""

    def __init__(self, mode, device):
        super().__init__(mode, device)
        self.scaler = torch.amp.GradScaler("cpu", enabled=True)

    @property
    def name(self) -> str:
        return "float16"


@pytest.mark.parametrize("reset_optimizer", [True, False])
def test_the_first_fine_tuning_step_is_warmed_up_with_or_without_the_previous_optimiser(tmp_path, reset_optimizer):
    _pretrained(tmp_path / "pretrain.pt", seed=0)
    cfg = _vae_cfg(lr=5e-4, disc_lr=3e-4, warmup_steps=10, reset_optimizer=reset_optimizer)
    trainer = VAETrainer(MODEL, LOSS, cfg, CPU, init=tmp_path / "pretrain.pt")
    for optimizer, lr in ((trainer.opt_ae, 5e-4), (trainer.opt_disc, 3e-4)):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr / 10)  # lr * warm-up(0)
        assert optimizer.param_groups[0]["initial_lr"] == lr
    kept_moments = bool(trainer.opt_ae.state)
    assert kept_moments is not reset_optimizer
    trainer.train_step(torch.zeros(2, 3, 32, 32), 0)
    assert trainer.opt_ae.param_groups[0]["lr"] == pytest.approx(5e-4 * 2 / 10)


def test_a_partial_of_another_init_checkpoint_is_not_resumed(tmp_path, ldm_assets, monkeypatch, capsys):
    init, outputs = _killed_fine_tune(tmp_path, ldm_assets.shards, monkeypatch)
    _pretrained(init, seed=1)  # new pretrain weights at the same path
    _train_vae(ldm_assets.shards, outputs, init=init)
    assert IGNORED in capsys.readouterr().out


def test_a_partial_of_other_shards_is_not_resumed(tmp_path, ldm_assets, monkeypatch, capsys):
    shards = shutil.copytree(ldm_assets.shards, tmp_path / "shards")
    outputs = _outputs(tmp_path / "run")
    _killed_at_step_3(monkeypatch, VAETask, _train_vae, shards, outputs)
    stat = os.stat(shards / "train-000000.tar")
    os.utime(shards / "train-000000.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # prepare ran again
    _train_vae(shards, outputs)
    assert IGNORED in capsys.readouterr().out


def test_the_same_inputs_resume(tmp_path, ldm_assets, monkeypatch, capsys):
    init, outputs = _killed_fine_tune(tmp_path, ldm_assets.shards, monkeypatch)
    _train_vae(ldm_assets.shards, outputs, init=init)
    assert "resuming from" in capsys.readouterr().out


def test_a_vae_partial_of_another_precision_starts_afresh(tmp_path, ldm_assets, monkeypatch, capsys):
    outputs = _outputs(tmp_path)
    _killed_at_step_3(monkeypatch, VAETask, _train_vae, ldm_assets.shards, outputs)
    monkeypatch.setattr(vae_training, "Precision", CPUScaledPrecision)
    summary = _train_vae(ldm_assets.shards, outputs)
    assert IGNORED in capsys.readouterr().out and summary["steps"] == 4
    assert load_checkpoint(outputs.checkpoint)["config"]["precision"] == "float16"


def test_an_ldm_partial_of_another_precision_starts_afresh(tmp_path, ldm_assets, monkeypatch, capsys):
    outputs = _outputs(tmp_path)
    _killed_at_step_3(monkeypatch, LDMTask, _train_ldm, ldm_assets, outputs)
    monkeypatch.setattr(ldm_training, "Precision", CPUScaledPrecision)
    summary = _train_ldm(ldm_assets, outputs)
    assert IGNORED in capsys.readouterr().out and summary["steps"] == 4
    assert load_checkpoint(outputs.checkpoint)["config"]["precision"] == "float16"


class TagRecorder(Tracker):
    def __init__(self):
        super().__init__(None)
        self.tags = {}

    def set_tags(self, tags):
        self.tags.update(tags)


def test_a_resumed_ldm_run_tags_the_normalisation_it_trains_with(tmp_path, ldm_assets, monkeypatch):
    outputs = _outputs(tmp_path)
    _killed_at_step_3(monkeypatch, LDMTask, _train_ldm, ldm_assets, outputs)
    started_with = load_checkpoint(outputs.partial)["latent_norm"]
    measure = ldm_training.stream_statistics

    def measured_otherwise(*args):  # as on another GPU: the statistics measured again differ
        stats = measure(*args)
        return dataclasses.replace(stats, std=2 * stats.std, channel_std=tuple(2 * s for s in stats.channel_std))

    monkeypatch.setattr(ldm_training, "stream_statistics", measured_otherwise)
    tracker = TagRecorder()
    _train_ldm(ldm_assets, outputs, tracker)
    assert tracker.tags["resumed_from_step"] == 2
    assert (tracker.tags["latent_shift"], tracker.tags["latent_scale"]) == (started_with["shift"],
                                                                          started_with["scale"])
    assert load_checkpoint(outputs.checkpoint)["latent_norm"] == started_with
