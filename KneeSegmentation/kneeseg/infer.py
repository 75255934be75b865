"""Inference: a volume in, a label map out in exactly the input geometry.

Per slice plane the bundle declares: resample the volume onto the plane's model frame (a square
physical window around the knee centre), normalise, predict slice by slice, and resample the
*probabilities* back onto the input grid. Probabilities of several planes are averaged (tri-planar
fusion) before the argmax; then each bone keeps its largest component with holes filled.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from . import postprocess, preprocess
from .errors import Cancelled, InputError


@dataclass
class SegmentOptions:
    planes: tuple = None  # None: the bundle's planes
    n4: bool = None  # None: the bundle's preprocessing setting
    centre: object = "auto"  # "auto" (model, else intensity), "model", "intensity", "image", or an LPS point
    batch_size: int = 8
    postprocess: bool = True
    confidence: bool = False
    backend: str = "auto"  # "auto", "keras", "onnx"


@dataclass
class SegmentationResult:
    labelmap: object  # SimpleITK uint8 image, input geometry
    labels: tuple
    volumes_ml: dict
    centre: tuple
    confidence: object = None  # SimpleITK float32 image (max fused probability), input geometry
    timings: dict = field(default_factory=dict)


# --- predictors ----------------------------------------------------------------------------------


class KerasPredictor:
    """Runs a bundle's Keras model (TensorFlow backend on CPU/GPU)."""

    name = "keras"

    def __init__(self, bundle):
        self.model = bundle.load_keras_model()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import keras

        return keras.ops.convert_to_numpy(self.model(batch, training=False))


def make_predictor(bundle, backend="auto"):
    """The fastest available predictor for ``bundle`` (ONNX Runtime when possible), or the one asked."""
    if backend not in ("auto", "keras", "onnx"):
        raise InputError(f"unknown backend {backend!r}; choose auto, keras or onnx")
    if backend in ("auto", "onnx") and bundle.onnx_path is not None:
        try:
            from .onnx_backend import OnnxPredictor
        except ImportError:
            if backend == "onnx":
                raise InputError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        else:
            return OnnxPredictor(bundle)
    if backend == "onnx":
        raise InputError("this bundle holds no ONNX graph; use --backend keras", bundle.folder)
    return KerasPredictor(bundle)


# --- the pipeline --------------------------------------------------------------------------------


def _report(progress, stage, fraction, message):
    if progress is not None:
        progress(stage, fraction, message)


def _check_cancel(cancel):
    if cancel is not None and cancel():
        raise Cancelled("segmentation cancelled")


def predict_frame(predictor, frame_array, card, batch_size=8, cancel=None):
    """Class probabilities for a normalised model-frame array (slices, rows, cols) -> (..., classes)."""
    if card["model"]["dims"] == 3:
        return _predict_volume_3d(predictor, frame_array)
    out = []
    for start in range(0, frame_array.shape[0], batch_size):
        _check_cancel(cancel)
        batch = frame_array[start:start + batch_size, ..., None]
        out.append(predictor(batch.astype(np.float32)))
    return np.concatenate(out, axis=0)


def _predict_volume_3d(predictor, frame_array, step=2):
    """The thesis' z handling: pad the slices, keep every ``step``-th, predict, interpolate back."""
    padded, pad = preprocess.pad_slices(frame_array, 2 * step)
    thin = preprocess.subsample_slices(padded, step)
    probs = predictor(thin[None, ..., None].astype(np.float32))[0]
    full = preprocess.upsample_slices(probs, padded.shape[0], step)
    return preprocess.unpad_slices(full, pad)


def _probabilities(probs):
    """(background-inclusive) class probabilities from a softmax or a single sigmoid channel."""
    if probs.shape[-1] == 1:
        return np.concatenate([1.0 - probs, probs], axis=-1)
    return probs


def frame_probabilities(image, predictor, card, plane, centre, batch_size=8, cancel=None):
    """(frame, probabilities on the frame) for one plane."""
    import SimpleITK as sitk

    pre = card["preprocessing"]
    frame = preprocess.model_frame(image, plane, centre, window_mm=pre["window_mm"],
                                   size=card["model"]["input_size"], min_slice_mm=pre.get("min_slice_mm", 1.5))
    array = sitk.GetArrayFromImage(preprocess.resample_to_frame(image, frame))
    norm = card.get("normalisation", {})
    if norm.get("mode") == "population":
        array = preprocess.standardize(array, norm["mean"], norm["std"])
    else:
        array = preprocess.standardize(array)
    return frame, _probabilities(predict_frame(predictor, array, card, batch_size, cancel))


def detect_knee_centre(image, predictor, card, batch_size=8):
    """Knee centre by a coarse first pass of the model over the whole field of view.

    The point where femur and tibia meet: the mean of the femur voxels closest to the tibia and the
    tibia voxels closest to the femur. Returns None when the model finds no femur or no tibia.
    """
    names = {label.name: label.value for label in _labels(card)}
    if "Femur" not in names or "Tibia" not in names:
        return None
    corners = preprocess.physical_bounds(image)
    extent = float(np.max(corners.max(axis=0) - corners.min(axis=0)))
    coarse = {**card, "preprocessing": {**card["preprocessing"], "window_mm": extent, "min_slice_mm": 3.0}}
    plane = card["preprocessing"]["planes"][0]
    frame, probs = frame_probabilities(image, predictor, coarse, plane, preprocess.image_centre(image), batch_size)
    labels = np.argmax(probs, axis=-1)
    points = {}
    for name in ("Femur", "Tibia"):
        idx = np.argwhere(labels == names[name])
        if len(idx) < 20:
            return None
        scaled = idx[:, ::-1] * np.array([frame.pixel_mm, frame.pixel_mm, frame.slice_mm])  # -> (i, j, k) mm
        points[name] = frame.origin + scaled @ frame.direction.T
    return preprocess.junction_point(points["Femur"], points["Tibia"])


def _labels(card):
    from .labels import labels_from_json

    return labels_from_json(card["labels"])


def find_centre(image, predictor, card, how="auto", batch_size=8):
    if not isinstance(how, str):
        return tuple(float(c) for c in how)
    if how == "image":
        return preprocess.image_centre(image)
    if how == "intensity":
        return preprocess.centre_by_intensity(image)
    if how in ("auto", "model"):
        centre = detect_knee_centre(image, predictor, card, batch_size)
        if centre is not None:
            return centre
        if how == "model":
            raise InputError("the model found no femur and tibia to centre on; try --centre intensity")
        return preprocess.centre_by_intensity(image)
    raise InputError(f"unknown centre method {how!r}")


def segment(image, bundle, options: SegmentOptions = None, progress=None, cancel=None, predictor=None):
    """Segment the knee bones in a validated 3D SimpleITK image with a loaded :class:`Bundle`.

    ``progress(stage, fraction, message)`` is called along the way; ``cancel()`` returning True stops
    the run (raises :class:`Cancelled`). The input image is never modified.
    """
    import SimpleITK as sitk

    options = options or SegmentOptions()
    card = bundle.card
    labels = bundle.labels
    planes = tuple(options.planes or card["preprocessing"]["planes"])
    timings = {}
    t0 = time.perf_counter()
    predictor = predictor or make_predictor(bundle, options.backend)
    timings["load_model"] = time.perf_counter() - t0

    work = image
    use_n4 = card["preprocessing"].get("n4", False) if options.n4 is None else options.n4
    if use_n4:
        _report(progress, "n4", 0.05, "N4 bias field correction")
        t = time.perf_counter()
        settings = preprocess.N4Settings(**card["preprocessing"].get("n4_settings", {}))
        work = preprocess.n4_bias_correct(image, settings)
        timings["n4"] = time.perf_counter() - t
    _check_cancel(cancel)

    _report(progress, "centre", 0.15, "finding the knee centre")
    t = time.perf_counter()
    centre = find_centre(work, predictor, card, options.centre, options.batch_size)
    timings["centre"] = time.perf_counter() - t

    n_classes = 2 if card["model"]["output"] == "merged" else len(labels) + 1
    fused = np.zeros(tuple(reversed(image.GetSize())) + (n_classes,), dtype=np.float32)
    background_fill = [1.0] + [0.0] * (n_classes - 1)
    for i, plane in enumerate(planes):
        _report(progress, "network", 0.2 + 0.6 * i / len(planes), f"predicting {plane} slices")
        t = time.perf_counter()
        frame, probs = frame_probabilities(work, predictor, card, plane, centre, options.batch_size, cancel)
        timings[f"network_{plane}"] = time.perf_counter() - t
        _check_cancel(cancel)
        t = time.perf_counter()
        fused += preprocess.resample_from_frame(probs, frame, image, default_value=background_fill)
        timings[f"resample_back_{plane}"] = time.perf_counter() - t
    fused /= len(planes)

    _report(progress, "postprocess", 0.85, "largest component per bone, hole filling")
    t = time.perf_counter()
    label_array = np.argmax(fused, axis=-1).astype(np.uint8)
    if options.postprocess:
        label_array = postprocess.clean_labelmap(label_array, [label.value for label in labels])
    labelmap = sitk.GetImageFromArray(label_array)
    labelmap.CopyInformation(image)
    confidence = None
    if options.confidence:
        confidence = sitk.GetImageFromArray(fused.max(axis=-1).astype(np.float32))
        confidence.CopyInformation(image)
    volumes = postprocess.bone_volumes_ml(label_array, image.GetSpacing(), labels)
    timings["postprocess"] = time.perf_counter() - t
    _report(progress, "segmented", 0.9, "segmentation finished")
    return SegmentationResult(labelmap, labels, volumes, tuple(centre), confidence, timings)
