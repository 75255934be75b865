#!/usr/bin/env bash
# One fine-tune of the default model (scripts/train_default.py ROUND, docs/training.md) on a lent GPU machine:
# Keras on the JAX backend, 15 synthesis processes, stopping after the epoch that crosses MINUTES. Run from the
# repository root with the label-map cache in .cache/labelmaps and wheels for keras (+namex, optree) in .whl/, made
# on a machine with PyPI for the GPU machine's Python (3.12 there on 2026-12-04):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#   OUT=gpu-out MINUTES=6.8 bash scripts/gpu_fine_tune.sh round22
# Writes to $OUT (or ./gpu-out): ROUND.tar.gz (the best-epoch bundle, and the work folder whose checkpoint a later
# run continues from: unpack it into build/ and run this again with build/ROUND.work there), train.log, gpu.txt
# (the machine) and gpu_bench.txt (network throughput of the shipped model and of ROUND on this GPU).
set -euo pipefail
ROUND=${1:?usage: gpu_fine_tune.sh ROUND (a fine-tune of scripts/train_default.py, e.g. round22)}
OUT=${OUT:-gpu-out}
MINUTES=${MINUTES:-6.8}
mkdir -p build
source scripts/gpu_setup.sh
started=$(date +%s)
status=0
python3 scripts/train_default.py "$ROUND" --cache .cache/labelmaps --out "build/$ROUND" --work "build/$ROUND.work" \
    --time-limit-min "$MINUTES" > "$OUT/train.log" 2>&1 || status=$?
echo "training: exit $status, $(( $(date +%s) - started )) s wall" | tee -a "$OUT/gpu.txt"
tail -c 1200 "$OUT/train.log"
[ -d "build/$ROUND.work" ] && tar czf "$OUT/$ROUND.tar.gz" -C build "$ROUND.work" $( [ -d "build/$ROUND" ] && echo "$ROUND" )
[ -f "build/$ROUND.work/history.csv" ] && tail -n 40 "build/$ROUND.work/history.csv" | cut -c1-200
[ "$status" = 0 ] || exit "$status"
python3 scripts/gpu_throughput.py KneeSegmentation/Resources/Models/knee-bones-default "build/$ROUND" --seconds 3 \
    | tee "$OUT/gpu_bench.txt"
