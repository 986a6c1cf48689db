"""Checkpoints: everything needed to continue exactly, written atomically, loaded with weights_only=True.

A checkpoint is a plain dict of tensors, numbers, strings and nested dicts/lists (so `torch.load(...,
weights_only=True)` accepts it): model and EMA state dicts, optimiser states, the step, and the
resolved config sections as plain mappings (so a checkpoint rebuilds its own models).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch

from models.autoencoder import Autoencoder, AutoencoderConfig
from pipeline.config.parsing import parse
from pipeline.core.errors import MissingInputError
from pipeline.core.files import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no checkpoint; run the stage that writes it (see dvc.yaml)")
    return torch.load(path, map_location="cpu", weights_only=True)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies a checkpoint a stage starts from or encodes with)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def as_plain(config: Any) -> Any:
    """A dataclass config as nested dicts/lists of plain values (weights_only-loadable)."""
    if dataclasses.is_dataclass(config):
        return {f.name: as_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [as_plain(v) for v in config]
    if isinstance(config, dict):
        return {k: as_plain(v) for k, v in config.items()}
    return config


def load_autoencoder(path: str | Path, ema: bool = True) -> tuple[Autoencoder, AutoencoderConfig]:
    """The autoencoder stored in a VAE training checkpoint (EMA weights by default), in eval mode."""
    checkpoint = load_checkpoint(path)
    cfg = parse(AutoencoderConfig, checkpoint["config"]["model"]["vae"], f"{path}:config.model.vae")
    model = Autoencoder(cfg)
    model.load_state_dict(checkpoint["ema" if ema else "autoencoder"])
    return model.eval().requires_grad_(False), cfg
