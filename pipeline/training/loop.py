"""The one training loop every model shares (the VAE stages and `train_ldm`).

The loop owns cadence, timing, checkpoints and resume, the per-step random seed and the final outputs; a model
brings a `Task`: its state, its data stream, one optimisation step, and a look at validation data (STYLE 13).

One meaning for each metric name:
- `train/<name>`: the mean of the step's value over the `log_every` steps of the window, logged at its last step.
- `train/sec_per_step`, `train/images_per_sec`: wall time of the training steps alone (waiting for the batch and
  the step itself), without looks, checkpoints or logging; images are counted over every process.
- `val/<name>`: what `Task.look` measured at that step, on rank 0.

Exact resume. Every `checkpoint_every` steps the whole state (the task's models, EMA, optimisers and schedulers,
the step, the metric history with the sums of the current log window, and the resolved configuration with the
world size) is written atomically to `checkpoints/partial/<stage>.pt`; a run started again with the same
configuration and world size continues from it (another world size splits the batches and random streams
differently). The configuration names the task's inputs by content (`Task.config_dict`: the shards by
`shard_identity`, checkpoints by SHA-256) and its precision, since `checkpoints/partial/` outlives a change
upstream. Nothing in a step depends on what happened outside the steps: torch's global generators are seeded from
(seed, rank, step) and the stream `Stream.GLOBAL` before every step, so building networks, validating or loading
pretrained weights between two steps (all of which draw random numbers) cannot shift the noise of the next one,
and the data stream is a pure function of the batch index (pipeline/data/shards.py). A resumed run therefore
repeats the uninterrupted one tensor for tensor, its logged windows included.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.config.parsing import ConfigError
from pipeline.config.schema import LoopConfig
from pipeline.core.checkpoint import load_checkpoint, save_checkpoint
from pipeline.core.distributed import Distributed, any_rank, barrier
from pipeline.core.errors import UserError
from pipeline.core.files import write_bytes, write_json
from pipeline.core.seeds import Stream, stream_seed
from pipeline.core.tracking import Tracker


class NonFiniteLossError(UserError):
    """Training produced NaN/inf; the last good checkpoint is left untouched."""


@dataclass(frozen=True)
class StageOutputs:
    """Where a training stage writes (rank 0 only)."""

    checkpoint: Path
    metrics: Path
    plots: Path

    @property
    def partial(self) -> Path:
        return self.checkpoint.parent / "partial" / self.checkpoint.name


class Task(Protocol):
    """What a model brings to the loop."""

    images_per_step: int  # per process: the global batch / the number of processes

    def config_dict(self) -> dict:
        """Everything the run's result depends on, its inputs' identities and its precision included; a partial
        checkpoint is resumed only if this matches."""

    def tags(self) -> dict[str, Any]:
        """MLflow tags of what the run trains with, read once a resumed state is loaded."""

    def state_dict(self) -> dict:
        """Models, EMA, optimisers, schedulers and counters (weights_only-loadable)."""

    def load_state_dict(self, state: dict) -> None:
        """The inverse of `state_dict`."""

    def batches(self, start: int) -> Iterator[Any]:
        """The training stream from batch index `start` on: batch i is the same whether or not the run resumed."""

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One optimisation step; returns `train/...` (and `disc/...`) values of this step."""

    def look(self, step: int) -> tuple[dict[str, float], list[Path]]:
        """Rank 0: `val/...` metrics of the model at `step`, and the picture files it wrote (logged per step)."""

    def summary(self, history: dict[str, list[dict]]) -> dict[str, Any]:
        """Rank 0: the task's final metrics for the metrics JSON."""


def per_process_batch(batch_size: int, dist: Distributed, key: str) -> int:
    """Each process's equal share of the global batch `batch_size` (the params key `key`)."""
    if batch_size % dist.world_size:
        raise ConfigError(f"{key}: {batch_size} is the global batch and does not divide evenly over "
                          f"{dist.world_size} processes; pick a multiple of {dist.world_size}")
    return batch_size // dist.world_size


def linear_warmup(steps: int):
    """A LambdaLR factor rising linearly to 1 over `steps` steps (constant 1 when steps is 0)."""
    return lambda step: min(1.0, (step + 1) / steps) if steps else 1.0


def data_parallel(module: nn.Module, dist: Distributed) -> nn.Module:
    """`module` wrapped in DistributedDataParallel under torchrun, else itself."""
    if not dist.enabled:
        return module
    return DistributedDataParallel(module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def check_finite(loss: torch.Tensor, logs: dict, what: str, step: int, dist: Distributed, advice: str) -> None:
    """Raise `NonFiniteLossError` (on every rank alike) before an update on a NaN/inf loss."""
    if any_rank(not bool(torch.isfinite(loss)), dist):
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items())
        raise NonFiniteLossError(f"non-finite {what} loss at step {step} ({terms}). Training stopped before the "
                                 f"update; the last good checkpoint is intact. {advice}")


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Rows of metrics as CSV, one column per key seen in any row ('/' in names becomes '_')."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c.replace("/", "_") for c in columns])
    writer.writeheader()
    for row in rows:
        writer.writerow({k.replace("/", "_"): v for k, v in row.items()})
    write_bytes(path, buffer.getvalue().encode())


@dataclass
class _Window:
    """Sums of the step metrics and the training time since the last log (checkpointed with the state, so a
    resumed run logs the window it was in as the uninterrupted run does)."""

    steps: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self, images_per_step: int) -> dict[str, float]:
        return {**{key: total / self.steps for key, total in self.sums.items()},
                "train/sec_per_step": self.seconds / self.steps,
                "train/images_per_sec": self.steps * images_per_step / self.seconds}


def _resume(partial: Path, config: dict, dist: Distributed) -> dict | None:
    """The partial checkpoint's state if it was written by the run configuration `config`, else None (with a
    note); None on every rank unless it matches on every rank."""
    state = load_checkpoint(partial) if partial.is_file() else None
    if state is not None and state["config"] != config:
        tqdm.write(f"ignoring {partial}: it was written with a different configuration or world size")
        state = None
    return None if any_rank(state is None, dist) else state


def run_training(name: str, task: Task, cfg: LoopConfig, outputs: StageOutputs, tracker: Tracker,
                 dist: Distributed) -> dict[str, Any]:
    """Train `task` for `cfg.steps` steps (resuming its partial checkpoint if one matches); returns the final
    metrics, also written to `outputs.metrics` by rank 0 with the final state at `outputs.checkpoint`."""
    step, history = 0, {"train": [], "val": []}
    config = {**task.config_dict(), "world_size": dist.world_size}
    window = _Window()
    state = _resume(outputs.partial, config, dist)
    if state is not None:
        task.load_state_dict(state)
        step, history, window = int(state["step"]), state["history"], _Window(**state["window"])
        tracker.set_tags({"resumed_from_step": step})
        tqdm.write(f"{name}: resuming from {outputs.partial} at step {step}")
    tracker.set_tags(task.tags())

    def checkpoint() -> dict:
        return {**task.state_dict(), "step": step, "history": history, "window": asdict(window),
                "config": config}

    def look() -> list[Path]:
        metrics, files = task.look(step)
        history["val"].append({"step": step, **metrics})
        tracker.log_metrics(metrics, step=step)
        for path in files:
            tracker.log_artifact(path, artifact_path=f"{path.stem}/step_{step:07d}")
        write_csv(outputs.plots / "losses.csv", history["train"])
        write_csv(outputs.plots / "val.csv", history["val"])
        return files

    images_per_step = task.images_per_step * dist.world_size
    pictures: list[Path] = []
    if dist.is_main and step == 0:
        pictures = look()
    batches = task.batches(step)
    train_seconds = 0.0
    progress = tqdm(total=cfg.steps, initial=step, desc=name, unit="step", disable=not dist.is_main)
    while step < cfg.steps:
        torch.manual_seed(stream_seed(Stream.GLOBAL, cfg.seed, dist.rank, step))
        began = time.perf_counter()
        metrics = task.train_step(next(batches), step)
        seconds = time.perf_counter() - began
        window.add(metrics, seconds)
        train_seconds += seconds
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            logged = window.means(images_per_step)
            history["train"].append({"step": step, **logged})
            tracker.log_metrics(logged, step=step)
            window = _Window()
        if dist.is_main and (step % cfg.val_every == 0 or step == cfg.steps):
            pictures = look()
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            if dist.is_main:
                save_checkpoint(outputs.partial, checkpoint())
            barrier(dist)
    progress.close()

    summary: dict[str, Any] = {}
    if dist.is_main:
        seconds_per_step = sorted(row["train/sec_per_step"] for row in history["train"])
        images_per_sec = sorted(row["train/images_per_sec"] for row in history["train"])
        summary = {
            "steps": step,
            "batch_size": images_per_step,
            "world_size": dist.world_size,
            "sec_per_step": seconds_per_step[len(seconds_per_step) // 2],  # medians over the log windows
            "images_per_sec": images_per_sec[len(images_per_sec) // 2],
            "train_minutes_this_run": train_seconds / 60,
            **task.summary(history),
        }
        if dist.device.type == "cuda":  # rank 0's peak over the run, validation included
            summary["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
        save_checkpoint(outputs.checkpoint, checkpoint())
        outputs.partial.unlink(missing_ok=True)
        write_json(outputs.metrics, summary)
        tracker.log_metrics({f"final/{k}": v for k, v in summary.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)
        for path in (outputs.metrics, outputs.plots / "losses.csv", outputs.plots / "val.csv", *pictures):
            tracker.log_artifact(path)
        tracker.reference_dvc_output("checkpoint", outputs.checkpoint)  # stored once, by DVC
    barrier(dist)
    return summary
