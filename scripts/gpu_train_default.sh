#!/usr/bin/env bash
# The default model's training recipe on a lent GPU machine (Keras on the JAX backend; the bundle's
# .keras weights load unchanged with TensorFlow afterwards). Run from the repository root with the
# label-map cache in .cache/labelmaps and wheels for keras (+namex, optree) in .whl/ (see docs/training.md).
# Writes the bundle, the training log and a network-throughput benchmark to $OUT (or ./gpu-out).
# TRAIN_ARGS adds kneeseg train flags, e.g. TRAIN_ARGS="--context-slices 1" for a 2.5D network from scratch.
set -euo pipefail
OUT=${OUT:-gpu-out}
MINUTES=${MINUTES:-7}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/KneeSegmentation KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m kneeseg train --synthetic .cache/labelmaps -o "$OUT/bundle" --work /tmp/work \
    --name knee-bones-default --filters 32 --depth 4 --planes sagittal,coronal,axial --loss dice+ce \
    --batch-size 32 --epochs 24 --steps-per-epoch 150 --validation-steps 10 --patience 12 \
    --workers "$(($(nproc) - 1))" --multiprocessing --time-limit-min "$MINUTES" --seed 0 --no-onnx \
    ${TRAIN_ARGS:-} --progress json > "$OUT/train.log" 2> "$OUT/train.err" || { tail -30 "$OUT/train.err"; exit 1; }
tail -c 600 "$OUT/train.log"
python3 - "$OUT/bundle" <<'PY' | tee "$OUT/gpu_bench.txt"
import sys, time, numpy as np, keras
model = keras.models.load_model(f"{sys.argv[1]}/model.keras", compile=False)
for batch in (8, 80):
    x = np.random.rand(batch, *model.inputs[0].shape[1:]).astype("float32")  # 2.5D: more channels
    keras.ops.convert_to_numpy(model(x))  # compile
    t = time.perf_counter(); n = 0
    while time.perf_counter() - t < 5:
        keras.ops.convert_to_numpy(model(x)); n += batch
    print(f"inference batch {batch}: {n / (time.perf_counter() - t):.0f} slices/s")
PY
