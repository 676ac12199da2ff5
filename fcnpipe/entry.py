"""The ``fcnpipe`` executable."""

from __future__ import annotations


def main() -> None:
    """The command line (``fcnpipe.main``); it imports torch and Prefect only for what needs them."""
    from fcnpipe.main import app

    app()
