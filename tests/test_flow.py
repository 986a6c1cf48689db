"""The Prefect flow runs dvc.yaml's stages through DVC in a temporary copy of the repository, groups their
MLflow runs, and its scheduled deployment carries the cron schedule from params.yaml."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.flow import execution_order, litevae_pipeline, scheduled_deployment, stage_graph
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """dvc.yaml, params.yaml and the code in a fresh DVC repo, with a small image folder as data."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for package in ("stages", "pipeline", "models"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 70, 3), dtype=np.uint8)).save(images / f"{index}.png")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(images), storage_size=64, min_size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the copy's own repo-root store must be found
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_graph_follows_dvc_yaml_and_orders_dependencies():
    graph = stage_graph(REPO / "dvc.yaml")
    order = execution_order(graph, None)
    assert order[0] == "prepare" and set(order) == set(graph)
    for stage, upstream in graph.items():
        assert all(order.index(u) < order.index(stage) for u in upstream)
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        execution_order(graph, ["nope"])


def test_flow_runs_prepare_through_dvc_and_groups_mlflow_runs(prefect_harness, repo_copy):
    import mlflow

    assert litevae_pipeline(targets=["prepare"], root=str(repo_copy)) == {"prepare": "ran"}
    assert (repo_copy / "data" / "manifest.json").is_file() and (repo_copy / "dvc.lock").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["litevae"], output_format="list")
    stage = next(r for r in runs if r.data.tags["stage"] == "prepare")
    parent = next(r for r in runs if r.data.tags["stage"] == "pipeline")
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert stage.data.tags["pipeline_run"] == parent.data.tags["pipeline_run"]
    assert stage.data.params["data.source"] == "folder"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id)}
    assert {"manifest.json", "contact_sheet.png", "prepare.json"} <= artifacts

    assert litevae_pipeline(targets=["prepare"], root=str(repo_copy)) == {"prepare": "skipped"}


def test_a_failing_stage_fails_the_flow_and_skips_downstream(prefect_harness, repo_copy):
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["data"]["path"] = str(repo_copy / "missing")
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(RuntimeError, match="stages failed: prepare"):
        litevae_pipeline(targets=["prepare"], root=str(repo_copy))


def test_scheduled_deployment_carries_the_cron_from_params(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["schedule"].update(cron="*/5 * * * *", timezone="Europe/Berlin", targets=["prepare"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    deployment = scheduled_deployment(tmp_path / "params.yaml")
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("*/5 * * * *", "Europe/Berlin")
    assert deployment.parameters == {"targets": ["prepare"], "root": str(tmp_path)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_starts_a_local_server_and_registers_the_cron_deployment_on_it(tmp_path):
    """`python -m pipeline.flow serve` with no PREFECT_API_URL: the deployment must land on the server it starts
    (the one the dashboard shows), not on a throwaway ephemeral server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_API_PORT=str(port), LITEVAE_ROOT=str(REPO))
    served = subprocess.Popen([sys.executable, "-m", "pipeline.flow", "serve"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cron = yaml.safe_load((REPO / "params.yaml").read_text())["schedule"]["cron"]
    deployment = None
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            deadline = time.monotonic() + 180
            while deployment is None and time.monotonic() < deadline and served.poll() is None:
                try:
                    with get_client(sync_client=True) as client:
                        deployment = client.read_deployment_by_name("litevae-pipeline/scheduled")
                except Exception:  # server still starting, or the deployment not registered yet
                    time.sleep(2)
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=30)
    assert deployment is not None, "no 'litevae-pipeline/scheduled' deployment on the started server"
    assert [s.schedule.cron for s in deployment.schedules] == [cron]
