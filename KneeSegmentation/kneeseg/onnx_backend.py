"""The light inference path: a bundle's network as an ONNX graph, run by ONNX Runtime.

Training exports the graph once (``export_onnx``, needs TensorFlow + ``tf2onnx`` + ``onnx``); a
radiologist who only segments then needs ``onnxruntime`` and ``numpy`` (~180 MB installed instead
of TensorFlow's ~1.6 GB). :class:`OnnxPredictor` has the call contract of ``infer.KerasPredictor``:
a float32 batch (B, H, W, 1) in, class probabilities (B, H, W, C) out. Measured against TensorFlow
in ``docs/benchmarks.md``; ``infer.make_predictor`` picks it automatically when the bundle holds a
graph, ``--backend keras|onnx`` overrides.
"""

import os
from pathlib import Path

import numpy as np

from .cpus import available_cpus

OPSET = 17


def export_onnx(keras_model, path, opset=OPSET) -> Path:
    """Write ``keras_model`` as an ONNX graph with a dynamic batch axis; returns the path.

    Raises ImportError (with the pip command) when ``tf2onnx`` or ``onnx`` is not installed, so a
    caller can fall back to a TensorFlow-only bundle.
    """
    missing = [name for name in ("tf2onnx", "onnx") if not _importable(name)]
    if missing:
        raise ImportError(f"exporting an ONNX graph needs {' and '.join(missing)}: pip install tf2onnx onnx "
                          "(or pip install 'kneeseg[export]')")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(f"ONNX export runs on the TensorFlow backend of Keras (this is {keras.backend.backend()!r})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.onnx")
    try:
        # An explicit signature: a freshly built functional model counts as "never called" for Keras.
        signature = [keras.InputSpec(shape=(None,) + tuple(t.shape[1:]), dtype=t.dtype, name=t.name.split(":")[0])
                     for t in keras_model.inputs]
        keras_model.export(str(tmp), format="onnx", verbose=False, opset_version=opset,
                           input_signature=signature)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def make_session(path, threads=None, providers=None):
    """An ONNX Runtime session tuned for a small CPU: all graph optimisations, one pool of ``threads``.

    Inter-op parallelism is off (a U-Net is a chain of layers, sequential execution is fastest);
    intra-op threads default to the CPUs available to the process. A GPU provider is used when
    onnxruntime-gpu offers one (``providers`` overrides).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxPredictor:
    """Runs a bundle's ONNX graph with ONNX Runtime (same contract as ``infer.KerasPredictor``)."""

    name = "onnx"

    def __init__(self, bundle=None, path=None, threads=None):
        path = path if path is not None else bundle.onnx_path
        if path is None:
            raise ValueError("this bundle holds no ONNX graph")
        self.path = Path(path)
        try:
            self.session = make_session(self.path, threads)
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own classes for a broken graph
            from .errors import BundleError

            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"the ONNX graph is damaged or not a network ({reason})", self.path) from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        if bundle is not None:
            bundle.check_network_shape(self.session.get_inputs()[0].shape, self.session.get_outputs()[0].shape,
                                       self.path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]
