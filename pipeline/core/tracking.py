"""MLflow tracking through one place: every stage execution is a run, only rank 0 logs.

The store is a SQLite file at the repository root (`mlflow.db`, artefacts under `mlruns/`) whatever the
current directory, unless `MLFLOW_TRACKING_URI` says otherwise. The runs of one pipeline execution are
grouped: `pipeline_group()` (used by `make repro` and the Prefect flow) opens a parent run and exports its id,
and each stage run started inside it is nested under it and tagged `pipeline_run=<group id>`.

Each checkpoint is stored once, by DVC (its cache and remote): a run logs small artefacts (metrics JSON, plots,
grids, the data manifest) and records a checkpoint only by reference (`Tracker.reference_dvc_output`): its path
in the repository and its md5, DVC's content address.

    python -m pipeline.core.tracking dvc repro     # run a command as one grouped pipeline execution
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.environment import repo_root

PARENT_RUN_ENV = "LITEVAE_PARENT_RUN_ID"
GROUP_ENV = "LITEVAE_PIPELINE_RUN"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created with its artefacts under the repo's `mlruns/` if new."""
    mlflow = _mlflow()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if tracking_uri().startswith("sqlite:"):
        artifacts = (repo_root() / "mlruns").as_uri()
    return mlflow.create_experiment(name, artifact_location=artifacts)


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Flatten nested dataclasses/mappings into {"section.key.sub": value}."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value}


def system_tags() -> dict[str, str]:
    import torch

    root = repo_root()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    tags = {
        "system.device": device,
        "system.torch": torch.__version__,
        "system.python": platform.python_version(),
        "system.host": platform.node(),
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    if commit.returncode == 0:
        tags["system.git_commit"] = commit.stdout.strip()
    lock = root / "dvc.lock"
    if lock.is_file():
        tags["system.dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


def dvc_output_reference(name: str, path: Path) -> dict[str, str]:
    """{`<name>.path`: `path` relative to the repo root (absolute if outside it), `<name>.md5`: its content md5,
    `<name>.bytes`: its size}. DVC 3 hashes a file as the md5 of its raw bytes, so the md5 equals dvc.lock's."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    resolved = path.resolve()
    root = repo_root()
    shown = resolved.relative_to(root) if resolved.is_relative_to(root) else resolved
    return {f"{name}.path": shown.as_posix(), f"{name}.md5": digest.hexdigest(),
            f"{name}.bytes": str(resolved.stat().st_size)}


class Tracker:
    """Logging calls for one stage run; a disabled tracker (ranks other than 0) ignores every call."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id
        self.mlflow = _mlflow() if run_id else None

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.enabled:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def reference_dvc_output(self, name: str, path: str | Path) -> None:
        """Record where DVC keeps the output `path` instead of uploading it: tags `<name>.path` (from the repo
        root) and `<name>.md5` (DVC's content address: dvc.lock's md5, the file name in its cache and remote)."""
        if self.enabled:
            self.set_tags(dvc_output_reference(name, Path(path)))

    def log_model(self, name: str, registered_name: str, python_model: Path, artifacts: Mapping[str, Path],
                  signature: Any, input_example: Any, pip_requirements: list[str]) -> None:
        """Log an MLflow pyfunc model from code (`python_model`: a file that calls mlflow.models.set_model, so
        nothing is pickled) with its `artifacts` (files or folders), the project's `models` and `pipeline`
        packages as its code, a signature and an input example; and register it as `registered_name`."""
        if not self.enabled:
            return
        import mlflow.pyfunc

        root = Path(__file__).resolve().parents[2]
        mlflow.pyfunc.log_model(
            name=name, python_model=str(python_model), artifacts={k: str(v) for k, v in artifacts.items()},
            code_paths=[str(root / "models"), str(root / "pipeline")], signature=signature,
            input_example=input_example, registered_model_name=registered_name,
            pip_requirements=pip_requirements,  # explicit: inferring them runs a slow subprocess
        )


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any], experiment: str, enabled: bool = True) -> Iterator[Tracker]:
    """An MLflow run for one stage execution, logging its params sections and system facts.

    `params` maps section names to their dataclasses. The run is marked FAILED if the body raises.
    """
    if not enabled:
        yield Tracker(None)
        return
    mlflow = _mlflow()
    parent = os.environ.get(PARENT_RUN_ENV)
    tags = {"stage": stage, "pipeline_run": os.environ.get(GROUP_ENV, "standalone"), **system_tags()}
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=stage,
                          parent_run_id=parent, tags=tags) as run:
        mlflow.log_params(flatten("", dict(params)))
        yield Tracker(run.info.run_id)


@contextmanager
def pipeline_group(experiment: str, name: str = "pipeline") -> Iterator[dict[str, str]]:
    """A parent run for one pipeline execution; yields the environment children must inherit.

    The run ends FAILED when the body raises (both callers raise when a stage failed), else FINISHED.
    """
    mlflow = _mlflow()
    group = f"{name}-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=group,
                          tags={"pipeline_run": group, "stage": "pipeline", **system_tags()}) as run:
        yield {PARENT_RUN_ENV: run.info.run_id, GROUP_ENV: group}


def _main(argv: list[str]) -> int:
    from pipeline.config.schema import load_params

    if not argv:
        print("usage: python -m pipeline.core.tracking COMMAND [ARGS...]", file=sys.stderr)
        return 2
    experiment = load_params(repo_root() / "params.yaml", "tracking")["tracking"].experiment
    with pipeline_group(experiment) as env:
        print(f"pipeline run {env[GROUP_ENV]} (MLflow parent run {env[PARENT_RUN_ENV]})", flush=True)
        code = subprocess.run(argv, env={**os.environ, **env}, check=False).returncode
        if code:
            _mlflow().set_tag("error", f"{' '.join(argv)} exited with {code}")
            raise SystemExit(code)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
