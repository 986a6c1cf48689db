"""The `prefect server` that `serve` starts when no API is configured: it binds the host, port and dashboard
setting the user gave Prefect (environment or profile), 127.0.0.1:4200 with the dashboard by Prefect's defaults."""

import subprocess

import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_API_HOST,
    PREFECT_SERVER_API_PORT,
    PREFECT_UI_ENABLED,
    temporary_settings,
)

from pipeline.orchestration import server as server_module


@pytest.fixture
def started(monkeypatch):
    """What `prefect_api` starts and waits for, recorded instead of run: [(command, env, health-checked URL)]."""
    calls = []
    real_popen = subprocess.Popen

    def popen(command, env, start_new_session):
        calls.append({"command": command, "env": env})
        return real_popen(["true"], start_new_session=start_new_session)  # its own group, which stop_group ends

    monkeypatch.setattr(server_module.subprocess, "Popen", popen)
    monkeypatch.setattr(server_module, "_wait_until_healthy", lambda url, server: calls[-1].update(url=url))
    return calls


def _start() -> str:
    with server_module.prefect_api() as api_url:
        return api_url


def test_the_users_host_and_dashboard_setting_win(started):
    updates = {PREFECT_API_URL: None, PREFECT_SERVER_API_HOST: "0.0.0.0", PREFECT_SERVER_API_PORT: 4311,
               PREFECT_UI_ENABLED: False}
    with temporary_settings(updates=updates):
        api_url = _start()
    (call,) = started
    assert call["command"][-4:] == ["--host", "0.0.0.0", "--port", "4311"]
    assert call["env"]["PREFECT_UI_ENABLED"] == "false"
    assert api_url == call["url"] == "http://127.0.0.1:4311/api"  # a wildcard bind is reached on loopback


def test_by_default_it_binds_loopback_with_the_dashboard(started):
    defaults = [PREFECT_API_URL, PREFECT_SERVER_API_HOST, PREFECT_SERVER_API_PORT, PREFECT_UI_ENABLED]
    with temporary_settings(restore_defaults=defaults):
        api_url = _start()
    (call,) = started
    assert call["command"][-4:] == ["--host", "127.0.0.1", "--port", "4200"]
    assert call["env"]["PREFECT_UI_ENABLED"] == "true"
    assert api_url == "http://127.0.0.1:4200/api"
