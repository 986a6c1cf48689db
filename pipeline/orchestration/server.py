"""The Prefect API a served deployment registers with: the user's, else a `prefect server` started for the while.

Scheduling needs a real server: Prefect's ephemeral mode refuses cron schedules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import get_current_settings

from pipeline.orchestration.processes import stop_group

SERVER_START_SECONDS = 90
SERVER_STOP_SECONDS = 5


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yields the URL of the Prefect API to use: the configured one (PREFECT_API_URL in the environment or in the
    active Prefect profile) when there is one; else that of a `prefect server` started here, stopped when the
    block ends. It binds PREFECT_SERVER_API_HOST:PREFECT_SERVER_API_PORT (Prefect's defaults: 127.0.0.1:4200) and
    serves the dashboard unless PREFECT_UI_ENABLED is false: the user's settings, from the environment or the
    active profile, as Prefect resolves them."""
    settings = get_current_settings()
    if settings.api.url:
        yield settings.api.url
        return
    host, port = settings.server.api.host, settings.server.api.port
    api_url = f"http://{_client_host(host)}:{port}/api"
    # In its own session, so that a Ctrl-C or SIGTERM to the terminal's process group reaches only `serve`,
    # which shuts its runner down while the API is still up (it pauses the schedule there) and only then stops
    # the server with everything it started; a server stopping at the same time cuts the runner's websocket.
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
                              env={**os.environ, "PREFECT_UI_ENABLED": str(settings.server.ui.enabled).lower()},
                              start_new_session=True)
    try:
        _wait_until_healthy(api_url, server)
        yield api_url
    finally:
        stop_group(server, SERVER_STOP_SECONDS)


def _client_host(host: str) -> str:
    """The address this process reaches a server bound to `host` at: loopback for a wildcard address, IPv6
    literals bracketed."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _wait_until_healthy(api_url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{api_url}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server did not become healthy at {api_url} within {SERVER_START_SECONDS} s "
                       f"(port taken? set PREFECT_SERVER_API_PORT, or PREFECT_API_URL to a running server)")
