#!/usr/bin/env bash
# Everything a GPU session measures, in one device call (bench/README.md, "On a GPU machine").
# Run from the repository root on the device, after installing the carried wheels; logs go to $OUT.
# CamVid is trained only when a packed copy travelled in .data/camvid (bench/pack_camvid.py).
set -uo pipefail
out=${OUT:-/tmp/fcnpipe-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$out/gpu.txt"

# Throughput and overhead of the engine against the bare network, bf16 then fp32.
for precision in bf16 fp32; do
    $py bench/overhead.py --size 9216 --tile-size 1024 --batch-size 4 --device cuda \
        --precision "$precision" --repeats 2 2>&1 | tee "$out/overhead-$precision.log"
done
# Training speed (step vs forward) and evaluation speed.
$py bench/train.py --device cuda --crop 320 --batch-size 8 --size 512 --steps 30 --precision bf16 \
    2>&1 | tee "$out/train.log"
# The default model's recipe: what the first run on a fresh GPU machine costs and gives.
$py -m pipeline.cli.main data make synthetic-ortho --out /tmp/synthetic --scenes 12 --size 256 --seed 0
$py bench/stages.py --dataset synthetic-ortho:/tmp/synthetic --init scratch --recipe default \
    --stages fcn8s --steps 300 --eval-every 75 --device cuda --out /tmp/default 2>&1 | tee "$out/default.log"
# The paper's staged training on CamVid.
if [ -d .data/camvid ]; then
    $py bench/stages.py --dataset camvid:.data/camvid --init scratch --recipe modern \
        --steps "${CAMVID_STEPS:-2000}" --device cuda --out /tmp/camvid 2>&1 | tee "$out/camvid.log"
fi
