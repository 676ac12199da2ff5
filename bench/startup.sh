#!/usr/bin/env bash
# Start-up of the command line, side by side in one run, this checkout (issue 20):
#
#   bash bench/startup.sh [ROUNDS]          (default 5)
#
# Each answer's median wall time over ROUNDS, interleaved, and its ratio to the baseline
# `python -c "import typer, pydantic"` (the front door's target: within 3x). Then a 256² run with
# given weights, the demonstration model (fcn8s-demo, 4.5 MB) and a random FCN-8s (537 MB, so
# hashing and loading it count as they do for a real model): the first run of a fresh fcnpipe home
# (it starts the kept local Prefect API and, when it ends, the warm runner), then, alternating, runs
# through the warm runner and runs in their own process (FCNPIPE_WARM=0), both against the kept
# API. State the machine's load beside the figures.
set -euo pipefail
ROUNDS=${1:-5}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY="$HERE/.venv/bin/python"
WORK=$(mktemp -d)
export FCNPIPE_HOME="$WORK/home"
unset PREFECT_API_URL
trap '"$PY" -m fcnpipe api stop >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
cd "$HERE"
"$PY" -m fcnpipe weights init --arch fcn8s --classes 6 --random --out "$WORK/fcn8s.pt" >/dev/null
"$PY" -m fcnpipe weights init --arch fcn8s-demo --classes 6 --random --out "$WORK/demo.pt" >/dev/null
"$PY" -m fcnpipe data scene --out "$WORK/tiny.tif" --size 256 >/dev/null
touch "$WORK/file"
M=flows/segment_mosaic.py
declare -a NAMES=(baseline help flow-help typo bad-value missing-input unwritable-output)
declare -A CMD=(
  [baseline]="$PY -c 'import typer, pydantic'"
  [help]="$PY -m fcnpipe --help"
  [flow-help]="$PY -m fcnpipe run $M --help"
  [typo]="$PY -m fcnpipe run $M --input $WORK/tiny.tif --tile-sise 512"
  [bad-value]="$PY -m fcnpipe run $M --input $WORK/tiny.tif --tile-size big"
  [missing-input]="$PY -m fcnpipe run $M --input $WORK/none.tif"
  [unwritable-output]="$PY -m fcnpipe run $M --input $WORK/tiny.tif --output $WORK/file/out.zarr"
)
RUN="$PY -m fcnpipe run $M --input $WORK/tiny.tif --tile-size 512 --overwrite --output $WORK/out.zarr --weights"
seconds() { local start; start=$(date +%s.%N); eval "$1" >/dev/null 2>&1 || true; echo "$(date +%s.%N) - $start" | bc; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do echo "$name $(seconds "${CMD[$name]}")"; done
done > "$WORK/times"
echo "first-run-fcn8s $(seconds "$RUN $WORK/fcn8s.pt")" >> "$WORK/times"
for _ in $(seq 600); do  # the warm runner the first run left: ready once it has imported everything
  grep -q '"ready": true' "$FCNPIPE_HOME/warm.json" 2>/dev/null && break
  sleep 0.5
done
for _ in $(seq "$ROUNDS"); do
  for weights in demo fcn8s; do
    echo "warm-run-$weights $(seconds "$RUN $WORK/$weights.pt")" >> "$WORK/times"
    echo "own-process-run-$weights $(seconds "FCNPIPE_WARM=0 $RUN $WORK/$weights.pt")" >> "$WORK/times"
  done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$WORK/times" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    name, value = line.split()
    times.setdefault(name, []).append(float(value))
base = statistics.median(times["baseline"])
for name, values in times.items():
    median = statistics.median(values)
    print(f"{name:18s} median {median:6.2f} s  ({len(values)} runs)  {median / base:5.2f}x the baseline")
PY
