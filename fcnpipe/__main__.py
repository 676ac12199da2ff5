"""``python -m fcnpipe``: the ``fcnpipe`` command."""

from fcnpipe.entry import main

main()
