"""Stages log to an MLflow tracking server with an artefact store, as the README sets one up: `mlflow server` on
127.0.0.1 (SQLite backend, `--artifacts-destination` folder), a stage command with MLFLOW_TRACKING_URI pointing at
it; the run, its metrics and artefacts are read back through the server, and the files are in the store."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from project_copy import REPO, free_port, image_folder, start_server, tiny_crops, tiny_data

from pipeline.orchestration.processes import stop_group


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """(tracking URI, artefact destination) of a server started once for this module."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    artifacts = root / "artifacts"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(artifacts)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    server = start_server(command, f"http://127.0.0.1:{port}/health", env, root / "server.log")
    try:
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        stop_group(server, 10)


def test_a_stage_logs_its_run_metrics_and_artefacts_to_the_server(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    uri, store = mlflow_server
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {**params["data"], **tiny_data(image_folder(tmp_path / "images"))}
    for name, section in tiny_crops().items():
        params[name].update(section)
    params["tracking"]["experiment"] = "served"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "stages.prepare", "--params", str(tmp_path / "params.yaml"),
               "--shards", str(out / "shards"), "--manifest", str(out / "manifest.json"),
               "--contact-sheet", str(out / "contact_sheet.png"), "--metrics", str(out / "prepare.json")]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert run.data.tags["stage"] == "prepare" and run.info.status == "FINISHED"
    assert run.data.params["data.path"] == str(tmp_path / "images")
    summary = json.loads((out / "prepare.json").read_text())
    numbers = {key: float(value) for key, value in summary.items() if isinstance(value, (int, float))}
    assert numbers and {key: run.data.metrics[key] for key in numbers} == numbers
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artefacts == {"manifest.json", "contact_sheet.png", "prepare.json"}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, not a client path
    for name in artefacts:  # uploaded through the server into its artefact destination
        (stored,) = store.rglob(f"{run.info.run_id}/artifacts/{name}")
        assert stored.read_bytes() == (out / name).read_bytes()
