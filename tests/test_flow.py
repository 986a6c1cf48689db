"""The Prefect flow runs dvc.yaml's stages through DVC (the graph and each stage's outcome from DVC's API, the
stage output streamed into the task log, user errors not retried), groups their MLflow runs under a parent that
ends FAILED when a stage failed, and `serve` registers the cron deployment, runs it from an unactivated venv,
respects the user's Prefect profile and stops cleanly on SIGTERM or SIGINT."""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import yaml
from dvc.lock import LockError
from PIL import Image

from pipeline.config.parsing import ConfigError
from pipeline.orchestration import flow as flow_module
from pipeline.orchestration.dvc_stages import execution_order, is_stale, stage_graph
from pipeline.orchestration.flow import litevae_pipeline, scheduled_deployment
from pipeline.orchestration.processes import stop_group

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STOP_SECONDS = 10  # the promise: serve and the server it started are gone this long after SIGTERM/SIGINT


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def _dvc_init(root: Path) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)


def _tiny_repo(root: Path, stages: dict, targets: list[str]) -> Path:
    """A DVC repo at `root` with the project's params.yaml (schedule targets `targets`) and these `stages`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["schedule"]["targets"] = targets
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    _dvc_init(root)
    return root


def _python(code: str) -> str:
    """A dvc.yaml command running `code` with the `python` found on PATH (as the project's stages do)."""
    return f'python -c "{code}"'


def _pipeline_runs():
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("litevae")
    return client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'pipeline'")


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
    params["data"].update(source="folder", path=str(images), watch=str(images), storage_size=64, min_size=64)
    for section in ("train_128", "train_256", "ldm"):  # crops no larger than data.min_size
        params[section]["resolution"] = 64
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _dvc_init(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the copy's own repo-root store must be found
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_graph_comes_from_dvc_and_orders_dependencies(tmp_path):
    graph = stage_graph(REPO)
    order = execution_order(graph, None)
    assert order[0] in ("prepare", "benchmark_encoders") and set(order) == set(graph)
    assert graph["finetune_vae"] == {"prepare", "pretrain_vae"}
    for stage, upstream in graph.items():
        assert all(order.index(u) < order.index(stage) for u in upstream)
    with pytest.raises(ConfigError, match=r"^targets: unknown stages \['nope'\]; dvc.yaml defines \["):
        execution_order(graph, ["nope"])

    # DVC's rules, not string matching on dvc.yaml: a dep written relative to a stage's wdir, inside an
    # upstream stage's output folder
    (tmp_path / "sub").mkdir()
    _tiny_repo(tmp_path, {
        "make": {"cmd": "mkdir -p out", "outs": ["out"]},
        "use": {"cmd": "cat ../out/file.txt", "wdir": "sub", "deps": ["../out/file.txt"]},
    }, targets=["use"])
    assert stage_graph(tmp_path) == {"make": set(), "use": {"make"}}


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


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_outcomes_come_from_dvc_and_stage_output_streams_into_the_task_log(prefect_harness, tmp_path):
    root = _tiny_repo(tmp_path / "repo", {
        # prints DVC's own words for a skip, yet it ran: the outcome must not be read from the output
        "hello": {"cmd": _python("print(\\\"Stage 'hello' didn't change, skipping\\\"); open('hello.txt', 'w')"),
                  "outs": ["hello.txt"]},
        "slow": {"cmd": _python("import time; print('tick'); time.sleep(1.5); "
                                "open('slow.txt', 'w').write(repr(time.time()))"),
                 "outs": ["slow.txt"]},
    }, targets=["hello", "slow"])
    handler = _Records()
    logging.getLogger("prefect.task_runs").addHandler(handler)
    try:
        assert litevae_pipeline(root=str(root)) == {"hello": "ran", "slow": "ran"}
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(handler)
    # 'tick' was logged while the stage was still running, not collected when it ended
    tick = next(r for r in handler.records if r.getMessage() == "tick")
    assert tick.created < float((root / "slow.txt").read_text())
    assert any(r.getMessage() == "Running stage 'slow':" for r in handler.records)

    assert litevae_pipeline(root=str(root)) == {"hello": "skipped", "slow": "skipped"}
    assert {run.info.status for run in _pipeline_runs()} == {"FINISHED"}


def test_user_errors_are_not_retried_faults_are_and_the_parent_run_fails(prefect_harness, tmp_path, monkeypatch):
    def attempt(name: str, code: int) -> dict:
        return {"cmd": _python(f"open('{name}.attempts', 'a').write('x'); raise SystemExit({code})")}

    root = _tiny_repo(tmp_path / "repo", {
        "user_error": attempt("user_error", 2),
        "fault": {**attempt("fault", 1), "outs": ["fault.out"]},
        "downstream": {"cmd": "echo downstream > downstream.attempts", "deps": ["fault.out"]},
    }, targets=["user_error", "downstream"])
    monkeypatch.setattr(flow_module, "run_stage", flow_module.run_stage.with_options(retry_delay_seconds=0))
    with pytest.raises(RuntimeError, match="stages failed: (user_error, fault|fault, user_error);"):
        litevae_pipeline(targets=["user_error", "downstream"], root=str(root))
    assert (root / "user_error.attempts").read_text() == "x"  # exit 2: a user error, run once
    assert (root / "fault.attempts").read_text() == "xxx"  # exit 1: a fault, run and retried twice
    assert not (root / "downstream.attempts").exists()  # not run after its upstream failed
    assert [run.info.status for run in _pipeline_runs()] == ["FAILED"]


def test_an_error_around_the_stage_is_a_fault_and_retried(prefect_harness, tmp_path, monkeypatch):
    """DVC's LockError from is_stale (another DVC holds the repository) is not a StageFailed: still retried."""
    root = _tiny_repo(tmp_path / "repo", {"noop": {"cmd": "echo noop"}}, targets=["noop"])
    calls = []

    def locked_once(root: Path, stage: str) -> bool:
        calls.append(stage)
        if len(calls) == 1:
            raise LockError("Unable to acquire lock. Most likely another DVC process is running")
        return is_stale(root, stage)

    monkeypatch.setattr(flow_module, "is_stale", locked_once)
    monkeypatch.setattr(flow_module, "run_stage", flow_module.run_stage.with_options(retry_delay_seconds=0))
    assert litevae_pipeline(targets=["noop"], root=str(root)) == {"noop": "ran"}
    assert calls == ["noop", "noop"]


def test_tracking_cli_parent_run_fails_with_its_command(tmp_path):
    root = _tiny_repo(tmp_path / "repo", {}, targets=[])
    command = [sys.executable, "-m", "pipeline.core.tracking", sys.executable, "-c", "raise SystemExit(3)"]
    result = subprocess.run(command, cwd=root, env={**os.environ, "LITEVAE_ROOT": str(root)}, check=False)
    assert result.returncode == 3
    (run,) = _pipeline_runs()
    assert run.info.status == "FAILED" and "exited with 3" in run.data.tags["error"]


def test_importing_pipeline_leaves_prefect_settings_to_the_user():
    """Only analytics off: a default for the server's host or dashboard in the environment would shadow the user's
    Prefect profile (PREFECT_HOME, the API URL and the rest are theirs too)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    code = "import os, pipeline.orchestration.flow; print(*sorted(k for k in os.environ if k.startswith('PREFECT_')))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["PREFECT_SERVER_ANALYTICS_ENABLED"]


def test_scheduled_deployment_carries_the_cron_from_params_and_runs_one_at_a_time(tmp_path):
    root = _tiny_repo(tmp_path, {"prepare": {"cmd": "echo prepare"}}, targets=["prepare"])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["schedule"].update(cron="*/5 * * * *", timezone="Europe/Berlin")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    deployment = scheduled_deployment(root / "params.yaml")
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("*/5 * * * *", "Europe/Berlin")
    assert deployment.parameters == {"targets": ["prepare"], "root": str(root)}
    assert deployment.concurrency_limit == 1  # a run waits while the previous one holds DVC's lock


def test_scheduled_targets_that_are_not_stages_fail_when_the_schedule_is_registered(tmp_path):
    root = _tiny_repo(tmp_path, {"prepare": {"cmd": "echo prepare"}}, targets=["prepare", "prepar"])
    with pytest.raises(ConfigError, match=r"^schedule.targets: \['prepar'\] are not stages of .*dvc.yaml; pick "
                                          r"from \['prepare'\]"):
        scheduled_deployment(root / "params.yaml")


# `serve` in a subprocess, as a user starts it: its own PREFECT_HOME, a free port, no inherited Prefect settings.

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_env(prefect_home: Path, root: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(prefect_home), "LITEVAE_ROOT": str(root), **extra}


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return get_client(sync_client=True)


def _wait_for_deployment(api_url: str, served: subprocess.Popen):
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and served.poll() is None:
        try:
            with _client(api_url) as client:
                return client.read_deployment_by_name("litevae-pipeline/scheduled")
        except (httpx.TransportError, ObjectNotFound):  # server still starting, or deployment not registered yet
            time.sleep(1)
    raise AssertionError(f"no 'litevae-pipeline/scheduled' deployment at {api_url} (serve exit: {served.poll()})")


def _is_up(api_url: str) -> bool:
    try:
        urllib.request.urlopen(f"{api_url}/health", timeout=2)
        return True
    except OSError:
        return False


def _tree(process: subprocess.Popen) -> list[psutil.Process]:
    """`process` and everything it started (a server in its own session included)."""
    parent = psutil.Process(process.pid)
    return [parent, *parent.children(recursive=True)]


def _seconds_to_stop(processes: list[psutil.Process], send) -> float:
    """Seconds from `send()` until every process has exited (at most a little past STOP_SECONDS)."""
    start = time.monotonic()
    send()
    psutil.wait_procs(processes, timeout=STOP_SECONDS + 5)
    return time.monotonic() - start


def _kill_tree(process: subprocess.Popen) -> None:
    """Cleanup after a failed test: nothing it started may outlive it."""
    if process.poll() is None:
        for leftover in _tree(process)[::-1]:
            leftover.kill()
    process.wait()


def test_served_run_works_from_an_unactivated_venv_and_sigterm_stops_serve_and_its_server(tmp_path):
    """`.venv/bin/python -m pipeline.orchestration.flow serve` with the venv not on PATH: it starts a local
    server, registers the cron deployment there, a run of it finds DVC and runs the stage with the venv's
    python, streaming its output into the task log; SIGTERM to the process group stops serve and the server."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
    assert shutil.which("dvc", path=path) is None  # the situation of the bug: no dvc on PATH
    root = _tiny_repo(tmp_path / "repo", {
        "where": {"cmd": _python("import sys; print('stage python', sys.prefix); "
                                 "open('where.txt', 'w').write(sys.prefix)"),
                  "outs": ["where.txt"]}}, targets=["where"])
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = _serve_env(tmp_path / "prefect", root, PATH=path, PREFECT_SERVER_API_PORT=str(port),
                     PREFECT_RUNNER_POLL_FREQUENCY="1")
    env.pop("VIRTUAL_ENV", None)
    served = subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.flow", "serve"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deployment = _wait_for_deployment(api_url, served)
        cron = yaml.safe_load((root / "params.yaml").read_text())["schedule"]["cron"]
        assert [s.schedule.cron for s in deployment.schedules] == [cron]

        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with _client(api_url) as client:  # a run of the served deployment, due now rather than at the cron time
            flow_run = client.create_flow_run_from_deployment(deployment.id)
            deadline = time.monotonic() + 120
            while not flow_run.state.is_final() and time.monotonic() < deadline:
                time.sleep(1)
                flow_run = client.read_flow_run(flow_run.id)
            assert flow_run.state.is_completed(), flow_run.state
            assert (root / "where.txt").read_text() == sys.prefix  # the stage ran with the venv's python
            deadline, messages = time.monotonic() + 20, []
            while f"stage python {sys.prefix}" not in messages and time.monotonic() < deadline:
                time.sleep(1)  # logs reach the API in batches
                logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
                messages = [log.message for log in logs if log.task_run_id]
            assert f"stage python {sys.prefix}" in messages

        processes = _tree(served)
        assert any("server" in p.cmdline() for p in processes), "serve started no prefect server"
        seconds = _seconds_to_stop(processes, lambda: os.killpg(served.pid, signal.SIGTERM))
        print(f"serve and its server stopped {seconds:.1f} s after SIGTERM to serve's process group")
        assert seconds < STOP_SECONDS and not any(p.is_running() for p in processes)
        assert not _is_up(api_url)
    finally:
        _kill_tree(served)


def test_serve_uses_the_api_of_the_users_profile_and_stops_on_sigint(tmp_path):
    """With PREFECT_API_URL in the active profile of PREFECT_HOME, serve registers there and starts no server
    of its own; SIGINT stops it even when it was started with SIGINT ignored (a background job of a script)."""
    port, own_port = _free_port(), _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    server_env.update(PREFECT_HOME=str(tmp_path / "server"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=server_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    home = tmp_path / "user"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{api_url}"\n')
    root = _tiny_repo(tmp_path / "repo", {"noop": {"cmd": "echo noop"}}, targets=["noop"])
    deadline = time.monotonic() + 90
    while not _is_up(api_url) and time.monotonic() < deadline:
        time.sleep(0.5)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited, as by a background job of a script
    try:
        served = subprocess.Popen([sys.executable, "-m", "pipeline.orchestration.flow", "serve"], cwd=REPO,
                                  env=_serve_env(home, root, PREFECT_SERVER_API_PORT=str(own_port)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        _wait_for_deployment(api_url, served)
        processes = _tree(served)
        assert not any("server" in p.cmdline() for p in processes)
        assert not _is_up(f"http://127.0.0.1:{own_port}/api")
        seconds = _seconds_to_stop(processes, lambda: served.send_signal(signal.SIGINT))
        print(f"serve stopped {seconds:.1f} s after SIGINT")
        assert seconds < STOP_SECONDS and served.poll() is not None
    finally:
        _kill_tree(served)
        stop_group(server, 5)
