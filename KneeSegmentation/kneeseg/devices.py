"""Whether a GPU is visible, answered without importing TensorFlow where the system says so itself."""

import glob
import os
import sys


def gpu_visible() -> bool:
    """True when a GPU the framework could use is visible to this process.

    On Linux an NVIDIA GPU shows as /dev/nvidia0, 1, ...; TensorFlow is asked only where the answer is
    not plain from the system (AMD ROCm's /dev/kfd, WSL's /dev/dxg, other platforms), since importing
    it costs seconds.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        if glob.glob("/dev/nvidia[0-9]*"):
            return True
        if not (os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg")):
            return False
    try:
        import tensorflow as tf
    except ImportError:  # e.g. an ONNX-only install: no framework that could use a GPU here
        return False
    return bool(tf.config.list_physical_devices("GPU"))
