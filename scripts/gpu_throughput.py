#!/usr/bin/env python3
"""Network inference throughput of model bundles (slices/s at batch 8 and 80), on whatever Keras backend runs.

    python scripts/gpu_throughput.py BUNDLE [BUNDLE ...] [--seconds 5]

The scripts/gpu_*.sh runners call it after training; the input shape is read from each model, so a 2.5D
network is fed its neighbour channels.
"""

import argparse
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per bundle and batch size")
    args = parser.parse_args()
    import keras

    for bundle in args.bundles:
        model = keras.models.load_model(f"{bundle}/model.keras", compile=False)
        for batch in (8, 80):
            x = np.random.rand(batch, *model.inputs[0].shape[1:]).astype("float32")
            keras.ops.convert_to_numpy(model(x))  # compile
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                keras.ops.convert_to_numpy(model(x))
                n += batch
            print(f"{bundle}: network inference, batch {batch}: {n / (time.perf_counter() - start):.0f} slices/s",
                  flush=True)


if __name__ == "__main__":
    main()
