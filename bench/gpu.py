"""GPU numbers of the default U-Net: inference per volume and training slices/s -> benchmarks-gpu.json.

    KERAS_BACKEND=jax python bench/gpu.py --out docs/benchmarks-gpu.json

Runs on any Keras 3 backend (the lent GPU machines carry JAX and PyTorch but no TensorFlow, so the
recorded numbers name the backend). Needs only keras and numpy (no SimpleITK): the network, the
project's training loop (``train.fit`` with a batch source) and a plain ``model.fit`` on arrays.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "KneeSegmentation"))

import numpy as np  # noqa: E402


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def card_name():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sync(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def inference(precision, batch, repeats=5):
    import keras

    from kneeseg.model import build_unet_2d

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    model = build_unet_2d()
    keras.config.set_dtype_policy("float32")
    rows = []
    rng = np.random.default_rng(0)
    for n in (24, 80, 312):  # 312: the slices of a 3-plane DESS 512x512x80 run (with the centre pass)
        x = rng.standard_normal((n, 224, 224, 1)).astype(np.float32)

        def run():
            for s in range(0, n, batch):
                _sync(model.predict_on_batch(x[s:s + batch]))

        t = time.perf_counter()
        run()
        first = time.perf_counter() - t
        seconds = _median_time(run, repeats)
        rows.append({"precision": precision, "batch": batch, "slices": n, "first_s": round(first, 3),
                     "seconds": round(seconds, 4), "slices_per_s": round(n / seconds, 1)})
        print(rows[-1], flush=True)
    return rows


class _RandomSource:
    """A batch source like the project's (``__len__``, ``batch(i)``, ``on_epoch_end``), random slices."""

    def __init__(self, steps, batch, seed=0):
        self.steps, self.batch_size, self.seed, self.epoch = steps, batch, seed, 0

    def __len__(self):
        return self.steps

    def batch(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return (rng.standard_normal((self.batch_size, 224, 224, 1)).astype(np.float32),
                rng.integers(0, 5, (self.batch_size, 224, 224)).astype(np.uint8))

    def on_epoch_end(self):
        self.epoch += 1


def training(loop, precision, batch, steps):
    import keras

    from kneeseg import train
    from kneeseg.labels import SEPARATE_BONES

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    config = train.TrainConfig.from_flat(epochs=3, steps_per_epoch=steps, validation_steps=1, batch_size=batch, patience=99,
                               planes=("sagittal",))
    ends = []
    start = time.perf_counter()
    if loop == "project":
        with tempfile.TemporaryDirectory() as tmp:
            train.fit(config, SEPARATE_BONES, _RandomSource(steps, batch), _RandomSource(1, batch, seed=1), tmp,
                      lambda stage, fraction, message, **extra: ends.append(time.perf_counter())
                      if stage == "epoch" else None)
    else:
        model = train.build_and_compile(config, SEPARATE_BONES)
        source = _RandomSource(steps, batch)
        x = np.concatenate([source.batch(i)[0] for i in range(steps)])
        y = np.concatenate([source.batch(i)[1] for i in range(steps)])

        class Clock(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                ends.append(time.perf_counter())

        model.fit(x, y, batch_size=batch, epochs=3, validation_data=(x[:batch], y[:batch]), verbose=0,
                  callbacks=[Clock()])
    keras.config.set_dtype_policy("float32")
    epochs = np.diff([start] + ends)
    row = {"loop": loop, "precision": precision, "batch": batch, "steps_per_epoch": steps,
           "epoch_s": [round(float(e), 2) for e in epochs],
           "slices_per_s": round(steps * batch / float(np.median(epochs[1:])), 1)}
    print(row, flush=True)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks-gpu.json")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import keras

    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "card": card_name(), "keras": keras.__version__,
              "backend": keras.backend.backend(), "python": sys.version.split()[0]}
    if result["backend"] == "jax":
        import jax

        result["jax"] = jax.__version__
        result["devices"] = [str(d) for d in jax.devices()]
    print(result, flush=True)
    steps = 4 if args.quick else args.steps
    result["inference"] = []
    for precision in ("float32", "bfloat16"):
        result["inference"] += inference(precision, batch=32, repeats=2 if args.quick else 5)
    result["training"] = []
    for loop, precision, batch in (("plain", "float32", 8), ("project", "float32", 8), ("plain", "bfloat16", 8),
                                   ("project", "bfloat16", 8), ("plain", "bfloat16", 32)):
        try:
            result["training"].append(training(loop, precision, batch, steps))
        except Exception as exc:  # noqa: BLE001 - record and go on to the next configuration
            result["training"].append({"loop": loop, "precision": precision, "batch": batch,
                                       "error": f"{type(exc).__name__}: {exc}"})
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
