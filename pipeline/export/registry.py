"""Logging the export folders to MLflow as pyfunc models from code (pipeline/export/pyfunc_*.py) and registering
them, each with a signature and an input example. Nothing is pickled: the model is the code file, the export
folder its artefact."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np

from pipeline.core.tracking import Tracker

HERE = Path(__file__).resolve().parent
# What the logged code imports (pipeline/export and what it imports), pinned to the versions it was logged with.
REQUIREMENTS = ("mlflow", "torch", "safetensors", "numpy", "pillow", "pandas", "ruamel.yaml", "webdataset", "tqdm")
EXAMPLE_SIZE = 16  # the input example's side: one small image keeps the logged example (JSON) small


def pip_requirements() -> list[str]:
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def _image_spec():
    from mlflow.types import Schema, TensorSpec

    return Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])  # (N, H, W, 3) uint8 RGB


def register_autoencoder(tracker: Tracker, export: Path, registered_name: str) -> None:
    """Log and register the autoencoder export: uint8 (N, H, W, 3) images in, reconstructions out."""
    from mlflow.models import ModelSignature

    ramp = np.linspace(0, 255, EXAMPLE_SIZE, dtype=np.uint8)
    example = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1, None]), axis=-1)[None]
    tracker.log_model("autoencoder", registered_name, HERE / "pyfunc_autoencoder.py", {"autoencoder": export},
                      ModelSignature(inputs=_image_spec(), outputs=_image_spec()), example, pip_requirements())


def register_ldm(tracker: Tracker, export: Path, autoencoder: Path, registered_name: str) -> None:
    """Log and register the LDM export with its autoencoder export: a sampler, (num_samples, seed) rows in,
    uint8 (N, r, r, 3) images out."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("long", "num_samples"), ColSpec("long", "seed")])
    example = pd.DataFrame({"num_samples": [1], "seed": [0]})
    tracker.log_model("ldm", registered_name, HERE / "pyfunc_ldm.py", {"ldm": export, "autoencoder": autoencoder},
                      ModelSignature(inputs=inputs, outputs=_image_spec()), example, pip_requirements())
