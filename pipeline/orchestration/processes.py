"""Child processes that can be stopped as a whole: each is started in its own session (`start_new_session=True`),
so that one signal to its process group reaches it and everything it started, and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress


def stop_group(process: subprocess.Popen, grace_seconds: float, first: signal.Signals = signal.SIGTERM) -> None:
    """`first` (SIGTERM) to the process group led by `process`; once the leader has exited, or `grace_seconds` have
    passed, SIGKILL to whatever is left of the group (the leader, or members that outlived it)."""
    with suppress(ProcessLookupError):  # the group has exited already
        os.killpg(process.pid, first)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
