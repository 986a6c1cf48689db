"""The Prefect flow: runs the stages of dvc.yaml through DVC, in dependency order, as tasks.

DVC stays the source of truth (its cache and lock decide what actually runs); this flow adds scheduling,
retries of faults, per-stage state and live stage output in Prefect, and one grouped MLflow parent run per
execution.

    python -m pipeline.orchestration.flow run [STAGE ...]   # one flow run, no server needed (Prefect's ephemeral mode)
    python -m pipeline.orchestration.flow serve             # serve on the cron schedule in params.yaml (starts a local
                                                            # `prefect server` on 127.0.0.1 unless an API URL is set)
    python -m pipeline.orchestration.flow deploy --pool P   # register it on work pool P of the server at PREFECT_API_URL,
                                                            # on the same schedule; `prefect worker start --pool P` runs it
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.schedules import Cron
from prefect.states import State

from pipeline.config.parsing import ConfigError
from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error
from pipeline.core.environment import repo_root
from pipeline.core.errors import USER_ERROR_EXIT
from pipeline.core.tracking import pipeline_group
from pipeline.orchestration.dvc_stages import StageRun, dvc_env, execution_order, is_stale, reproduce, stage_graph
from pipeline.orchestration.serve import serve
from pipeline.orchestration.work_pool import deploy_to_pool

FAILURE_LINES = 40  # output lines quoted in a failed task's message (the task log has them all)
ENTRYPOINT = "pipeline/orchestration/flow.py:litevae_pipeline"  # this flow, from the project root


class StageFailed(RuntimeError):
    """`dvc repro` of a stage failed; `user_error` when the stage's command exited with USER_ERROR_EXIT."""

    def __init__(self, message: str, user_error: bool = False):  # (message,) args: picklable as a state result
        super().__init__(message)
        self.user_error = user_error

    @classmethod
    def of(cls, stage: str, run: StageRun) -> StageFailed:
        return cls(f"stage '{stage}' failed (dvc exited with {run.returncode}):\n"
                   + "\n".join(run.tail[-FAILURE_LINES:]), user_error=run.command_status == USER_ERROR_EXIT)


def _is_fault(task, task_run, state: State) -> bool:
    """Retry condition: faults (exit 1, a killed stage, DVC's own errors) may pass; a user error will not."""
    try:
        state.result()
    except StageFailed as err:
        return not err.user_error
    except Exception:  # noqa: BLE001 - raised around the stage, not by it: a fault, so retry
        # e.g. DVC's LockError from is_stale while another DVC holds the repository; an exception escaping this
        # function would make Prefect log it and not retry
        return True
    return True


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_is_fault, task_run_name="{stage}")
def run_stage(stage: str, root: str, group: dict[str, str]) -> str:
    """`dvc repro --single-item STAGE`, its output streamed into the task log; "ran" if DVC reproduced it (ran its
    command or restored its outputs from the run cache), "skipped" if its deps, params and outs were unchanged."""
    logger = get_run_logger()
    stale = is_stale(Path(root), stage)  # asked before: afterwards DVC's status is clean either way
    run = reproduce(Path(root), stage, dvc_env(group), logger.info)
    if run.returncode:
        raise StageFailed.of(stage, run)
    outcome = "ran" if stale else "skipped"
    logger.info("%s: %s", stage, outcome)
    return outcome


@flow(name="litevae-pipeline", log_prints=True)
def litevae_pipeline(targets: list[str] | None = None, root: str | None = None) -> dict[str, str]:
    """Run `targets` (default: every stage) and their upstream stages; returns {stage: outcome}."""
    root_path = Path(root) if root else repo_root()
    graph = stage_graph(root_path)
    order = execution_order(graph, targets)
    experiment = load_params(root_path / "params.yaml", "tracking")["tracking"].experiment
    outcome: dict[str, str] = {}
    failed = []
    with pipeline_group(experiment, name="flow") as group:
        for stage in order:
            if any(outcome.get(dep) in ("failed", "not run") for dep in graph[stage]):
                outcome[stage] = "not run"
                continue
            state = run_stage(stage, str(root_path), group, return_state=True)
            outcome[stage] = state.result() if state.is_completed() else "failed"
            if state.is_failed():
                failed.append(stage)
        print("stage outcomes: " + ", ".join(f"{s}={o}" for s, o in outcome.items()))
        if failed:  # raised inside the group, so that its MLflow parent run ends FAILED
            raise RuntimeError(f"stages failed: {', '.join(failed)}; see the task logs above")
    return outcome


def _scheduled(params_path: Path) -> dict:
    """A deployment's schedule, parameters, description and concurrency from params.yaml's `schedule` section, its
    targets checked against the stages of the dvc.yaml beside it."""
    schedule = load_params(params_path, "schedule")["schedule"]
    root = params_path.resolve().parent
    stages = stage_graph(root)
    unknown = [target for target in schedule.targets if target not in stages]
    if unknown:
        raise ConfigError(f"schedule.targets: {unknown} are not stages of {root / 'dvc.yaml'}; pick from "
                          f"{sorted(stages)}")
    return {
        "schedules": [Cron(schedule.cron, timezone=schedule.timezone)],
        "parameters": {"targets": list(schedule.targets), "root": str(root)},
        "description": f"dvc repro of {', '.join(schedule.targets)} on cron '{schedule.cron}' ({schedule.timezone})",
        # one run at a time (later ones wait): a run starting while the previous one's DVC holds the repository
        # lock would fail
        "concurrency_limit": 1,
    }


def scheduled_deployment(params_path: Path):
    """The flow as a deployment on the cron schedule and targets of params.yaml's `schedule` section."""
    return litevae_pipeline.to_deployment(name="scheduled", **_scheduled(params_path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the flow once (no server needed)")
    run.add_argument("stages", nargs="*", help="target stages (default: all)")
    sub.add_parser("serve", help="serve the flow on the cron schedule from params.yaml")
    deploy = sub.add_parser("deploy", help="register the flow on a work pool of the Prefect server at "
                                           "PREFECT_API_URL, on the schedule and targets of params.yaml")
    deploy.add_argument("--pool", required=True, help="work pool (create it: prefect work-pool create P --type process)")
    deploy.add_argument("--name", default="work-pool", help="deployment name (default: work-pool)")
    args = parser.parse_args(argv)
    if args.command == "run":
        litevae_pipeline(targets=args.stages or None)
    elif args.command == "serve":
        serve(scheduled_deployment(repo_root() / "params.yaml"))
    else:
        root = repo_root()
        deploy_to_pool(root, ENTRYPOINT, args.pool, args.name, **_scheduled(root / "params.yaml"))


if __name__ == "__main__":
    exit_on_user_error(main)
