"""The pipeline library: data, training loops, evaluation, tracking and orchestration (does I/O)."""

from pipeline.core.environment import apply_defaults

apply_defaults()
