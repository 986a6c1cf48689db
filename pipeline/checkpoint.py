"""Checkpoints: everything needed to continue exactly, written atomically, loaded with weights_only=True.

A checkpoint is a plain dict of tensors, numbers, strings and nested dicts/lists (so `torch.load(...,
weights_only=True)` accepts it): model and EMA state dicts, optimiser states, the step, RNG states, and the
resolved config sections as plain mappings (so a checkpoint rebuilds its own models).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.autoencoder import Autoencoder, AutoencoderConfig
from pipeline.config import parse
from pipeline.files import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; run the stage that writes it (see dvc.yaml)")
    return torch.load(path, map_location="cpu", weights_only=True)


def as_plain(config: Any) -> Any:
    """A dataclass config as nested dicts/lists of plain values (weights_only-loadable)."""
    if dataclasses.is_dataclass(config):
        return {f.name: as_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [as_plain(v) for v in config]
    if isinstance(config, dict):
        return {k: as_plain(v) for k, v in config.items()}
    return config


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_autoencoder(path: str | Path, ema: bool = True) -> tuple[Autoencoder, AutoencoderConfig]:
    """The autoencoder stored in a VAE training checkpoint (EMA weights by default), in eval mode."""
    checkpoint = load_checkpoint(path)
    cfg = parse(AutoencoderConfig, checkpoint["config"]["model"]["vae"], f"{path}:config.model.vae")
    model = Autoencoder(cfg)
    model.load_state_dict(checkpoint["ema" if ema else "autoencoder"])
    return model.eval().requires_grad_(False), cfg
