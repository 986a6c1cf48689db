"""The Prefect flow: runs the stages of dvc.yaml through DVC, in dependency order, as tasks.

DVC stays the source of truth (its cache and lock decide what actually runs); this flow adds scheduling,
retries of transient failures, per-stage state in Prefect, and one grouped MLflow parent run per execution.

    python -m pipeline.flow run [STAGE ...]   # one flow run, no server needed (Prefect's ephemeral mode)
    python -m pipeline.flow serve             # serve on the cron schedule in params.yaml (starts a local
                                              # `prefect server` on 127.0.0.1 unless PREFECT_API_URL is set)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from graphlib import TopologicalSorter
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect import serve as prefect_serve
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.states import State

from pipeline.environment import repo_root
from pipeline.params import load_params
from pipeline.tracking import pipeline_group

USER_ERROR_EXIT = "exited with 2"  # stages exit 2 on configuration/input errors: retrying cannot help
SERVER_START_SECONDS = 90


def stage_graph(dvc_yaml: Path) -> dict[str, set[str]]:
    """{stage: stages it depends on}, derived from dvc.yaml: B depends on A when a dep of B is an output
    (out, metric or plot) of A or lies inside one."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]

    def paths(entries: list) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    outputs = {name: paths(s.get("outs")) + paths(s.get("metrics")) + paths(s.get("plots"))
               for name, s in stages.items()}
    graph = {}
    for name, spec in stages.items():
        deps = paths(spec.get("deps"))
        graph[name] = {
            producer for producer, outs in outputs.items() if producer != name
            and any(dep == out or dep.startswith(out.rstrip("/") + "/") for dep in deps for out in outs)
        }
    return graph


def execution_order(graph: dict[str, set[str]], targets: list[str] | None) -> list[str]:
    """The targets and everything upstream of them, in dependency order (all stages if no targets)."""
    unknown = sorted(set(targets or []) - set(graph))
    if unknown:
        raise ValueError(f"unknown stage '{unknown[0]}'; dvc.yaml defines {sorted(graph)}")
    needed, frontier = set(), list(targets or graph)
    while frontier:
        stage = frontier.pop()
        if stage not in needed:
            needed.add(stage)
            frontier.extend(graph[stage])
    return [s for s in TopologicalSorter(graph).static_order() if s in needed]


def _is_transient(task, task_run, state: State) -> bool:
    try:
        state.result()
    except StageFailed as err:
        return USER_ERROR_EXIT not in err.output
    return True


class StageFailed(RuntimeError):
    def __init__(self, stage: str, output: str):
        super().__init__(f"stage '{stage}' failed:\n{output[-4000:]}")
        self.output = output


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_is_transient, task_run_name="{stage}")
def run_stage(stage: str, root: str, env: dict[str, str]) -> str:
    """`dvc repro --single-item STAGE`: runs the stage only if its deps, params or outs changed."""
    logger = get_run_logger()
    result = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=root, env={**os.environ, **env},
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StageFailed(stage, output)
    skipped = "didn't change, skipping" in output
    logger.info("%s: %s", stage, "unchanged (DVC cache)" if skipped else "ran")
    return "skipped" if skipped else "ran"


@flow(name="litevae-pipeline", log_prints=True)
def litevae_pipeline(targets: list[str] | None = None, root: str | None = None) -> dict[str, str]:
    """Run `targets` (default: every stage) and their upstream stages; returns {stage: outcome}."""
    root_path = Path(root) if root else repo_root()
    graph = stage_graph(root_path / "dvc.yaml")
    order = execution_order(graph, targets)
    experiment = load_params(root_path / "params.yaml", "tracking")["tracking"].experiment
    outcome: dict[str, str] = {}
    failed = []
    with pipeline_group(experiment, name="flow") as env:
        for stage in order:
            if any(outcome.get(dep) in ("failed", "not run") for dep in graph[stage]):
                outcome[stage] = "not run"
                continue
            state = run_stage(stage, str(root_path), env, return_state=True)
            outcome[stage] = state.result() if state.is_completed() else "failed"
            if state.is_failed():
                failed.append(stage)
    print("stage outcomes: " + ", ".join(f"{s}={o}" for s, o in outcome.items()))
    if failed:
        raise RuntimeError(f"stages failed: {', '.join(failed)}; see the task logs above")
    return outcome


def ensure_local_server() -> tuple[str, subprocess.Popen | None]:
    """The API to register the deployment with: PREFECT_API_URL when set, else a `prefect server` started here on
    127.0.0.1 at PREFECT_SERVER_API_PORT (default 4200). Scheduling needs a server: ephemeral mode cannot."""
    settings = get_current_settings()
    if settings.api.url:
        return settings.api.url, None
    api_url = f"http://127.0.0.1:{settings.server.api.port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(settings.server.api.port)],
                              env={**os.environ, "PREFECT_UI_ENABLED": "true"})
    for _ in range(SERVER_START_SECONDS):
        try:
            urllib.request.urlopen(f"{api_url}/health", timeout=2)
            return api_url, server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(1)
    server.terminate()
    raise RuntimeError(f"prefect server did not become healthy at {api_url} within {SERVER_START_SECONDS} s "
                       f"(port taken? set PREFECT_SERVER_API_PORT, or PREFECT_API_URL to a running server)")


def scheduled_deployment(params_path: Path):
    """The flow as a deployment on the cron schedule and targets of params.yaml's `schedule` section."""
    schedule = load_params(params_path, "schedule")["schedule"]
    return litevae_pipeline.to_deployment(
        name="scheduled",
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        parameters={"targets": list(schedule.targets), "root": str(params_path.resolve().parent)},
        description=f"dvc repro of {', '.join(schedule.targets)} on cron '{schedule.cron}' ({schedule.timezone})",
    )


def serve(params_path: Path) -> None:
    deployment = scheduled_deployment(params_path)
    api_url, server = ensure_local_server()
    try:
        # Prefect reads its settings once per process: a late os.environ write would not reach the client,
        # which would then register the deployment on a throwaway ephemeral server instead
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            prefect_serve(deployment)
    finally:
        if server is not None:
            server.terminate()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the flow once (no server needed)")
    run.add_argument("stages", nargs="*", help="target stages (default: all)")
    sub.add_parser("serve", help="serve the flow on the cron schedule from params.yaml")
    args = parser.parse_args(argv)
    if args.command == "run":
        litevae_pipeline(targets=args.stages or None)
    else:
        serve(repo_root() / "params.yaml")


if __name__ == "__main__":
    main()
