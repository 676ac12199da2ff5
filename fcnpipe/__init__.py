"""The command-line face: the ``fcnpipe`` app, flow files, typed configs, inputs and weights."""
