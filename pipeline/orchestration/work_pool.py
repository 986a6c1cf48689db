"""Deploying the flow to a Prefect work pool: its runs are executed by `prefect worker start --pool NAME` processes
(on this machine, or on any machine that sees the checkout at the same path), not by the process that registered
it, and the deployment outlives that process, unlike `serve`'s.

The deployment's code is the checkout itself (Prefect's local storage): a worker runs each flow run in a new process
with its working directory set to the checkout, where the flow's stages run through DVC as in any other flow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from pipeline.core.errors import UserError


def deploy_to_pool(root: Path, entrypoint: str, pool: str, name: str, **deployment: Any) -> UUID:
    """Register the flow at `entrypoint` (`path/in/root.py:function`) of the checkout `root` as deployment `name` on
    the work pool `pool` of the configured Prefect server; `deployment` holds `Flow.deploy`'s other arguments
    (schedules, parameters, description). Returns the deployment's id."""
    api_url = get_current_settings().api.url
    if not api_url:  # else Prefect would register it on a temporary server that is gone when this process ends
        raise UserError("deploying to a work pool needs a running Prefect server: start one with `prefect server "
                        "start --host 127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise UserError(f"work pool '{pool}' does not exist on {api_url}; create it with "
                            f"`prefect work-pool create {pool} --type process`") from None
    source_flow = flow.from_source(str(root.resolve()), entrypoint)
    return source_flow.deploy(name=name, work_pool_name=pool, ignore_warnings=True, **deployment)
