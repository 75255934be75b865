"""The model frame: the grid of slices the network sees, and the resampling onto it and back.

:func:`model_frame` places a plane-aligned grid (``geometry``) around the knee centre: a square
window of :class:`~kneeseg.specs.FrameSpec` ``window_mm`` at ``size`` x ``size`` pixels, slices at the
scan's own spacing, slid back inside the scan where it would run past an edge (:func:`window_centre`).
One resample onto it (:func:`resample_to_frame`) does the reorientation, the crop and the in-plane
resize for any scanner orientation; :func:`resample_from_frame` brings per-voxel maps back onto the
scan's exact grid. A 2.5D network sees each slice with its neighbours (:func:`with_context`), and a
network may be told where each slice lies (:func:`position_channels`); a 3D network sees a frame's
slices padded and thinned the thesis' way (:func:`pad_slices` ... :func:`upsample_slices`).
"""

from dataclasses import dataclass

import numpy as np

from .. import geometry
from ..specs import FrameSpec


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

    @property
    def grid(self) -> geometry.VoxelGrid:
        """The frame's voxels in LPS space (for arrays of shape (slices, rows, cols))."""
        return geometry.VoxelGrid(self.origin, np.array([self.pixel_mm, self.pixel_mm, self.slice_mm]), self.direction)

    def reference_image(self):
        """An empty SimpleITK image with this frame's geometry (the target of a resample)."""
        import SimpleITK as sitk

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


def window_centre(image, centre, direction, window_mm) -> np.ndarray:
    """The centre of a ``window_mm`` cube (axes: ``direction``'s columns) nearest to ``centre`` that
    covers as much of ``image`` as such a cube can.

    A window centred on the knee can run past one edge of the image while the bone at the opposite
    edge lies outside it and is never segmented; slid back inside, it keeps its size. Along an axis
    where the image is shorter than the window the window covers all of it, and where it is longer the
    window stays inside it; in between it moves as little as it must.
    """
    centre = np.asarray(centre, dtype=float)
    along = physical_bounds(image) @ direction
    lo, hi = along.min(axis=0), along.max(axis=0)
    half = window_mm / 2.0
    position = direction.T @ centre
    moved = np.clip(position, np.minimum(lo + half, hi - half), np.maximum(lo + half, hi - half))
    return centre + direction @ (moved - position)


def model_frame(image, plane, centre, spec: FrameSpec, n_slices=None) -> Frame:
    """The model frame of ``plane`` for ``image``: a ``spec.window_mm`` square around ``centre``, moved
    only as far as it takes to cover more of the image (:func:`window_centre`).

    Slices keep the image's own spacing along the slice axis (never finer than ``spec.min_slice_mm``)
    and span the part of the image that lies within ``window_mm`` of the centre along that axis,
    unless ``n_slices`` fixes their number (3D models) over the full window.
    """
    window_mm, size = spec.window_mm, spec.size
    direction = geometry.plane_direction(plane)
    pixel_mm = window_mm / size
    centre = window_centre(image, centre, direction, window_mm)
    if n_slices is not None:
        return Frame(plane, tuple(map(float, centre)), size, pixel_mm, int(n_slices), window_mm / n_slices)
    slice_axis = direction[:, 2]
    slice_mm = max(spacing_along(image, slice_axis), spec.min_slice_mm)
    along = (physical_bounds(image) - np.asarray(centre)) @ slice_axis
    lo, hi = max(along.min(), -window_mm / 2), min(along.max(), window_mm / 2)
    half_slices = int(np.floor(max(hi - lo, 0.0) / 2 / slice_mm))
    middle = (lo + hi) / 2
    centre = np.asarray(centre, dtype=float) + middle * slice_axis
    return Frame(plane, tuple(map(float, centre)), size, pixel_mm, 2 * half_slices + 1, slice_mm)


def resample_to_frame(image, frame: Frame, interpolator="linear", default_value=0.0):
    """Resample ``image`` onto ``frame`` (the forward geometry step)."""
    import SimpleITK as sitk

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
    import SimpleITK as sitk

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
    ones.CopyInformation(source if not vector else _scalar_like(source))
    coverage = sitk.GetArrayFromImage(resampler.Execute(ones))[..., None]
    return out + (1.0 - coverage) * fill.astype(np.float32)


def _scalar_like(vector_image):
    import SimpleITK as sitk

    scalar = sitk.Image(vector_image.GetSize(), sitk.sitkFloat32)
    scalar.CopyInformation(vector_image)
    return scalar


def with_context(slices, context: int, first: int = 0, last: int = None):
    """Slices ``first``..``last`` (exclusive; default all) of ``slices`` (n, rows, cols), each with its
    ``context`` neighbours on each side as channels: (last - first, rows, cols, 2 * context + 1), the
    slice itself in the middle channel. At the first and last slice the missing neighbours repeat the
    edge slice, as a scan that ends there would look if it went on unchanged."""
    n = slices.shape[0]
    last = n if last is None else last
    if context == 0:
        return slices[first:last, ..., None]  # a view: the single-slice hot path copies nothing here
    return np.moveaxis(slices[context_index(np.arange(first, last), context, 0, n - 1)], 1, -1)


def context_index(centres, context: int, lo, hi):
    """(len(centres), 2 * context + 1) slice indices: each centre with its neighbours, kept within
    ``lo``..``hi`` (its frame's first and last slice; scalars or one per centre), so the edge repeats."""
    centres = np.asarray(centres)
    steps = np.arange(-context, context + 1)
    return np.clip(centres[:, None] + steps[None, :], np.reshape(lo, (-1, 1)), np.reshape(hi, (-1, 1)))


POSITION_SCALE_MM = 50.0  # a slice's distance from the knee centre is given to the network in these units


def slice_positions_mm(frame: Frame, centre) -> np.ndarray:
    """Each slice's signed distance (mm) from ``centre`` along ``frame``'s slice axis, shape (n_slices,).

    The frame's own centre is not the knee centre when the window was slid back inside the scan
    (:func:`window_centre`) or the slices were centred on the part of the scan they span."""
    along = float((np.asarray(frame.centre, dtype=float) - np.asarray(centre, dtype=float)) @ frame.direction[:, 2])
    return along + (np.arange(frame.n_slices) - (frame.n_slices - 1) / 2.0) * frame.slice_mm


def position_channels(x, positions_mm=None) -> np.ndarray:
    """``x`` (batch, rows, cols, channels) with the two position channels appended: each slice's
    distance from the knee centre in units of :data:`POSITION_SCALE_MM`, and 1 where it is known;
    ``positions_mm`` None (not known: a single slice, the first pass looking for the centre): both 0."""
    x = np.asarray(x, dtype=np.float32)
    channels = np.zeros(x.shape[:3] + (2,), np.float32)
    if positions_mm is not None:
        positions_mm = np.asarray(positions_mm, dtype=np.float32).reshape(-1)
        if len(positions_mm) != len(x):
            raise ValueError(f"{len(positions_mm)} slice positions for {len(x)} slices")
        channels[..., 0] = (positions_mm / POSITION_SCALE_MM)[:, None, None]
        channels[..., 1] = 1.0
    return np.concatenate([x, channels], axis=-1)


# --- a frame's slices for a 3D network: the thesis' z handling -------------------------------------


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
