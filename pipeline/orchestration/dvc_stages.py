"""DVC's side of the flow: the stage graph, whether a stage is stale, and one `dvc repro --single-item`.

The graph and the staleness come from DVC's own API (`dvc.repo.Repo`), never from reading dvc.yaml by hand or
from DVC's English output, so they follow DVC's rules exactly (a dep inside an output folder, params, frozen
stages, changed commands). The scope is the stages of the root dvc.yaml, the one definition of this pipeline.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path

from dvc.repo import Repo
from dvc.stage import PipelineStage

from pipeline.config.parsing import ConfigError
from pipeline.orchestration.processes import stop_group

TAIL_LINES = 200  # output lines kept for the failure message
STOP_SECONDS = 10  # grace for a stage interrupted by a cancelled or stopped flow run
# DVC exits 255 whatever the failed command returned; the command's own status is only in the message of
# dvc.stage.exceptions.StageCmdFailedError ("failed to run: CMD, exited with N"), DVC's last error line.
_COMMAND_STATUS = re.compile(r"failed to run: .*, exited with (-?\d+)\s*$")


def stage_graph(root: Path) -> dict[str, set[str]]:
    """{stage: the stages it depends on} for the stages of `root`/dvc.yaml, from DVC's stage graph (whose edges
    run from a stage to the stages whose outputs it depends on)."""
    dvc_yaml = str(Path(root).resolve() / "dvc.yaml")
    with Repo(str(root)) as repo:
        graph = repo.index.graph
        ours = {stage for stage in graph if isinstance(stage, PipelineStage) and stage.path == dvc_yaml}
        return {stage.name: {upstream.name for upstream in graph.successors(stage) if upstream in ours}
                for stage in ours}


def execution_order(graph: dict[str, set[str]], targets: list[str] | None) -> list[str]:
    """The targets and everything upstream of them, in dependency order (all stages if no targets)."""
    unknown = sorted(set(targets or []) - set(graph))
    if unknown:
        raise ConfigError(f"targets: unknown stages {unknown}; dvc.yaml defines {sorted(graph)} (a scheduled run "
                          "takes its targets from schedule.targets in params.yaml when the schedule was registered)")
    needed, frontier = set(), list(targets or graph)
    while frontier:
        stage = frontier.pop()
        if stage not in needed:
            needed.add(stage)
            frontier.extend(graph[stage])
    return [s for s in TopologicalSorter(graph).static_order() if s in needed]


def is_stale(root: Path, stage: str) -> bool:
    """Whether `dvc repro` would reproduce `stage` now: DVC's status of it lists a changed dep, param, out or
    command (the same checks `Stage.reproduce` makes before skipping a stage)."""
    with Repo(str(root)) as repo:
        return bool(repo.status(targets=[f"{Path(root).resolve() / 'dvc.yaml'}:{stage}"]))


def dvc_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment DVC runs in: this process's plus `extra`, with this interpreter's folder first on PATH,
    so that dvc.yaml's `python -m stages.X` runs in this interpreter's venv even when the venv is not activated
    (`.venv/bin/python -m pipeline.orchestration.flow serve`), and with unbuffered Python output, so that stage
    output reaches the task logs as it is printed rather than when the stage ends."""
    path = os.pathsep.join(filter(None, [os.path.dirname(sys.executable), os.environ.get("PATH")]))
    return {**os.environ, **extra, "PATH": path, "PYTHONUNBUFFERED": "1"}


@dataclass
class StageRun:
    """How one `dvc repro --single-item` ended: DVC's exit code and the last lines of its (and the stage's) output."""

    returncode: int
    tail: list[str]

    @property
    def command_status(self) -> int | None:
        """The exit status of the stage's own command when that is what failed, else None."""
        for line in reversed(self.tail):
            match = _COMMAND_STATUS.search(line)
            if match:
                return int(match.group(1))
        return None


def reproduce(root: Path, stage: str, env: Mapping[str, str], log: Callable[[str], None]) -> StageRun:
    """Run `python -m dvc repro --single-item STAGE` in `root`, passing each line of its merged stdout and stderr
    to `log` as it arrives.

    A subprocess rather than `Repo.reproduce` in this process: the stage's output arrives on a pipe that can be
    read line by line (in-process, the stage would inherit this process's stdout), DVC takes its repository lock
    and signal handling exactly as on the command line, and DVC's cache and dvc.lock stay the source of truth.
    Its own session lets an interrupted flow run stop DVC and the stage together.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=root, env=dict(env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True) as process:
        try:
            # Only "\n" ends a line; of a line that a progress bar redrew with "\r", its final state is kept.
            for raw in io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace", newline="\n"):
                line = raw.rstrip("\r\n").rsplit("\r", 1)[-1]
                tail.append(line)
                log(line)
        except BaseException:  # cancelled, interrupted, or the logger failed: leave no DVC holding the repo lock
            stop_group(process, STOP_SECONDS)
            raise
    return StageRun(process.returncode, list(tail))
