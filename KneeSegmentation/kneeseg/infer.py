"""Inference: a volume in, a label map out in exactly the input geometry.

Per slice plane the bundle declares: resample the volume onto the plane's model frame (a square
physical window around the knee centre), normalise, predict slice by slice, and resample the
*probabilities* back onto the input grid. Probabilities of several planes are averaged (tri-planar
fusion; weighted per class when the bundle carries fitted weights) before the argmax; then each bone
keeps its largest component with holes filled.
"""

import importlib.util
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import quality
from .errors import Cancelled, InputError, MissingPackage
from .io import validate_volume
from .postprocess.cleanup import bone_volumes_ml, clean_labelmap, keep_largest_component
from .postprocess.fusion import PlaneProbabilities, class_plane_weights, fuse_frames
from .preprocess import intensity
from .preprocess.centre import centre_by_intensity, image_centre, knee_centre
from .preprocess.frame import (model_frame, pad_slices, physical_bounds, position_channels, resample_to_frame,
                               slice_positions_mm, subsample_slices, unpad_slices, upsample_slices, with_context)
from .progress import NO_PROGRESS
from .specs import FUSIONS, PLANE_REACHES


@dataclass
class SegmentOptions:
    planes: tuple = None  # None: the bundle's planes
    n4: bool = None  # None: the bundle's preprocessing setting
    n4_settings: dict = None  # overrides of preprocess.intensity.N4Settings fields (shrink_factor, iterations, ...)
    centre: object = "auto"  # "auto" (model, else image centre), "model", "intensity", "image", or an LPS point
    batch_size: int = 8
    postprocess: bool = True
    confidence: bool = False
    backend: str = "auto"  # "auto", "keras", "onnx"
    quality: bool = True  # the quality score and flag (kneeseg.quality): measured on the way, little cost
    single_slice: bool = False  # accept a one-slice image (the evaluation of real 2D slices)
    fusion: str = "weighted"  # "weighted": the bundle's per-class plane weights if it has any; "mean": plain mean
    # "auto": a plane votes only where its slices lie as near the knee centre as its training slices did
    # (plane_reach_mm); "off": every plane everywhere; None: the bundle's card.plane_reach (off unless its card's
    # fusion section says auto)
    plane_reach: str | None = None


@dataclass
class SegmentationResult:
    labelmap: object  # SimpleITK uint8 image, input geometry
    labels: tuple
    volumes_ml: dict
    centre: tuple
    confidence: object = None  # SimpleITK float32 image (max fused probability), input geometry
    timings: dict = field(default_factory=dict)
    quality: object = None  # kneeseg.quality.Quality: score in [0, 1], flag, reasons (None if not asked)


# --- predictors ----------------------------------------------------------------------------------


class KerasPredictor:
    """Runs a bundle's Keras model (TensorFlow backend on CPU/GPU).

    The model runs through one ``tf.function`` traced for any batch size (2x faster than an eager
    call, docs/benchmarks.md). ``precision`` (default: the environment variable ``KNEESEG_PRECISION``,
    else "float32"): "bfloat16" runs the convolutions in bfloat16 with the softmax head in float32,
    1.5-1.8x faster on CPUs with AMX or AVX512-BF16 but not the same segmentation (with the shipped
    model on a real DESS volume 3.8 % of the bone voxels change label; docs/benchmarks.md); "auto"
    picks bfloat16 on such CPUs when no GPU is visible.
    """

    name = "keras"

    def __init__(self, bundle, precision=None):
        self.model = bundle.load_keras_model()
        self.precision = resolve_precision(precision)
        self._call = _compiled_call(self.model, self.precision, bundle.card)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(np.asarray(batch, dtype=np.float32)), dtype=np.float32)


PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AMX-BF16 or AVX512-BF16 (bfloat16 convolutions faster than float32)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision=None) -> str:
    precision = precision or os.environ.get("KNEESEG_PRECISION") or "float32"
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    import keras

    if keras.backend.backend() != "tensorflow" or not cpu_has_native_bf16():
        return "float32"
    import tensorflow as tf

    return "float32" if tf.config.list_logical_devices("GPU") else "bfloat16"


def _compiled_call(model, precision, card):
    """``model``'s forward pass as a function numpy -> tensor, compiled once where the backend allows."""
    import keras

    if precision == "bfloat16":
        model = _bfloat16_copy(model, card) or model
    if keras.backend.backend() != "tensorflow":
        return lambda batch: keras.ops.convert_to_numpy(model(batch, training=False))
    import tensorflow as tf

    signature = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32)]
    forward = tf.function(lambda batch: model(batch, training=False), input_signature=signature)
    return lambda batch: forward(batch).numpy()


def _bfloat16_copy(model, card):
    """The same network built with the mixed_bfloat16 policy and ``model``'s weights (None if it fails)."""
    import keras

    from .model import build_model

    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_bfloat16")
        copy = build_model(card.network, card.frame.size)
        copy.set_weights(model.get_weights())
        return copy
    except (ValueError, KeyError, TypeError):
        return None
    finally:
        keras.config.set_dtype_policy(previous)


def _onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("keras") is not None


def auto_backend(bundle) -> str:
    """The backend "auto" means for ``bundle`` here.

    TensorFlow when it is installed: on the U-Net it is 2-4x faster than ONNX Runtime on CPU
    (ONNX Runtime cannot fuse the ELU activations into its convolutions; docs/benchmarks.md).
    ONNX Runtime when TensorFlow is absent (the light install) and the bundle holds a graph.
    """
    if _tensorflow_installed() or bundle.onnx_path is None or not _onnxruntime_installed():
        return "keras"
    return "onnx"


ONNX_INSTALL = "pip install 'kneeseg[onnx]'"
TF_INSTALL = "pip install 'kneeseg[tf]'"


def make_predictor(bundle, backend="auto"):
    """The predictor ``backend`` names for ``bundle``; "auto": see :func:`auto_backend`.

    A missing engine is a :class:`MissingPackage` naming the one install command that makes this
    bundle run (the light ONNX Runtime install when the bundle carries a graph).
    """
    if backend not in ("auto", "keras", "onnx"):
        raise InputError(f"unknown backend {backend!r}; choose auto, keras or onnx")
    chosen = auto_backend(bundle) if backend == "auto" else backend
    if chosen == "onnx":
        if bundle.onnx_path is None:
            raise InputError("this bundle holds no ONNX graph; use --backend keras", bundle.folder)
        if not _onnxruntime_installed():
            raise MissingPackage("onnxruntime", ONNX_INSTALL, "the onnx backend needs ONNX Runtime, which is not "
                                 "installed")
        from .onnx_backend import OnnxPredictor

        return OnnxPredictor(bundle)
    if not _tensorflow_installed():
        if backend == "auto" and bundle.onnx_path is not None:
            raise MissingPackage("onnxruntime", ONNX_INSTALL, "neither TensorFlow nor ONNX Runtime is installed; "
                                 "this model runs with ONNX Runtime alone (about 130 MB)")
        raise MissingPackage("tensorflow", TF_INSTALL, "the keras backend needs TensorFlow, which is not installed")
    return KerasPredictor(bundle)


# --- the pipeline --------------------------------------------------------------------------------


def _check_cancel(cancel):
    if cancel is not None and cancel():
        raise Cancelled("segmentation cancelled")


def predict_frame(predictor, frame_array, card, batch_size=8, cancel=None, positions_mm=None):
    """Class probabilities for a normalised model-frame array (slices, rows, cols) -> (..., classes).

    ``positions_mm``: each slice's distance from the knee centre (:func:`slice_positions_mm`), for a
    network that takes it (``slice_position``); None: not known."""
    if card.network.dims == 3:
        return _predict_volume_3d(predictor, frame_array)
    out = []
    n = frame_array.shape[0]
    for start in range(0, n, batch_size):
        _check_cancel(cancel)
        stop = min(start + batch_size, n)
        batch = with_context(frame_array, card.network.context_slices, start, stop)
        if card.network.slice_position:
            batch = position_channels(batch, None if positions_mm is None else positions_mm[start:stop])
        out.append(predictor(batch.astype(np.float32)))
    return np.concatenate(out, axis=0)


def _predict_volume_3d(predictor, frame_array, step=2):
    """The thesis' z handling: pad the slices, keep every ``step``-th, predict, interpolate back."""
    padded, pad = pad_slices(frame_array, 2 * step)
    thin = subsample_slices(padded, step)
    probs = predictor(thin[None, ..., None].astype(np.float32))[0]
    full = upsample_slices(probs, padded.shape[0], step)
    return unpad_slices(full, pad)


def _probabilities(probs):
    """(background-inclusive) class probabilities from a softmax or a single sigmoid channel."""
    if probs.shape[-1] == 1:
        return np.concatenate([1.0 - probs, probs], axis=-1)
    return probs


def frame_probabilities(image, predictor, card, plane, centre, batch_size=8, cancel=None, centre_known=True):
    """(frame, probabilities on the frame) for one plane. ``centre_known``: ``centre`` is the knee
    centre (else only where the frame is put), so each slice's distance from it is given to a network
    that takes it."""
    import SimpleITK as sitk

    spec = card.frame
    frame = model_frame(image, plane, centre, spec)
    array = sitk.GetArrayFromImage(resample_to_frame(image, frame))
    mean, std = spec.normalisation.statistics
    array = intensity.standardize(array, mean, std, clip_percentiles=spec.normalisation.clip_percentiles)
    positions = slice_positions_mm(frame, centre) if centre_known else None
    return frame, _probabilities(predict_frame(predictor, array, card, batch_size, cancel, positions))


COARSE_SLICES = 24
MIN_BONE_VOXELS = 20  # fewer voxels of femur or tibia in the first pass: the model found no knee


def detect_knee_centre(image, predictor, card, batch_size=8):
    """Knee centre by a coarse first pass of the model over the whole field of view.

    The label-based knee centre (``preprocess.centre.knee_centre``: where femur and tibia meet) of the
    largest piece of femur and of tibia in the model's labels: a stray piece (muscle called femur
    beside the tibia) would pull the junction towards itself (held-out synthetic volumes: median error
    23 mm with every piece, 4 mm with the largest). Returns None when the model finds no femur or no
    tibia.
    """
    names = card.label_values
    if "Femur" not in names or "Tibia" not in names:
        return None
    corners = physical_bounds(image)
    extent = float(np.max(corners.max(axis=0) - corners.min(axis=0)))
    # At most ~COARSE_SLICES slices (>= 3 mm apart): the junction needs no fine slices.
    coarse_slice_mm = max(3.0, extent / COARSE_SLICES)
    coarse = card.with_frame(window_mm=extent, min_slice_mm=coarse_slice_mm)
    plane = card.frame.planes[0]
    frame, probs = frame_probabilities(image, predictor, coarse, plane, image_centre(image), batch_size,
                                       centre_known=False)
    bones = clean_labelmap(np.argmax(probs, axis=-1), (names["Femur"], names["Tibia"]), fill=False)
    return knee_centre(bones, frame.grid, names["Femur"], names["Tibia"], min_voxels=MIN_BONE_VOXELS)


def find_centre(image, predictor, card, how="auto", batch_size=8):
    """(centre, known): the knee centre by ``how``; "auto" is the model's first pass, else the field of
    view's centre. ``known``: the centre is where femur and tibia meet (the model's, or a point the
    caller gave), not the field of view's or the body's centre (a guess).

    On the real labelled slices (docs/evaluation.md) the model's estimate was the closest to the true
    femur-tibia junction (median 3 mm), the field-of-view centre the best fallback (9 mm), and the
    body centroid the worst (22 mm: the thigh pulls it up).
    """
    if not isinstance(how, str):
        return tuple(float(c) for c in how), True
    if how == "image":
        return image_centre(image), False
    if how == "intensity":
        return centre_by_intensity(image), False
    if how in ("auto", "model"):
        centre = detect_knee_centre(image, predictor, card, batch_size)
        if centre is not None:
            return centre, True
        if how == "model":
            raise InputError("the model found no femur and tibia to centre on; try --centre image")
        return image_centre(image), False
    raise InputError(f"unknown centre method {how!r}")


def segment(image, bundle, options: SegmentOptions = None, progress=None, cancel=None, predictor=None):
    """Segment the knee bones in a validated 3D SimpleITK image with a loaded :class:`Bundle`.

    ``progress(stage, fraction, message)`` is called along the way; ``cancel()`` returning True stops
    the run (raises :class:`Cancelled`). The input image is never modified.
    """
    options = options or SegmentOptions()
    # InputError naming the problem: NaN/Inf, constant, 2D, 4D, vector, one slice
    validate_volume(image, single_slice_ok=options.single_slice)
    import SimpleITK as sitk

    progress = progress or NO_PROGRESS
    card = bundle.card
    labels = bundle.labels
    planes = tuple(options.planes or card.frame.planes)
    weights = fusion_weights(card, planes, options.fusion)
    plane_reach_setting(card, options)  # an unknown --plane-reach is named before the network runs
    timings = {}
    t0 = time.perf_counter()
    predictor = predictor or make_predictor(bundle, options.backend)
    timings["load_model"] = time.perf_counter() - t0
    centre, frames, known = plane_predictions(image, bundle, predictor, options, planes, progress, cancel, timings)
    reach = fusion_reach(card, options, centre, known)

    progress("postprocess", 0.85, "fusing the planes, largest component per bone, hole filling")
    fusion_quality = {} if options.quality else None
    label_array, fused_max = fuse_frames(frames, image, confidence=options.confidence, timings=timings,
                                         quality=fusion_quality, weights=weights, reach=reach)
    del frames
    t = time.perf_counter()
    pieces = {}
    if options.postprocess:
        label_array = clean_labelmap(label_array, [label.value for label in labels], pieces=pieces)
    elif options.quality:
        for label in labels:  # no clean-up, but the pieces are still a measure
            keep_largest_component(label_array == label.value, pieces.setdefault(label.value, []))
    labelmap = sitk.GetImageFromArray(label_array)
    labelmap.CopyInformation(image)
    confidence = None
    if options.confidence:
        confidence = sitk.GetImageFromArray(fused_max)
        confidence.CopyInformation(image)
    volumes = bone_volumes_ml(label_array, image.GetSpacing(), labels)
    timings["postprocess"] = time.perf_counter() - t
    result_quality = None
    if options.quality:
        t = time.perf_counter()
        result_quality = case_quality(label_array, fusion_quality, pieces, volumes, labels, image, card)
        timings["quality"] = time.perf_counter() - t
    progress("segmented", 0.9, "segmentation finished")
    return SegmentationResult(labelmap, labels, volumes, tuple(centre), confidence, timings, result_quality)


def plane_predictions(image, bundle, predictor, options: SegmentOptions, planes, progress=NO_PROGRESS, cancel=None,
                      timings=None):
    """Everything :func:`segment` does before fusing: N4 when asked, the knee centre, and each of
    ``planes`` predicted. Returns ``(centre, frames, known)``: one :class:`PlaneProbabilities` per plane,
    ready to be sampled on ``image``'s grid (``fuse_frames``, or the fit of the fusion weights); ``known``:
    the centre is where femur and tibia meet, not a guess (``find_centre``)."""
    card = bundle.card
    timings = {} if timings is None else timings
    work = image
    use_n4 = card.n4 if options.n4 is None else options.n4
    if use_n4:
        progress("n4", 0.05, "N4 bias field correction")
        t = time.perf_counter()
        settings = intensity.N4Settings.from_overrides({**card.n4_settings, **(options.n4_settings or {})})
        work = intensity.n4_bias_correct(image, settings)
        timings["n4"] = time.perf_counter() - t
    _check_cancel(cancel)

    progress("centre", 0.15, "finding the knee centre")
    t = time.perf_counter()
    centre, known = find_centre(work, predictor, card, options.centre, options.batch_size)
    timings["centre"] = time.perf_counter() - t
    known = known and not options.single_slice  # one slice: its distance from the centre is not known

    frames = []
    for i, plane in enumerate(planes):
        progress("network", 0.2 + 0.6 * i / len(planes), f"predicting {plane} slices")
        t = time.perf_counter()
        frame, probs = frame_probabilities(work, predictor, card, plane, centre, options.batch_size, cancel,
                                           centre_known=known)
        frames.append(PlaneProbabilities(frame, probs, image))  # bone channels only: less memory
        del probs
        timings[f"network_{plane}"] = time.perf_counter() - t
        _check_cancel(cancel)
    return centre, frames, known


def plane_reach_mm(card):
    """How far from the knee centre (mm, along a plane's slice axis) the bundle's training slices lay: the
    generator's slab (``slab_half_mm``) plus one standard deviation of its view centre's shift
    (``centre_shift_mm``), as its card records them. None for a bundle not trained on synthetic slices
    (real scans are sliced whole)."""
    from .synth.config import SynthesisConfig

    data = card.training.get("data") if isinstance(card.training, dict) else None
    settings = data.get("synthesis") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        return None
    defaults = SynthesisConfig()
    try:  # provenance written by training, read here: a value that is no finite distance turns the reach off
        slab, shift = (float(settings.get(name, getattr(defaults, name)))
                       for name in ("slab_half_mm", "centre_shift_mm"))
    except (TypeError, ValueError, OverflowError):
        return None
    if any(isinstance(settings.get(name), bool) for name in ("slab_half_mm", "centre_shift_mm")):
        return None
    return slab + shift if math.isfinite(slab + shift) and min(slab, shift) >= 0 else None


def plane_reach_setting(card, options: SegmentOptions) -> str:
    """The plane reach a segmentation asks for: ``options.plane_reach``, else the card's; an unknown one is
    refused by name."""
    setting = card.plane_reach if options.plane_reach is None else options.plane_reach
    if setting not in PLANE_REACHES:
        raise InputError(f"unknown plane reach {setting!r}; choose {', '.join(PLANE_REACHES)}")
    return setting


def fusion_reach(card, options: SegmentOptions, centre, known):
    """``fuse_frames``' ``reach`` for a segmentation: ``(centre, mm)`` when the plane reach
    (:func:`plane_reach_setting`) is "auto", the centre is the model's (a guessed centre could put the knee out
    of every plane's reach) and the bundle records how far its training slices lay; else None (every plane votes
    everywhere)."""
    mm = plane_reach_mm(card) if plane_reach_setting(card, options) == "auto" and known else None
    return None if mm is None else (tuple(float(c) for c in centre), mm)


def fusion_weights(card, planes, fusion="weighted"):
    """The (planes, classes) fusion weights ``fuse_frames`` takes for ``planes``: the card's fitted
    per-class plane weights (normalised over the planes fused), or None for the plain mean."""
    if fusion not in FUSIONS:
        raise InputError(f"unknown fusion {fusion!r}; choose {', '.join(FUSIONS)}")
    return class_plane_weights(card.fusion_weights, planes) if fusion == "weighted" else None


def case_quality(label_array, fusion_quality, pieces, volumes, labels, image, card=None):
    """The :class:`~kneeseg.quality.Quality` of one segmentation, flagged below the threshold ``card`` sets
    (else the default); bone volumes are judged only on a whole scan (a single slice has none)."""
    measures = quality.segmentation_measures(label_array, fusion_quality, pieces, volumes, labels)
    whole_scan = min(image.GetSize()) > 1
    return quality.score_case(measures, quality.load_volume_ranges() if whole_scan else None,
                              quality.flag_threshold(card))
