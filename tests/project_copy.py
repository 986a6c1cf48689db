"""Helpers for tests that run the project as a user's checkout does: a copy of its code, dvc.yaml (some stages) and
params.yaml (tiny sections) in a fresh git + DVC repository, a folder of small images as its data, servers on
127.0.0.1 started in their own session and stopped with everything they started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline.orchestration.processes import stop_group

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.email=test@litevae", "-c", "user.name=LiteVAE test"]


def image_folder(root: Path, count: int = 10) -> Path:
    """`count` smooth random RGB images, 48-84 x 40 px, in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((48 + 4 * index, 40), Image.Resampling.BILINEAR).save(root / f"{index}.png")
    return root


def tiny_data(images: Path) -> dict:
    """A `data` section that prepares `images` (from `image_folder`) into 32 px-ready shards; DVC watches them."""
    return {"source": "folder", "path": str(images), "watch": str(images), "storage_size": 40, "min_size": 32,
            "val_fraction": 0.3}


def tiny_crops() -> dict:
    """The `train_128`, `train_256` and `ldm` resolutions (32 px) that `tiny_data`'s images hold: params.yaml is
    checked against data.min_size."""
    return {name: {"resolution": 32} for name in ("train_128", "train_256", "ldm")}


def tool_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment for DVC and the project's commands: DVC's site cache under `root` (not the system's
    var-tmp), telemetry off."""
    return {**os.environ, "DVC_SITE_CACHE_DIR": str(root / "dvc-site-cache"), "DVC_NO_ANALYTICS": "1",
            "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run `command` (a list) in `cwd`; its stdout and stderr together, or an assertion error quoting them."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited with {result.returncode}:\n{output[-4000:]}"
    return output


def project_copy(root: Path, stages: list[str], sections: dict[str, dict], env: dict[str, str]) -> Path:
    """The project's code, its dvc.yaml with only `stages` and its params.yaml with `sections` replacing (or
    updating, for keys left out) the project's, committed in a new git repository at `root` with DVC set up."""
    for package in ("stages", "pipeline", "models"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline["stages"] = {name: pipeline["stages"][name] for name in stages}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, section in sections.items():
        params[name] = {**params[name], **section}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([*GIT, "init", "-q", "-b", "main"], root, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the project's: analytics and updates off
    run([*GIT, "add", "-A"], root, env)
    run([*GIT, "commit", "-q", "-m", "project"], root, env)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: list[str], health_url: str, env: dict[str, str], log: Path,
                 timeout: float = 180) -> subprocess.Popen:
    """Start `command` in its own session (output to `log`) and wait until `health_url` answers; stopped (the
    whole session) with its log quoted if it exits or stays silent for `timeout` seconds."""
    with open(log, "wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(health_url, timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    stop_group(server, 5)
    raise AssertionError(f"{' '.join(command)} did not answer {health_url}:\n{log.read_text()[-4000:]}")
