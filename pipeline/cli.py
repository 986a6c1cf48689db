"""What every stage CLI shares: the `--params` argument and clean exits on user errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.config import ConfigError


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; configuration and input errors exit 2 with one clear line, not a traceback."""
    try:
        main()
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
