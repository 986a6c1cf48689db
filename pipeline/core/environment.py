"""Process-wide defaults: telemetry off, the repository root.

Set with `setdefault`, so a user's explicit environment always wins. Prefect's home, profiles, API URL and server
settings are left to the user's own Prefect settings: an environment default would shadow a profile's value.
The `prefect server` that `serve` starts binds PREFECT_SERVER_API_HOST, Prefect's default 127.0.0.1 unless the
user sets another (pipeline/orchestration/server.py).
"""

from __future__ import annotations

import os
from pathlib import Path

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_defaults() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def repo_root(start: str | Path | None = None) -> Path:
    """The project root: `LITEVAE_ROOT` if set, else the nearest folder at or above `start` (default: the
    current directory) holding a dvc.yaml, else the checkout this package was installed from."""
    if os.environ.get("LITEVAE_ROOT"):
        return Path(os.environ["LITEVAE_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return Path(__file__).resolve().parents[2]  # pipeline/core/environment.py
