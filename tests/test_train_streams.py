"""train_ldm's random streams are independent: a step's posterior and diffusion noise are not torch's global draws,
the held-out loss's noise is not the held-out latents' posterior noise, and no stream shares a seed with another or
with the data stream; held-out latents are encoded under the training precision, as training latents are."""

import itertools

import torch
from fixtures_ldm import tiny_ldm

from models.gaussian import DiagonalGaussian
from pipeline.core.distributed import Distributed
from pipeline.core.precision import Precision
from pipeline.core.seeds import Stream, derived_seed, stream_seed
from pipeline.core.tracking import Tracker
from pipeline.ldm import training as ldm_training
from pipeline.ldm.training import LDMTask, train_ldm
from pipeline.training.loop import StageOutputs

CPU = Distributed(rank=0, world_size=1, device=torch.device("cpu"))


def _same_draws(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


def _recording_posterior_noise(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every posterior sample's noise eps = (z - mean) / std, each with torch's global generator's next draw of
    its shape at that moment (nothing else in a train_ldm step draws from it)."""
    draws = []
    sample = DiagonalGaussian.sample

    def recording(self, generator=None):
        z = sample(self, generator)
        draws.append(((z - self.mean) / self.std, torch.randn(self.mean.shape)))
        return z

    monkeypatch.setattr(DiagonalGaussian, "sample", recording)
    return draws


def test_a_steps_posterior_noise_is_not_torchs_global_draw(ldm_assets, tmp_path, monkeypatch):
    draws = _recording_posterior_noise(monkeypatch)
    outputs = StageOutputs(tmp_path / "ldm.pt", tmp_path / "ldm.json", tmp_path / "plots")
    train_ldm(tiny_ldm(steps=2, val_every=2, grid_samples=1), ldm_assets.autoencoder, ldm_assets.shards, outputs,
              Tracker(None), CPU)
    assert len(draws) >= 2  # the held-out latents' and one per step
    assert not any(_same_draws(eps, global_draw) for eps, global_draw in draws)


def test_the_held_out_loss_noise_is_not_the_held_out_posterior_noise(ldm_assets, tmp_path, monkeypatch):
    task = LDMTask(tiny_ldm(val_images=2, batch_size=2), ldm_assets.autoencoder, ldm_assets.shards, tmp_path, CPU)
    posterior = _recording_posterior_noise(monkeypatch)
    loss_noise = []

    def recording_loss(net, x0, sigma, noise, cfg):
        loss_noise.append(noise)
        return torch.zeros(len(x0))

    monkeypatch.setattr(ldm_training, "denoising_loss", recording_loss)
    task.look(0)
    [(eps, _)] = posterior  # (2, nz, h, w): both val latents in one batch
    noise = torch.cat(loss_noise)  # (8 N, nz, h, w): N rows per held-out noise level
    assert not any(_same_draws(eps, rows) for rows in noise.split(len(eps)))


def test_no_two_streams_share_a_seed():
    seeds = [stream_seed(stream, seed, rank, step)
             for stream, seed, rank, step in itertools.product(Stream, range(3), range(2), range(16))]
    seeds += [stream_seed(stream, seed) for stream, seed in itertools.product(Stream, range(3))]
    data = [derived_seed(seed, rank, worker, batch)  # pipeline/data/shards.py's crops and flips
            for seed, rank, worker, batch in itertools.product(range(3), range(2), range(4), range(16))]
    assert len(set(seeds + data)) == len(seeds) + len(data)


class CPUBFloat16(Precision):
    """Autocast to bfloat16 on CPU, standing in for a GPU's mixed precision."""

    def __init__(self):
        super().__init__("off", torch.device("cpu"))

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)


def test_held_out_latents_are_encoded_under_the_training_precision(ldm_assets, tmp_path, monkeypatch):
    task = LDMTask(tiny_ldm(val_images=2), ldm_assets.autoencoder, ldm_assets.shards, tmp_path, CPU)
    task.precision = CPUBFloat16()
    under_autocast = []
    encode = task.autoencoder.encode

    def recording_encode(images):
        under_autocast.append(torch.is_autocast_enabled("cpu"))
        return encode(images)

    monkeypatch.setattr(task.autoencoder, "encode", recording_encode)
    next(iter(task.batches(0)))
    assert task.held_out.dtype == torch.float32
    assert len(under_autocast) == 2 and all(under_autocast)  # a training batch, then the held-out latents
