"""Serving a deployment until SIGTERM or SIGINT, then stopping cleanly: the runner first (while the API is still
up), then the `prefect server` that `prefect_api` started, if any."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL, temporary_settings

from pipeline.orchestration.server import prefect_api


def serve(deployment: RunnerDeployment) -> None:
    """Register `deployment` with the Prefect API and run its scheduled runs until SIGTERM or SIGINT."""
    runner: Runner | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        if runner is None:  # still starting the server: unwind, which stops it
            raise SystemExit(128 + signum)
        runner.handle_sigterm()  # Prefect's own shutdown: stop polling, cancel runs, let `start` return

    # SIGINT too, installed explicitly: a background job of a non-interactive shell starts with SIGINT ignored,
    # and Python then never raises KeyboardInterrupt. (Runner.start re-installs SIGTERM with the same method.)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    # Prefect reads its settings once per process: a late os.environ write would not reach the client, which
    # would then register the deployment on a throwaway ephemeral server instead
    with prefect_api() as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        runner = Runner()
        runner.add_deployment(deployment)
        print(f"serving deployment '{deployment.full_name}' on {api_url}; stop with Ctrl-C or SIGTERM", flush=True)
        asyncio.run(runner.start())
