"""``python -m pipeline.cli``: the ``fcnpipe`` command."""

from pipeline.cli.entry import main

main()
