"""``python -m pipeline.cli``: the ``fcnpipe`` command."""

from pipeline.cli.main import app

app()
