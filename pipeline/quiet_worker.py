"""A Dask preload for the worker processes of a local cluster: Ctrl-C belongs to the command.

A terminal sends Ctrl-C to its whole foreground process group, the worker processes a local
cluster started included; each would die at once, printing a page of traceback. The command
itself stops the run (pipeline/stopping.py) and closes its cluster, which ends the workers.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (called by Dask as the worker starts, in its main thread)."""
    with contextlib.suppress(ValueError):  # not the main thread: a worker inside the command's process
        signal.signal(signal.SIGINT, signal.SIG_IGN)
