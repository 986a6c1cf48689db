"""The pipeline library: data, training loops, evaluation, tracking and orchestration (does I/O)."""

from pipeline.environment import apply_defaults

apply_defaults()
