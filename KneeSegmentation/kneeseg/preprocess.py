"""Preprocessing, one small function per step (SimpleITK imported lazily).

Geometry-changing steps come in pairs: ``to_model_frame`` resamples a volume onto a plane-aligned
model frame, ``from_model_frame`` brings (probability) maps back onto the input's exact grid.
"""

import numpy as np


def standardize(array, mean=None, std=None, clip_percentiles=(0.5, 99.5)):
    """Standard-score normalisation.

    With ``mean``/``std`` None the statistics are the volume's own (per-volume normalisation), taken
    after clipping to the given percentiles so that a few hot voxels do not squash the contrast.
    With population ``mean``/``std`` (stored in a model bundle) those are used as they are, after
    clipping at the volume's own percentiles.
    """
    a = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(a, clip_percentiles)
    a = np.clip(a, lo, hi)
    if mean is None or std is None:
        mean, std = float(a.mean()), float(a.std())
    return ((a - mean) / max(float(std), 1e-6)).astype(np.float32)


# --- model frame: reorientation + square physical crop + in-plane resampling, and its inverse ----

from dataclasses import dataclass  # noqa: E402

from . import geometry  # noqa: E402


def _sitk():
    import SimpleITK as sitk

    return sitk


@dataclass(frozen=True)
class Frame:
    """A plane-aligned grid: ``size`` x ``size`` pixels of ``pixel_mm`` in-plane, ``n_slices`` slices."""

    plane: str
    centre: tuple
    size: int
    pixel_mm: float
    n_slices: int
    slice_mm: float

    @property
    def direction(self):
        return geometry.plane_direction(self.plane)

    @property
    def origin(self):
        return geometry.frame_origin(self.centre, self.plane, self.size, self.pixel_mm, self.n_slices, self.slice_mm)

    def reference_image(self):
        """An empty SimpleITK image with this frame's geometry (the target of a resample)."""
        sitk = _sitk()
        ref = sitk.Image(self.size, self.size, self.n_slices, sitk.sitkUInt8)
        ref.SetSpacing((self.pixel_mm, self.pixel_mm, self.slice_mm))
        ref.SetDirection(tuple(self.direction.flatten()))
        ref.SetOrigin(tuple(self.origin))
        return ref


def physical_bounds(image):
    """Physical coordinates of the 8 corners of an image's voxel grid (voxel centres), shape (8, 3)."""
    size = np.array(image.GetSize()) - 1
    corners = [(i, j, k) for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners])


def spacing_along(image, direction) -> float:
    """The image's voxel spacing projected on a physical direction (exact for aligned axes)."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    weights = np.abs(d.T @ np.asarray(direction, dtype=float))  # |cosine| of each image axis with it
    return float(np.sum(weights * np.array(image.GetSpacing())) / max(weights.sum(), 1e-9))


def model_frame(image, plane, centre, window_mm=160.0, size=224, min_slice_mm=1.5, n_slices=None):
    """The model frame of ``plane`` for ``image``: a ``window_mm`` square around ``centre``.

    Slices keep the image's own spacing along the slice axis (never finer than ``min_slice_mm``)
    and span the part of the image that lies within ``window_mm`` of the centre along that axis,
    unless ``n_slices`` fixes their number (3D models) over the full window.
    """
    direction = geometry.plane_direction(plane)
    pixel_mm = window_mm / size
    if n_slices is not None:
        return Frame(plane, tuple(map(float, centre)), size, pixel_mm, int(n_slices), window_mm / n_slices)
    slice_axis = direction[:, 2]
    slice_mm = max(spacing_along(image, slice_axis), min_slice_mm)
    along = (physical_bounds(image) - np.asarray(centre)) @ slice_axis
    lo, hi = max(along.min(), -window_mm / 2), min(along.max(), window_mm / 2)
    half_slices = int(np.floor(max(hi - lo, 0.0) / 2 / slice_mm))
    middle = (lo + hi) / 2
    centre = np.asarray(centre, dtype=float) + middle * slice_axis
    return Frame(plane, tuple(map(float, centre)), size, pixel_mm, 2 * half_slices + 1, slice_mm)


def resample_to_frame(image, frame: Frame, interpolator="linear", default_value=0.0):
    """Resample ``image`` onto ``frame`` (the forward geometry step)."""
    sitk = _sitk()
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[interpolator]
    return sitk.Resample(image, frame.reference_image(), sitk.Transform(), interp, float(default_value),
                         image.GetPixelID())


def resample_from_frame(frame_array, frame: Frame, reference, default_value=None):
    """Bring per-voxel maps on ``frame`` back onto ``reference``'s exact grid (the inverse step).

    ``frame_array`` has shape (slices, rows, cols) or (slices, rows, cols, channels); channels are
    resampled together (linear), so probabilities stay probabilities. ``default_value`` (one per
    channel) fills voxels of ``reference`` outside the frame. Returns a numpy array shaped like
    ``reference`` (+ channels).
    """
    sitk = _sitk()
    array = np.asarray(frame_array, dtype=np.float32)
    vector = array.ndim == 4
    source = sitk.GetImageFromArray(array, isVector=vector)
    source.SetSpacing((frame.pixel_mm, frame.pixel_mm, frame.slice_mm))
    source.SetDirection(tuple(frame.direction.flatten()))
    source.SetOrigin(tuple(frame.origin))
    channels = array.shape[-1] if vector else 1
    if default_value is None:
        default_value = [0.0] * channels
    fill = np.atleast_1d(np.asarray(default_value, dtype=float))
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(sitk.sitkLinear)
    if np.all(fill == fill[0]):
        resampler.SetDefaultPixelValue(float(fill[0]))
        return sitk.GetArrayFromImage(resampler.Execute(source))
    # Per-channel fill values: resample a coverage mask too and blend outside the frame.
    resampler.SetDefaultPixelValue(0.0)
    out = sitk.GetArrayFromImage(resampler.Execute(source))
    ones = sitk.GetImageFromArray(np.ones(array.shape[:3], dtype=np.float32))
    ones.CopyInformation(source if not vector else _scalar_like(source, sitk))
    coverage = sitk.GetArrayFromImage(resampler.Execute(ones))[..., None]
    return out + (1.0 - coverage) * fill.astype(np.float32)


def _scalar_like(vector_image, sitk):
    scalar = sitk.Image(vector_image.GetSize(), sitk.sitkFloat32)
    scalar.CopyInformation(vector_image)
    return scalar


# --- intensity -----------------------------------------------------------------------------------


def foreground_mask(image):
    """Otsu foreground (the body) as a SimpleITK mask, largest component, holes filled."""
    sitk = _sitk()
    smoothed = sitk.SmoothingRecursiveGaussian(image, 2.0 * min(image.GetSpacing()))
    mask = sitk.OtsuThreshold(smoothed, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = components == 1
    return sitk.BinaryFillhole(largest)


@dataclass(frozen=True)
class N4Settings:
    """N4 settings; the pipeline's defaults trade a little accuracy for ~10x speed (see docs/benchmarks.md)."""

    shrink_factor: int = 4
    iterations: tuple = (50, 40, 30)
    convergence_threshold: float = 1e-4
    spline_order: int = 3
    control_points: int = 4


def n4_bias_correct(image, settings: N4Settings = N4Settings(), mask=None):
    """N4 bias field correction (SimpleITK), fitted on a shrunken copy, applied at full resolution."""
    sitk = _sitk()
    image = sitk.Cast(image, sitk.sitkFloat32)
    if mask is None:
        mask = foreground_mask(image)
    # N4 works on the log of the intensities: keep them positive.
    offset = float(sitk.GetArrayViewFromImage(image).min())
    positive = image - offset + 1.0 if offset <= 0 else image
    factor = [settings.shrink_factor] * 3
    small = sitk.Shrink(positive, factor)
    small_mask = sitk.Shrink(sitk.Cast(mask, sitk.sitkUInt8), factor)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in settings.iterations])
    n4.SetConvergenceThreshold(settings.convergence_threshold)
    n4.SetSplineOrder(settings.spline_order)
    n4.SetNumberOfControlPoints([settings.control_points] * 3)
    n4.Execute(small, small_mask)
    log_bias = n4.GetLogBiasFieldAsImage(positive)
    corrected = positive / sitk.Exp(log_bias)
    if offset <= 0:
        corrected = corrected + offset - 1.0
    corrected.CopyInformation(image)
    return sitk.Cast(corrected, sitk.sitkFloat32)


# --- knee centre without labels --------------------------------------------------------------------


def centre_by_intensity(image):
    """Knee centre from intensities alone: the centroid of the body (Otsu foreground) in LPS mm.

    Knee scans are centred on the joint by the radiographer; the body centroid corrects for an
    off-centre field of view. A model-based estimate (``infer.detect_knee_centre``) refines this.
    """
    sitk = _sitk()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(foreground_mask(image), sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return image_centre(image)
    return tuple(stats.GetCentroid(1))


def image_centre(image):
    """Physical centre of the image's voxel grid."""
    return tuple(physical_bounds(image).mean(axis=0))


# --- the thesis' z handling for 3D models ---------------------------------------------------------


def pad_slices(array, multiple: int):
    """Zero-pad axis 0 symmetrically to a multiple of ``multiple`` (thesis: 41 -> 48). Returns (padded, pad)."""
    n = array.shape[0]
    total = (-n) % multiple
    before = total // 2
    pad = [(before, total - before)] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad), (before, total - before)


def unpad_slices(array, pad):
    """Inverse of :func:`pad_slices`."""
    before, after = pad
    return array[before: array.shape[0] - after]


def subsample_slices(array, step: int = 2):
    """Take every ``step``-th slice (thesis: 48 -> 24)."""
    return array[::step]


def upsample_slices(array, n_slices: int, step: int = 2):
    """Inverse of :func:`subsample_slices` by linear interpolation along axis 0."""
    source = np.arange(array.shape[0]) * step
    target = np.arange(n_slices)
    flat = array.reshape(array.shape[0], -1)
    out = np.empty((n_slices, flat.shape[1]), dtype=np.float32)
    idx = np.clip(np.searchsorted(source, target, side="right") - 1, 0, len(source) - 1)
    nxt = np.clip(idx + 1, 0, len(source) - 1)
    span = np.where(nxt > idx, source[nxt] - source[idx], 1)
    t = np.clip((target - source[idx]) / span, 0, 1)[:, None]
    out[:] = (1 - t) * flat[idx] + t * flat[nxt]
    return out.reshape((n_slices,) + array.shape[1:])


# --- knee centre from labels (training) ------------------------------------------------------------


def junction_point(femur_points, tibia_points, fraction=0.05):
    """Where femur and tibia meet: mean of each bone's points nearest to the other (LPS mm)."""
    from scipy.spatial import cKDTree

    d_femur, _ = cKDTree(tibia_points).query(femur_points)
    d_tibia, _ = cKDTree(femur_points).query(tibia_points)
    near_femur = femur_points[d_femur <= np.quantile(d_femur, fraction)]
    near_tibia = tibia_points[d_tibia <= np.quantile(d_tibia, fraction)]
    return tuple((near_femur.mean(axis=0) + near_tibia.mean(axis=0)) / 2)


def label_points(label_array, value, image, max_points=20000, seed=0):
    """Physical LPS points of the voxels of ``label_array`` (numpy, k-j-i) equal to ``value``."""
    idx = np.argwhere(label_array == value)
    if len(idx) > max_points:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    scaled = idx[:, ::-1] * np.array(image.GetSpacing())
    return np.array(image.GetOrigin()) + scaled @ direction.T


def knee_centre_from_labels(labelmap, femur=1, tibia=2):
    """The femur-tibia junction of a label map (SimpleITK), or its bone centroid if one bone is absent."""
    sitk = _sitk()
    array = sitk.GetArrayViewFromImage(labelmap)
    femur_points = label_points(array, femur, labelmap)
    tibia_points = label_points(array, tibia, labelmap)
    if len(femur_points) and len(tibia_points):
        return junction_point(femur_points, tibia_points)
    bone = np.argwhere(array > 0)
    if not len(bone):
        return image_centre(labelmap)
    return tuple(labelmap.TransformContinuousIndexToPhysicalPoint(bone.mean(axis=0)[::-1].tolist()))
