"""What every stage CLI shares: the `--params` argument, and user errors as one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipeline.core.errors import USER_ERROR_EXIT, UserError


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def exit_on_user_error(main: Callable[[], None]) -> None:
    """Run a stage's `main`; a `UserError` prints `error: <message>` and exits 2 (faults keep their traceback)."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None
