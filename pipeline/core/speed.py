"""How models run on their device: memory layout and compilation, one set of switches (`speed` in params.yaml)
for every stage that runs a model, so that the encoder benchmark measures what training and encoding do.

The "auto" choices are measurements (2-core Intel Sapphire Rapids VM, fp32, PyTorch 2.14):
- channels_last (NHWC weights and activations): oneDNN's forward convolutions are faster in NHWC, its backward
  ones in NCHW (forward+backward per 128 px image on one core: SD-VAE 3.0 s NCHW against 4.0 s NHWC, LiteVAE-S
  0.21 against 0.25 s), and cuDNN is fastest in NHWC; so "auto" is NHWC for inference everywhere and for training
  on the GPU.
- compile (torch.compile, inductor): on the CPU it ran LiteVAE-S slower (6.1 against 7.8 img/s on one core,
  after 2 minutes of compiling; inductor's channels-last GroupNorm + SiLU took 11.9 ms against eager's 4.0 ms at
  32 x 128 x 128, batch 4); on the GPU, where LiteVAE's small layers are bound by kernel launches rather than
  FLOPs, fusing them is what pays. So "auto" compiles on CUDA only.
- cuda_graphs: compiled inference on CUDA is captured as CUDA graphs (mode "reduce-overhead"): one launch per
  forward pass for the fixed shapes of a benchmark or an encoding stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pipeline.config.schema import SpeedConfig

DEFAULT_SPEED = SpeedConfig()  # frozen: safe as a default argument


def speed_tags(speed: SpeedConfig, device: torch.device) -> dict[str, bool]:
    """The switches in force on `device` as MLflow tags: {"speed.compile": ..., ...}."""
    return {f"speed.{key}": value for key, value in speed.switches(device).items()}


def set_layout(module: nn.Module, speed: SpeedConfig, device: torch.device, training: bool) -> nn.Module:
    """`module` with its 4-D weights in the layout `speed` gives, in place; convolutions then produce
    activations in that layout too. Returns `module`."""
    layout = torch.channels_last if speed.uses_channels_last(device, training) else torch.contiguous_format
    return module.to(memory_format=layout)


def fast(module: nn.Module, speed: SpeedConfig, device: torch.device, training: bool) -> Callable:
    """`module` itself, or compiled when `speed` compiles on `device`; inference on CUDA with cuda_graphs is
    captured as CUDA graphs. Call the result; save and load the weights through `module`."""
    if not speed.compiles(device):
        return module
    graphs = device.type == "cuda" and speed.cuda_graphs and not training
    return torch.compile(module, mode="reduce-overhead" if graphs else None)


def ready_to_encode(autoencoder: nn.Module, speed: SpeedConfig, device: torch.device) -> nn.Module:
    """A frozen autoencoder on `device` in the inference layout, its encoder compiled where `speed` compiles.
    train_ldm's stream and export_vae's statistics both encode through it, so their statistics agree to the bit.
    The encoder's state dict is not read afterwards (a compiled wrapper prefixes its keys). Returns `autoencoder`."""
    set_layout(autoencoder.eval().requires_grad_(False).to(device), speed, device, training=False)
    autoencoder.encoder = fast(autoencoder.encoder, speed, device, training=False)
    return autoencoder
