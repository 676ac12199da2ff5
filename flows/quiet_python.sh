#!/bin/sh
# The Python of a served flow's runs (flows/serving.py). It starts with SIGINT blocked (a blocked
# signal stays blocked across exec): the terminal's Ctrl-C waits, pending, until the run's flow
# works and listens, so a run never dies with a traceback while it starts up or exits.
exec "$FCNPIPE_RUN_PYTHON" -c 'import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])' "$@"
