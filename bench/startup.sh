#!/usr/bin/env bash
# Start-up of `fcnpipe run` on a tiny raster, this checkout against an earlier revision, interleaved.
#
#   bash bench/startup.sh [REVISION] [ROUNDS]      (default: a4d9d65, before the early API; 3)
#
# Both run with this checkout's interpreter on the same 256² scene and a random FCN-8s checkpoint
# (537 MB, so hashing and loading it count as they do for the default model), tile 512, so the
# network sees one 256² tile: what is left is start-up. Prints each wall time and the median ratio.
set -euo pipefail
REV=${1:-a4d9d65}
ROUNDS=${2:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY="$HERE/.venv/bin/python"
WORK=$(mktemp -d)
trap 'git -C "$HERE" worktree remove --force "$WORK/before" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git -C "$HERE" worktree add -q "$WORK/before" "$REV"
(cd "$HERE" && "$PY" -m fcnpipe weights init --arch fcn8s --classes 6 --random --out "$WORK/fcn8s.pt" >/dev/null)
(cd "$HERE" && "$PY" -m fcnpipe data scene --out "$WORK/tiny.tif" --size 256 >/dev/null)
ARGS=(run flows/segment_mosaic.py --input "$WORK/tiny.tif" --weights "$WORK/fcn8s.pt" --tile-size 512
      --overwrite --output "$WORK/out.zarr")
# The earlier revision's own entry point (the CLI app), this one's (which starts the API first).
declare -A DIR=([before]="$WORK/before" [after]="$HERE")
declare -A CODE=([before]="from fcnpipe.main import app; app()" [after]="from fcnpipe.entry import main; main()")
for _ in $(seq "$ROUNDS"); do
  for which in before after; do
    start=$(date +%s.%N)
    (cd "${DIR[$which]}" && "$PY" -c "${CODE[$which]}" "${ARGS[@]}" >/dev/null 2>&1)
    echo "$which $(echo "$(date +%s.%N) - $start" | bc)"
  done
done | tee "$WORK/times"
"$PY" - "$WORK/times" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    which, seconds = line.split()
    times.setdefault(which, []).append(float(seconds))
before, after = statistics.median(times["before"]), statistics.median(times["after"])
print(f"median: before {before:.1f} s, after {after:.1f} s, after/before {after / before:.2f}")
PY
