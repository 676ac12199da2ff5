#!/usr/bin/env bash
# Everything a GPU session measures, in one device call (bench/README.md, "On a GPU machine").
# Run from the repository root on the device, after installing the carried wheels; logs go to $OUT.
# Each step has its own time limit, most important first, so that one slow step cannot take the
# whole lease. CamVid is trained only when a packed copy travelled in .data/camvid
# (bench/pack_camvid.py) and CAMVID_STEPS is set.
set -uo pipefail
out=${OUT:-/tmp/fcnpipe-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3
step() {  # step SECONDS LOG COMMAND...: run with a time limit, log to $out/LOG and the terminal
    local limit=$1 log=$2
    shift 2
    echo "== $log ($limit s at most): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$out/gpu.txt"

# --gpus 1 (a Dask worker pinned to the GPU) against the in-process engine, bytes compared.
step 130 scaling-gpu.log $py bench/scaling.py --gpus 1 --fcn8s-size 8192 --tile-size 1024 --block 2
# Throughput and overhead of the engine against the bare network in bf16.
step 110 overhead-bf16.log $py bench/overhead.py --size 9216 --tile-size 1024 --batch-size 4 \
    --device cuda --precision bf16 --repeats 2
# Least-cost tiling (issue 12): fcnpipe with --tile-size auto against MONAI's sliding window on the
# same 8192² scene and model, bf16 (MONAI from the bench group: its wheel must travel too).
step 120 peers-gpu.log $py bench/peers.py --device cuda --size 8192 --methods fcnpipe monai-0.25 whole
# The default model's recipe: what the first run on a fresh GPU machine costs and gives.
$py -m fcnpipe data make synthetic-ortho --out /tmp/synthetic --scenes 12 --size 256 --seed 0
step 130 default.log $py bench/stages.py --dataset synthetic-ortho:/tmp/synthetic --init scratch \
    --recipe default --stages fcn8s --steps 300 --eval-every 75 --device cuda --out /tmp/default
# Training speed (step vs forward) and evaluation speed.
step 50 train.log $py bench/train.py --device cuda --crop 320 --batch-size 8 --size 512 --steps 30 \
    --precision bf16
# fp32 on a smaller scene, for the bf16 speed-up.
step 45 overhead-fp32.log $py bench/overhead.py --size 4096 --tile-size 1024 --batch-size 4 \
    --device cuda --precision fp32 --repeats 1
# Every architecture on the GPU (forward at 2048², rounds of 3 passes), then what each learns from
# the same budget on the synthetic benchmark, when ARCH_STEPS is set (BENCHMARKS.md, issue 11).
step 90 archs.log $py bench/archs.py --device cuda --size 2048 --rounds 1 --repeats 3
if [ -n "${ARCH_STEPS:-}" ]; then
    step 300 archs-train.log $py bench/archs.py --device cuda --no-forward --train-steps "$ARCH_STEPS" \
        --crop 256 --batch-size 8 --scenes 8 --scene-size 512
fi
# The paper's staged training on CamVid.
if [ -d .data/camvid ] && [ -n "${CAMVID_STEPS:-}" ]; then
    step 600 camvid.log $py bench/stages.py --dataset camvid:.data/camvid --init scratch --recipe modern \
        --steps "$CAMVID_STEPS" --device cuda --out /tmp/camvid
fi
