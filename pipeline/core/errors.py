"""The one base class for errors the user fixes, as opposed to faults in the code or the machine.

A `UserError` (bad params, missing or empty data, a non-finite loss) ends a stage with exit code
`USER_ERROR_EXIT` and its one-line message, no traceback; the Prefect flow never retries it, since running the
same thing again cannot help. Anything else is a fault: a traceback, exit 1, and a retry by the flow.
"""

from __future__ import annotations

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem in the user's params, data or recipe; the message names the file or key and how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """An input a stage needs (shards, a checkpoint, a statistics file) is not there: run the stage that writes it."""
