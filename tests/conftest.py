"""Shared fixtures. Tests run on CPU with tiny configs; nothing here downloads anything."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Fixtures shared by several test modules live beside this file, one module per concern; registered here, they
# reach every test by name. Test modules import only their constants and helpers (e.g. `tiny_ldm`).
pytest_plugins = ["fixtures_weights", "fixtures_ldm", "fixtures_export"]


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory, monkeypatch):
    """Every test sees this venv's tools first and never writes to the repository's MLflow store."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    store = tmp_path_factory.mktemp("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    for key in ("LITEVAE_PARENT_RUN_ID", "LITEVAE_PIPELINE_RUN"):
        monkeypatch.delenv(key, raising=False)
