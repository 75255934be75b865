#!/usr/bin/env bash
# Round 21 of the default model (scripts/train_default.py round21, docs/training.md) on a lent GPU machine:
# Keras on the JAX backend, 15 synthesis processes, stopping after the epoch that crosses MINUTES. Run from the
# repository root with the label-map cache in .cache/labelmaps and wheels for keras (+namex, optree) in .whl/, made
# on a machine with PyPI for the GPU machine's Python (3.12 there on 2026-12-04):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
# Writes to $OUT (or ./gpu-out): round21.tar.gz (the best-epoch bundle, and the work folder whose checkpoint a
# later run continues from: unpack it into build/ and run this again with build/round21.work there), train.log,
# gpu.txt (the machine) and gpu_bench.txt (network throughput of the shipped model and of round 21 on this GPU).
set -euo pipefail
OUT=${OUT:-gpu-out}
MINUTES=${MINUTES:-6.8}
mkdir -p build
source scripts/gpu_setup.sh
started=$(date +%s)
status=0
python3 scripts/train_default.py round21 --cache .cache/labelmaps --out build/round21 --work build/round21.work \
    --time-limit-min "$MINUTES" > "$OUT/train.log" 2>&1 || status=$?
echo "training: exit $status, $(( $(date +%s) - started )) s wall" | tee -a "$OUT/gpu.txt"
tail -c 1200 "$OUT/train.log"
[ -d build/round21.work ] && tar czf "$OUT/round21.tar.gz" -C build round21.work $( [ -d build/round21 ] && echo round21 )
[ -f build/round21.work/history.csv ] && tail -n 40 build/round21.work/history.csv | cut -c1-200
[ "$status" = 0 ] || exit "$status"
python3 scripts/gpu_throughput.py KneeSegmentation/Resources/Models/knee-bones-default build/round21 --seconds 3 \
    | tee "$OUT/gpu_bench.txt"
