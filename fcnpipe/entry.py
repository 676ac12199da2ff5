"""The ``fcnpipe`` executable: a run's Prefect API starts booting before the heavy imports."""

from __future__ import annotations

import sys


def starts_a_flow(args: list[str]) -> bool:
    """Whether these words run a flow (``run FLOW …`` without ``--help``)."""
    return len(args) >= 2 and args[0] == "run" and not {"--help", "-h"} & set(args)


def main() -> None:
    """Start the embedded Prefect API for ``fcnpipe run`` (unless one is configured), then the CLI.

    The server process boots on another core while this one imports torch and Prefect: about
    half of a small run's start-up (BENCHMARKS.md, "Start-up on a tiny raster").
    """
    if starts_a_flow(sys.argv[1:]):
        from flows.api import configured_api, launch_api

        if not configured_api():
            launch_api()
    from fcnpipe.main import app

    app()
