"""The benchmark scripts' own logic: bench_ldm_throughput builds what train_ldm builds, bench_prepare reuses and
completes a kept image folder. Nothing is timed."""

import importlib.util
import sys
from pathlib import Path

import torch

from pipeline.config.schema import SpeedConfig

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ldm_throughput_encodes_and_trains_with_the_speed_section_as_train_ldm_does(monkeypatch):
    bench = _script("bench_ldm_throughput")
    from models.litevae_encoder import EncoderConfig

    monkeypatch.setattr(sys, "argv", ["bench_ldm_throughput", "--litevae-preset", "S", "--resolution", "32",
                                      "--batch-size", "1", "--amp", "off"])
    args = bench.parse_args()
    # channels_last on everywhere: the encoder's weights show ready_to_encode, the UNet's the trainer's speed
    speed = SpeedConfig(channels_last="on", compile="off")
    config = bench.Config("LiteVAE-S", EncoderConfig(preset="S"), args, speed, torch.device("cpu"))
    encoder_conv = next(m for m in config.autoencoder.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    unet_conv = next(m for m in config.trainer.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert encoder_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert unet_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not config.autoencoder.training and not any(p.requires_grad for p in config.autoencoder.parameters())
    config.step()  # one step of the real path
    assert config.encoder_stats(32).startswith("1.03M")


def _files(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_ino for path in sorted(folder.iterdir())}


def test_prepare_benchmark_completes_a_partly_made_keep_folder(tmp_path):
    bench = _script("bench_prepare")
    folders = bench.make_images(tmp_path, [2, 3])
    assert sorted(folders) == [2, 3] and len(_files(folders[3])) == 3
    assert all(path.is_symlink() for path in folders[2].iterdir())
    made = _files(folders[3])
    # an interrupted run: the last image and one link missing
    (folders[3] / "000002.jpg").unlink()
    (folders[2] / "000001.jpg").unlink()
    bench.make_images(tmp_path, [2, 3])
    again = _files(folders[3])
    assert set(again) == set(made) and again["000000.jpg"] == made["000000.jpg"]  # kept, not rewritten
    assert (folders[2] / "000001.jpg").resolve() == (folders[3] / "000001.jpg").resolve()
    # a kept folder from a run with fewer images grows to the new size
    folders = bench.make_images(tmp_path, [2, 4])
    assert len(_files(folders[4])) == 4
