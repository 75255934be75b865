# Sourced by the scripts/gpu_*.sh runners, from the repository root, with OUT set: installs the carried wheels
# (.whl/: keras, namex, optree), selects Keras on JAX and writes the machine's facts to $OUT/gpu.txt.
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/KneeSegmentation KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
{ date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"; } | tee "$OUT/gpu.txt"
