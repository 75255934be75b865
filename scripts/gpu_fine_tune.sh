#!/usr/bin/env bash
# Fine-tunes of the default model (scripts/train_default.py ROUND ..., docs/training.md) on a lent GPU machine, all
# at once: Keras on the JAX backend, the machine's cores but one shared among the runs' synthesis processes, each
# run stopping after the epoch that crosses MINUTES. Several seeds of one recipe in one short device session give
# a weight soup (scripts/train_default.py round38 and its kin) and the recipe's spread (docs/evaluation.md, rounds
# 34-38). Run from the repository root with the label-map cache in .cache/labelmaps and wheels for keras (+namex,
# optree) in .whl/, made on a machine with PyPI for the GPU machine's Python (3.12 there on 2026-12-04):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#   OUT=gpu-out MINUTES=6.8 bash scripts/gpu_fine_tune.sh round22              # one run
#   OUT=gpu-out MINUTES=6.8 bash scripts/gpu_fine_tune.sh round24 round34 round35   # three at once
# Writes to $OUT (or ./gpu-out), per ROUND: ROUND.tar.gz (the best-epoch bundle, and the work folder whose
# checkpoint a later run continues from: unpack it into build/ and run this again with build/ROUND.work there) and
# train_ROUND.log; and gpu.txt (the machine, each run's exit and wall time) and gpu_bench.txt (network throughput of
# the shipped model and of the first ROUND on this GPU).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: gpu_fine_tune.sh ROUND [ROUND ...] (fine-tunes of scripts/train_default.py)" >&2; exit 2; }
OUT=${OUT:-gpu-out}
MINUTES=${MINUTES:-6.8}
WORKERS=$(( ($(nproc) - 1) / $# ))
[ "$WORKERS" -ge 1 ] || WORKERS=1
mkdir -p build
source scripts/gpu_setup.sh
started=$(date +%s)
rounds=("$@")
pids=()
for ROUND in "${rounds[@]}"; do
    python3 scripts/train_default.py "$ROUND" --cache .cache/labelmaps --out "build/$ROUND" --work "build/$ROUND.work" \
        --time-limit-min "$MINUTES" --workers "$WORKERS" > "$OUT/train_$ROUND.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    ROUND=${rounds[$i]}
    run=0
    wait "${pids[$i]}" || run=$?
    [ "$run" = 0 ] || status=$run
    echo "training $ROUND: exit $run, $(( $(date +%s) - started )) s wall, $WORKERS synthesis workers" | tee -a "$OUT/gpu.txt"
    tail -c 600 "$OUT/train_$ROUND.log"
    [ -d "build/$ROUND.work" ] && tar czf "$OUT/$ROUND.tar.gz" -C build "$ROUND.work" $( [ -d "build/$ROUND" ] && echo "$ROUND" )
    [ -f "build/$ROUND.work/history.csv" ] && tail -n 20 "build/$ROUND.work/history.csv" | cut -c1-200
done
[ "$status" = 0 ] || exit "$status"
python3 scripts/gpu_throughput.py KneeSegmentation/Resources/Models/knee-bones-default "build/$1" --seconds 3 \
    | tee "$OUT/gpu_bench.txt"
