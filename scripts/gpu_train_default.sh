#!/usr/bin/env bash
# The default model's training recipe on a lent GPU machine (Keras on the JAX backend; the bundle's
# .keras weights load unchanged with TensorFlow afterwards). Run from the repository root with the
# label-map cache in .cache/labelmaps and wheels for keras (+namex, optree) in .whl/ (see docs/training.md).
# Writes the bundle, the training log and a network-throughput benchmark to $OUT (or ./gpu-out).
# TRAIN_ARGS adds kneeseg train flags, e.g. TRAIN_ARGS="--context-slices 1" for a 2.5D network from scratch.
set -euo pipefail
OUT=${OUT:-gpu-out}
MINUTES=${MINUTES:-7}
source scripts/gpu_setup.sh
python3 -m kneeseg train --synthetic .cache/labelmaps -o "$OUT/bundle" --work /tmp/work \
    --name knee-bones-default --filters 32 --depth 4 --planes sagittal,coronal,axial --loss dice+ce \
    --batch-size 32 --epochs 24 --steps-per-epoch 150 --validation-steps 10 --patience 12 \
    --workers "$(($(nproc) - 1))" --multiprocessing --time-limit-min "$MINUTES" --seed 0 --no-onnx \
    ${TRAIN_ARGS:-} --progress json > "$OUT/train.log" 2> "$OUT/train.err" || { tail -30 "$OUT/train.err"; exit 1; }
tail -c 600 "$OUT/train.log"
python3 scripts/gpu_throughput.py "$OUT/bundle" | tee "$OUT/gpu_bench.txt"
