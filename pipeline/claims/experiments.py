"""One arm at one seed: its `dvc exp run --temp` in the snapshot, and its measures read back from the experiment.

The experiment's stage runs log to the checkout's MLflow store (the temporary clone's own repo root would
otherwise hold it, and vanish with it), nested under `parent_run_id` through the variables of
pipeline/core/tracking.py. Measures are read at the experiment's commit through DVC's file system (the metrics
JSONs from git, checkpoints and shards from the shared DVC cache), with paths taken from the stages' commands in
that commit's dvc.yaml, so nothing here restates where a stage writes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from pipeline.claims.arms import ArmRun
from pipeline.claims.measures import stage_measures
from pipeline.core.errors import UserError
from pipeline.core.tracking import GROUP_ENV, PARENT_RUN_ENV
from pipeline.orchestration.processes import stop_group


def stages_run(run: ArmRun) -> list[str]:
    """The stages whose outputs this arm produces (its targets and their upstream, prepare aside)."""
    stages = ["pretrain_vae"] + (["finetune_vae"] if run.arm.fine_tunes else [])
    return stages + [stage for stage in ("eval_recon", "analyze_latents") if stage in run.arm.targets]


def dvc_command(run: ArmRun, force: bool = False) -> list[str]:
    """`dvc exp run --temp` of the arm. Without `force`, a stage whose code, params and inputs DVC has run before
    is restored from the run cache (the same numbers, in seconds); with it, every stage reruns."""
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", run.experiment, *(["--force"] * force)]
    for item in run.overrides:
        command += ["-S", item]
    return command + list(run.arm.targets)


def child_environment(tracking_uri: str, group: str, parent_run_id: str) -> dict[str, str]:
    """The environment of the experiment's stages: this venv first on PATH (dvc.yaml runs `python`), the
    checkout's MLflow store, and the arm's run as the stage runs' parent."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri, GROUP_ENV: group,
            PARENT_RUN_ENV: parent_run_id}


class ExperimentRun(NamedTuple):
    code: int  # exit code of `dvc exp run`
    seconds: float
    tail: str  # the last lines of its output
    restored: list[str]  # stages DVC restored from its run cache instead of running


RESTORED = re.compile(r"Stage '([\w-]+)' is cached - skipping run")  # DVC's line for a run-cache restore
STOP_GRACE_S = 30.0  # how long an interrupted experiment may take to clean up before it is killed


def run_experiment(run: ArmRun, cwd: Path, env: dict[str, str], log: Path, force: bool = False) -> ExperimentRun:
    """Run the arm's DVC experiment in `cwd`, echoing its output and writing it to `log`."""
    start = time.perf_counter()
    tail: list[str] = []
    restored = []
    command = dvc_command(run, force)
    with log.open("w", encoding="utf-8") as sink:
        sink.write("$ " + shlex.join(command) + "\n")
        # undecodable bytes from a stage are replaced, not raised: reading must not stop while the child runs on
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, encoding="utf-8", errors="replace", bufsize=1, start_new_session=True)
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                sink.write(line)
                tail = (tail + [line.rstrip()])[-20:]
                restored += RESTORED.findall(line)
        except BaseException:  # an error or Ctrl-C here ends the experiment too: no arm runs beside the next one
            # Ctrl-C to `dvc exp run` and its stage, so DVC cleans up as after a Ctrl-C in the terminal
            stop_group(process, STOP_GRACE_S, signal.SIGINT)
            raise
        finally:
            code = process.wait()
            process.stdout.close()
    return ExperimentRun(code, time.perf_counter() - start, "\n".join(tail), restored)


def stage_arguments(dvc_yaml: str, stage: str) -> dict[str, str]:
    """{"--flag": value} of a stage's command in dvc.yaml (e.g. its --metrics and --checkpoint paths)."""
    words = shlex.split(yaml.safe_load(dvc_yaml)["stages"][stage]["cmd"])
    return {word: value for word, value in itertools.pairwise(words) if word.startswith("--")}


def _check_fresh(measures: dict[str, float], run: ArmRun) -> None:
    """The training metrics must be this arm's (steps and batch as set), not a stale file of the baseline."""
    for prefix, section in (("pretrain", "train_128"), ("finetune", "train_256")):
        if f"{prefix}.steps" not in measures:
            continue
        wanted = run.arm.settings[section]
        got = (measures[f"{prefix}.steps"], measures[f"{prefix}.batch_size"])
        if got != (wanted["steps"], wanted["batch_size"]):
            raise UserError(f"{run.experiment}: {prefix} metrics report steps, batch {got}, the arm set "
                            f"{(wanted['steps'], wanted['batch_size'])}; the stage did not run in this experiment")


def collect(root: Path, rev: str, run: ArmRun, hf_error: Callable[[Path, Path, int, int], float]) -> dict[str, Any]:
    """The arm's measures at experiment commit `rev` of the repository at `root`; `hf_error(checkpoint, shards,
    resolution, crops)` measures each training stage's checkpoint (pipeline/claims/hf_error.py)."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(root), rev=rev)
    dvc_yaml = fs.read_text("dvc.yaml")
    measures: dict[str, Any] = {}
    for stage in stages_run(run):
        metrics_path = stage_arguments(dvc_yaml, stage)["--metrics"]
        measures.update(stage_measures(stage, json.loads(fs.read_text(metrics_path))))
    _check_fresh(measures, run)
    with tempfile.TemporaryDirectory(prefix="claims-collect-") as tmp:
        shards = Path(tmp) / "shards"
        fs.get(stage_arguments(dvc_yaml, "pretrain_vae")["--shards"], str(shards), recursive=True)
        for stage, prefix, section in (("pretrain_vae", "pretrain", "train_128"),
                                       ("finetune_vae", "finetune", "train_256")):
            if stage not in stages_run(run):
                continue
            checkpoint = Path(tmp) / f"{stage}.pt"
            fs.get_file(stage_arguments(dvc_yaml, stage)["--checkpoint"], str(checkpoint))
            cfg = run.arm.settings[section]
            measures[f"{prefix}.hf_l1"] = hf_error(checkpoint, shards, cfg["resolution"], cfg["val_images"])
    return measures
