"""The `speed` switches (pipeline/core/speed.py): what "auto" picks per device and phase, and that the training
stages really run the models in the layout and the compiled form the switches give."""

from __future__ import annotations

import pytest
import torch
from fixtures_ldm import tiny_ldm
from test_vae_training import CPU, TINY_MODEL, _train_cfg

from models.losses import LossConfig
from pipeline.config.parsing import ConfigError, parse
from pipeline.config.schema import SpeedConfig
from pipeline.ldm.latent_source import LatentNorm
from pipeline.ldm.training import LDMTrainer
from pipeline.training.vae import VAETrainer

GPU = torch.device("cuda")  # a device object only: nothing runs on it


def test_auto_picks_the_measured_layout_and_compiles_only_on_the_gpu():
    auto = SpeedConfig()
    assert auto.switches(CPU.device) == {"channels_last_inference": True, "channels_last_training": False,
                                         "compile": False, "cuda_graphs": False}
    assert auto.switches(GPU) == {"channels_last_inference": True, "channels_last_training": True,
                                  "compile": True, "cuda_graphs": True}
    forced = SpeedConfig(channels_last="off", compile="on", cuda_graphs=False)
    assert forced.switches(GPU) == {"channels_last_inference": False, "channels_last_training": False,
                                    "compile": True, "cuda_graphs": False}
    assert SpeedConfig(channels_last="on").uses_channels_last(CPU.device, training=True)


def test_a_bad_switch_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match="speed.compile"):
        parse(SpeedConfig, {"compile": "yes"}, "speed")


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


@pytest.mark.parametrize("channels_last", ["on", "off"])
def test_vae_training_runs_in_the_layout_the_switch_gives(channels_last):
    speed = SpeedConfig(channels_last=channels_last)
    layout = torch.channels_last if channels_last == "on" else torch.contiguous_format
    trainer = VAETrainer(TINY_MODEL, LossConfig(perceptual="off", disc_start=0), _train_cfg(), CPU, speed=speed)
    for module in (trainer.autoencoder, trainer.discriminator):
        assert all(w.is_contiguous(memory_format=layout) for w in _conv_weights(module))
    torch.manual_seed(0)
    metrics = trainer.train_step(torch.rand(2, 3, 32, 32) * 2 - 1, step=0)
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
    # the step's gradients arrive in the weights' layout (nothing converted back behind the switch's back)
    assert all(w.grad.is_contiguous(memory_format=layout) for w in _conv_weights(trainer.autoencoder))


def test_layout_changes_no_result_beyond_rounding():
    def first_losses(channels_last: str) -> list[float]:
        trainer = VAETrainer(TINY_MODEL, LossConfig(perceptual="off", disc_start=0), _train_cfg(), CPU,
                             speed=SpeedConfig(channels_last=channels_last))
        torch.manual_seed(0)
        images = torch.rand(2, 3, 32, 32) * 2 - 1
        return [trainer.train_step(images, step)["train/l1"] for step in range(3)]

    assert first_losses("on") == pytest.approx(first_losses("off"), rel=1e-4)


def test_compiled_ldm_training_step_matches_eager():
    """compile "on" wraps the network the step trains (the UNet's weights stay the module's own)."""
    losses = {}
    for compile_switch in ("off", "on"):
        trainer = LDMTrainer(tiny_ldm(), (4, 4, 4), LatentNorm(shift=0.0, scale=1.0), "sha", CPU,
                             speed=SpeedConfig(compile=compile_switch))
        assert (trainer.net is trainer.unet) == (compile_switch == "off")
        moments = torch.cat([torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)),
                             torch.full((2, 4, 4, 4), -30.0)], dim=1)
        losses[compile_switch] = trainer.train_step(moments, 0)["train/loss"]
        assert set(trainer.state_dict()["unet"]) == set(trainer.unet.state_dict())  # no "_orig_mod." keys
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)
