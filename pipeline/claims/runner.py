"""`python -m pipeline.claims run`: every arm of the profile as a DVC experiment, then the report, all in MLflow.

MLflow layout (the checkout's store, or MLFLOW_TRACKING_URI): one parent run `claims-<id>` (opened by
pipeline.core.tracking.pipeline_group, tag stage=pipeline) holding the profile, the report, its figures and the
measurements as artefacts, each claim's verdict as tag `claim.<key>.verdict` (and as a metric: 1 agrees,
0 inconclusive, -1 disagrees) and its headline rows' mean advantage and noise as metrics
`claim.<key>.<measure>.advantage` and `.noise`; under it one run per arm and seed, named after its DVC experiment
`claims-<id>-<arm>-s<seed>`, with its overrides as params, its measures as metrics and its `dvc exp run` output
as an artefact; under each of those, the stage runs the experiment made (tagged pipeline_run=claims-<id>).

Arms run one after another (two CPU cores hold one training at a time); a failed arm is recorded and the others
still run. The measurements file is rewritten after every arm, and the report is written whatever failed, with
the pairs a failure broke marked; the command then exits 1 and the parent run ends FAILED.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.claims.arms import Arm, ArmRun, arm_runs, check_overrides, pixels
from pipeline.claims.budget import ClaimsProfile, load_profile
from pipeline.claims.claims import ClaimResult, evaluate
from pipeline.claims.experiments import child_environment, collect, run_experiment, stage_arguments
from pipeline.claims.report import write_report
from pipeline.claims.snapshot import Snapshot, experiment_ref, publish, take_snapshot
from pipeline.config.schema import load_params
from pipeline.core.environment import repo_root
from pipeline.core.files import write_json
from pipeline.core.tracking import GROUP_ENV, PARENT_RUN_ENV, flatten, pipeline_group, tracking_uri

MEASUREMENTS = "claims_measurements.json"
BUSY_LOAD = 0.5  # 1-minute load average above which the machine is not idle


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0] if names else platform.machine()} CPU, {os.cpu_count()} cores"


def new_record(profile: ClaimsProfile, runs: list[ArmRun], group: str, parent_run_id: str, experiment: str,
               benchmark: dict[str, Any] | None) -> dict[str, Any]:
    """The measurements file's content before any arm ran. `benchmark`: the encoder benchmark's result (Table 3)
    as this run finds it, kept so that a later `report` shows what this run reported."""
    arms: dict[str, Arm] = {run.arm.name: run.arm for run in runs}
    return {
        "profile": str(profile.path), "budget": dataclasses.asdict(profile.budget), "params": profile.params,
        "group": group, "parent_run_id": parent_run_id, "forced": False, "experiment": experiment, "machine": machine(),
        "started": _now(), "finished": None, "wall_minutes": None, "code": None, "benchmark": benchmark,
        "arms": [{"name": arm.name, "description": arm.description, "targets": list(arm.targets),
                  "fine_tunes": arm.fine_tunes, "settings": arm.settings, "pixels": pixels(arm, profile.budget),
                  "runs": []} for arm in arms.values()],
    }


def run_arm(run: ArmRun, snapshot: Snapshot, group: str, experiment_id: str, logs: Path,
            force: bool) -> dict[str, Any]:
    """One arm at one seed, as a nested MLflow run; returns its entry of the record."""
    import mlflow

    from pipeline.claims.hf_error import checkpoint_hf_l1

    entry: dict[str, Any] = {"seed": run.seed, "experiment": run.experiment, "rev": None, "status": "failed",
                             "wall_s": 0.0, "restored": [], "measures": {}, "error": None}
    tags = {"stage": "claims_arm", "pipeline_run": group, "claims.arm": run.arm.name, "claims.seed": run.seed,
            "dvc_exp": run.experiment}
    arm_run = mlflow.start_run(experiment_id=experiment_id, run_name=run.experiment, nested=True, tags=tags)
    try:
        mlflow.log_params({f"override.{item.split('=', 1)[0]}": item.split("=", 1)[1] for item in run.overrides})
        env = child_environment(tracking_uri(), group, arm_run.info.run_id)
        log = logs / f"{run.experiment}.log"
        print(f"\n=== {run.experiment}: {run.arm.description} ({', '.join(run.arm.targets)})", flush=True)
        done = run_experiment(run, snapshot.path, env, log, force)
        entry["wall_s"], entry["restored"] = done.seconds, done.restored
        mlflow.log_artifact(str(log))
        mlflow.log_metric("wall_seconds", done.seconds, step=0)
        if done.code:
            entry["error"] = f"dvc exp run exited with {done.code}:\n{done.tail}"
        else:
            ref, entry["rev"] = experiment_ref(snapshot, run.experiment)
            publish(snapshot, ref)
            entry["measures"] = collect(snapshot.root, entry["rev"], run, checkpoint_hf_l1)
            entry["status"] = "ok"
            mlflow.set_tag("dvc_exp_rev", entry["rev"])
            mlflow.log_metrics(entry["measures"], step=0)
    except Exception as err:  # noqa: BLE001 - a broken arm must not stop the others; its pairs show as missing
        entry["error"] = f"{type(err).__name__}: {err}"
    finally:  # also on Ctrl-C, so the parent run is the one pipeline_group ends next
        if entry["error"]:
            mlflow.set_tag("error", entry["error"][-5000:])
            print(f"=== {run.experiment} failed: {entry['error']}", flush=True)
        mlflow.end_run("FINISHED" if entry["status"] == "ok" else "FAILED")
    return entry


def log_results(results: list[ClaimResult], files: list[Path], reports: Path) -> None:
    """The report, figures and measurements as artefacts of the parent run; verdicts as tags and metrics."""
    import mlflow

    for path in [*files, reports / MEASUREMENTS]:
        mlflow.log_artifact(str(path), artifact_path="claims")
    codes = {"agrees": 1, "inconclusive": 0, "disagrees": -1}
    for result in results:
        mlflow.set_tag(f"claim.{result.key}.verdict", result.verdict)
        mlflow.log_metric(f"claim.{result.key}.verdict", codes[result.verdict], step=0)
        for row in result.rows:
            if row.headline and row.advantage is not None:
                mlflow.log_metric(f"claim.{result.key}.{row.measure}.advantage", row.advantage, step=0)
            if row.headline and row.noise_value is not None:
                mlflow.log_metric(f"claim.{result.key}.{row.measure}.noise", row.noise_value, step=0)


def benchmark_json(root: Path) -> dict[str, Any] | None:
    """The checkout's encoder benchmark (Table 3), if it has one."""
    dvc_yaml = (root / "dvc.yaml").read_text()
    path = root / stage_arguments(dvc_yaml, "benchmark_encoders")["--metrics"]
    return json.loads(path.read_text()) if path.is_file() else None


def run_claims(profile_path: Path, params_path: Path, reports: Path, force: bool = False) -> None:
    """Run every arm with `params_path` as the experiments' params.yaml, and write the report into `reports`; exits
    1 (after the report) when an arm failed. `force` retrains stages DVC's run cache would restore
    (pipeline/claims/experiments.dvc_command)."""
    import mlflow

    profile = load_profile(profile_path)
    check_overrides(arm_runs(profile, "claims-check"), params_path)  # before any run or MLflow entry
    root = repo_root()
    experiment = load_params(params_path, "tracking")["tracking"].experiment
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(f"warning: load average {load:.1f}: other processes are using the CPU. The stages use every core, and "
              "sharing them costs far more than a share (LiteVAE-B pretraining took 35 s/step beside one busy "
              "process on 2 cores, against ~2.4 s estimated on idle ones); the report records the load.", flush=True)
    started = time.perf_counter()
    with pipeline_group(experiment, name="claims") as group_env:
        group, parent = group_env[GROUP_ENV], group_env[PARENT_RUN_ENV]
        print(f"claims run {group} (MLflow parent run {parent})", flush=True)
        experiment_id = mlflow.get_run(parent).info.experiment_id
        runs = arm_runs(profile, group)
        mlflow.log_params(flatten("budget", dataclasses.asdict(profile.budget)))
        mlflow.log_artifact(str(profile_path), artifact_path="claims")
        record = new_record(profile, runs, group, parent, experiment, benchmark_json(root))
        record["forced"], record["load_average"] = force, [round(load, 2)]
        arms = {entry["name"]: entry for entry in record["arms"]}
        with tempfile.TemporaryDirectory(prefix="litevae-claims-") as tmp:
            own = reports.resolve()  # the report folder's uncommitted files are this command's, not the stages'
            skip = (str(own.relative_to(root)),) if own.is_relative_to(root) else ()
            snapshot = take_snapshot(root, Path(tmp) / "repo", skip, params=params_path)
            record["code"] = {"commit": snapshot.commit, "changes": list(snapshot.changes)}
            logs = Path(tmp) / "logs"
            logs.mkdir()
            for run in runs:
                arms[run.arm.name]["runs"].append(run_arm(run, snapshot, group, experiment_id, logs, force))
                write_json(reports / MEASUREMENTS, record)
        record["finished"] = _now()
        record["load_average"].append(round(os.getloadavg()[0], 2))
        record["wall_minutes"] = (time.perf_counter() - started) / 60
        write_json(reports / MEASUREMENTS, record)
        results = evaluate(record)
        files = write_report(record, results, reports)
        log_results(results, files, reports)
        failed = [run["experiment"] for entry in record["arms"] for run in entry["runs"] if run["status"] != "ok"]
        print(f"\nwrote {', '.join(str(path) for path in files)}", flush=True)
        for result in results:
            print(f"  {result.verdict:>12}  {result.title}", flush=True)
        if failed:
            mlflow.set_tag("error", f"arms failed: {', '.join(failed)}")
            print(f"failed arms: {', '.join(failed)} (see their MLflow runs)", flush=True)
            raise SystemExit(1)  # the parent run ends FAILED


def rerender(reports: Path) -> list[Path]:
    """Rewrite the report and figures from the measurements file alone (after a change to the report code)."""
    record = json.loads((reports / MEASUREMENTS).read_text())
    return write_report(record, evaluate(record), reports)
