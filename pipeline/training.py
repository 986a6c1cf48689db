"""What the training stages share: where a stage writes, resuming its partial checkpoint, the non-finite-loss
error, the warm-up schedule and the CSV curves DVC plots."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from pipeline.checkpoint import load_checkpoint
from pipeline.files import write_bytes
from pipeline.tracking import Tracker


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the last good checkpoint is left untouched."""


@dataclass
class StageOutputs:
    """Where a training stage writes (rank 0 only)."""

    checkpoint: Path
    metrics: Path
    plots: Path

    @property
    def partial(self) -> Path:
        return self.checkpoint.parent / "partial" / self.checkpoint.name


def linear_warmup(steps: int) -> Callable[[int], float]:
    """A LambdaLR factor rising linearly to 1 over `steps` steps (constant 1 when steps is 0)."""
    return lambda step: min(1.0, (step + 1) / steps) if steps else 1.0


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Rows of metrics as CSV, one column per key seen in any row ('/' in names becomes '_')."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c.replace("/", "_") for c in columns])
    writer.writeheader()
    for row in rows:
        writer.writerow({k.replace("/", "_"): v for k, v in row.items()})
    write_bytes(path, buffer.getvalue().encode())


class Resumable(Protocol):
    """What `resume_partial` needs of a trainer."""

    step: int

    def config_dict(self) -> dict: ...

    def resume(self, state: dict) -> None: ...


def resume_partial(trainer: Resumable, partial: Path, tracker: Tracker) -> bool:
    """Resume `trainer` from its stage's partial checkpoint if one exists and was written with the same
    configuration (`config_dict()`); True if it did."""
    if not partial.is_file():
        return False
    state = load_checkpoint(partial)
    if state["config"] != trainer.config_dict():
        tqdm.write(f"ignoring {partial}: it was written with a different configuration")
        return False
    trainer.resume(state)
    tracker.set_tags({"resumed_from_step": trainer.step})
    tqdm.write(f"resuming from {partial} at step {trainer.step}")
    return True
