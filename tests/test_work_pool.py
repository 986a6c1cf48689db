"""The flow deployed to a Prefect work pool, on the path a user takes: `prefect server start` on 127.0.0.1, a process
work pool, `python -m pipeline.orchestration.flow deploy --pool`, `prefect worker start`, `prefect deployment run`.
The triggered run is executed by the worker, reaches COMPLETED and has run its stage through DVC in the deployed
checkout."""

import os
import re
import subprocess
import sys
import time

import mlflow
import pytest
import yaml
from project_copy import free_port, image_folder, project_copy, run, start_server, tiny_data, tool_env

from pipeline.orchestration.processes import stop_group

PREFECT = [sys.executable, "-m", "prefect"]
POOL = "litevae-test"


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a user of a `prefect server` on 127.0.0.1 with its own PREFECT_HOME (started once)."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="false")
    api_url = f"http://127.0.0.1:{port}/api"
    server = start_server([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                          f"{api_url}/health", env, home / "server.log")
    try:
        yield {**env, "PREFECT_API_URL": api_url}
    finally:
        stop_group(server, 10)


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return get_client(sync_client=True)


def test_deployment_on_a_process_pool_runs_on_a_worker(prefect_env, tmp_path):
    env = tool_env(tmp_path, **prefect_env, PREFECT_WORKER_QUERY_SECONDS="1")
    crops = {"resolution": 32}  # no larger than tiny_data's min_size
    root = project_copy(tmp_path / "project", ["prepare"], {
        "data": tiny_data(image_folder(tmp_path / "images")), "schedule": {"targets": ["prepare"]},
        "train_128": crops, "train_256": crops, "ldm": crops}, env)
    run([*PREFECT, "work-pool", "create", POOL, "--type", "process"], root, env)
    run([sys.executable, "-m", "pipeline.orchestration.flow", "deploy", "--pool", POOL], root, env)

    with _client(env["PREFECT_API_URL"]) as client:
        deployment = client.read_deployment_by_name("litevae-pipeline/work-pool")
    assert deployment.work_pool_name == POOL
    assert deployment.global_concurrency_limit.limit == 1  # a run waits while the previous one holds DVC's lock
    assert deployment.parameters == {"targets": ["prepare"], "root": str(root)}
    cron = yaml.safe_load((root / "params.yaml").read_text())["schedule"]["cron"]
    assert [s.schedule.cron for s in deployment.schedules] == [cron]

    log = tmp_path / "worker.log"
    with open(log, "wb") as output:  # started elsewhere: the deployment's pull step takes it to the checkout
        worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", POOL], cwd=tmp_path, env=env,
                                  stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        triggered = run([*PREFECT, "deployment", "run", "litevae-pipeline/work-pool"], root, env)
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", triggered).group(1)
        with _client(env["PREFECT_API_URL"]) as client:
            flow_run = client.read_flow_run(flow_run_id)
            deadline = time.monotonic() + 300
            while not flow_run.state.is_final() and time.monotonic() < deadline and worker.poll() is None:
                time.sleep(1)
                flow_run = client.read_flow_run(flow_run_id)
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-4000:]}"
        assert flow_run.work_pool_name == POOL
    finally:
        stop_group(worker, 10)

    assert "prepare" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert (root / "data" / "manifest.json").is_file()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])  # the worker's store (not a URI cached in-process)
    experiment = client.get_experiment_by_name("litevae")
    stage_run = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["stage"] == "prepare")
    assert stage_run.data.tags["pipeline_run"].startswith("flow-")  # grouped under the flow run's parent


def test_deploy_names_what_is_missing(prefect_env, tmp_path):
    command = [sys.executable, "-m", "pipeline.orchestration.flow", "deploy", "--pool", "absent"]
    missing_pool = subprocess.run(command, env=prefect_env, capture_output=True, text=True, timeout=300, check=False)
    assert missing_pool.returncode == 2, missing_pool.stderr[-3000:]
    assert "prefect work-pool create absent --type process" in missing_pool.stderr

    no_server = {key: value for key, value in prefect_env.items() if key != "PREFECT_API_URL"}
    no_server["PREFECT_HOME"] = str(tmp_path)  # a home with no profile that names a server
    ephemeral = subprocess.run(command, env=no_server, capture_output=True, text=True, timeout=300, check=False)
    assert ephemeral.returncode == 2, ephemeral.stderr[-3000:]
    assert "needs a running Prefect server" in ephemeral.stderr and "PREFECT_API_URL" in ephemeral.stderr
