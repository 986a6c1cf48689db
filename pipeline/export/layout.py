"""The files of an export folder and how they are written: canonical JSON (sorted keys, no timestamps) and
safetensors weights, so that exporting the same checkpoint twice gives byte-identical files.

An export folder holds
- `model.safetensors`: the EMA weights (a state dict of float tensors, safetensors format);
- `config.json`: what rebuilds the exact model (the models/ configs as plain dicts) and where it came from;
- `latent_stats.json`: the latent statistics and the normalisation map the LDM's latents use;
- `README.md`: the model card.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.core.errors import MissingInputError, UserError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LATENT_STATS = "latent_stats.json"
MODEL_CARD = "README.md"
AUTOENCODER_FORMAT = "litevae-autoencoder/1"
LDM_FORMAT = "litevae-ldm/1"
PACKAGE = "litevae-pipeline"  # the distribution whose version config.json's `code` records


def canonical_json(obj: Any) -> str:
    """JSON text with sorted keys and a final newline: the same object always gives the same bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def params_hash(sections: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of params sections given as plain values ({name: dict})."""
    return hashlib.sha256(canonical_json(sections).encode()).hexdigest()


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """A state dict as safetensors (CPU, contiguous copies: safetensors refuses views that share memory)."""
    save_file({name: tensor.detach().cpu().contiguous().clone() for name, tensor in state_dict.items()}, str(path))


def read_config(folder: Path, expected_format: str) -> dict:
    """The config.json of an export folder, checked to be of `expected_format`."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise MissingInputError(f"{folder}: no {CONFIG}; not an export folder (write one with `dvc repro "
                                f"export_vae` or `dvc repro export_ldm`)")
    config = json.loads(path.read_text())
    if config.get("format") != expected_format:
        raise UserError(f"{path}: format {config.get('format')!r}, expected {expected_format!r}; point "
                                f"at an export folder of that kind")
    return config


def load_weights(folder: Path, config: dict) -> dict[str, torch.Tensor]:
    """The weights of an export folder, checked against the SHA-256 its config.json records."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise MissingInputError(f"{path}: missing; re-export the folder")
    if sha256_file(path) != config["weights_sha256"]:
        raise UserError(f"{path}: SHA-256 differs from {CONFIG}'s weights_sha256 (a modified or "
                                "partly copied export); re-export the folder")
    return load_file(str(path))


def written_by(config: dict) -> str:
    """The code that wrote an export, from its config.json's `code` (absent in exports older than it)."""
    code = config.get("code")
    if code is None:
        return "code that did not record its version"
    return f"{code['package']} {code['version']}, git commit {code['git_commit'] or 'unknown'}"


def load_weights_into(module: nn.Module, folder: Path, config: dict) -> None:
    """The export's weights loaded into `module`, which this code built from its config.json; weights that do not
    fit (an export written by other code) are a UserError naming the folder, its format and the code that wrote it."""
    try:
        module.load_state_dict(load_weights(folder, config))
    except RuntimeError as err:  # missing, unexpected or misshapen tensors
        raise UserError(f"{folder}: its {WEIGHTS} do not fit the model this code builds from its {CONFIG} (format "
                        f"{config['format']!r}, written by {written_by(config)}); load it with that code, or "
                        f"re-export it with this one. {textwrap.shorten(str(err), 400)}") from None
