"""Random image transforms shared by synthesis and augmentation (numpy/scipy, seeded by the caller).

Smooth random fields are drawn as a few random values on a coarse lattice (:func:`spline_lattice`)
and read anywhere by cubic-spline interpolation (:func:`lattice_values`): synthesis uses them for
deformations, background structures and the bias field of a whole synthetic volume. The effects of an
acquisition act on single 2D slices of either kind, synthetic (``synth.render``) or real
(``augment``): thick slices (:func:`thick_slices`), a multiplicative bias field (:func:`with_bias`,
:func:`random_bias_field`) and Gaussian or Rician noise (:func:`with_noise`).
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def spline_lattice(values: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of a random lattice of values (computed once per field)."""
    return ndimage.spline_filter(values, order=3, mode="nearest")


def lattice_values(coefficients: np.ndarray, points: np.ndarray, half_extent: float) -> np.ndarray:
    """Cubic-spline interpolation, at ``points`` (..., ndim), of a lattice spanning the cube +-half_extent."""
    g = coefficients.shape[-1]
    coords = (points.reshape(-1, coefficients.ndim).T + half_extent) * ((g - 1) / (2.0 * half_extent))
    values = ndimage.map_coordinates(coefficients, coords, order=3, mode="nearest", prefilter=False)
    return values.reshape(points.shape[:-1])


@dataclass(frozen=True)
class LinearWeights:
    """Piecewise-linear interpolation from sorted ``in_positions`` to ``out_positions`` (constant
    beyond the ends). Applied by gathering, not by matrix products: tiny BLAS calls are slow and
    start threads, which hurts in data-loading workers."""

    left: np.ndarray
    right: np.ndarray
    t: np.ndarray

    @classmethod
    def between(cls, out_positions, in_positions):
        out_positions, in_positions = np.asarray(out_positions, float), np.asarray(in_positions, float)
        if len(in_positions) == 1:
            zeros = np.zeros(len(out_positions), np.intp)
            return cls(zeros, zeros, np.zeros(len(out_positions)))
        right = np.clip(np.searchsorted(in_positions, out_positions), 1, len(in_positions) - 1)
        left = right - 1
        t = np.clip((out_positions - in_positions[left]) / (in_positions[right] - in_positions[left]), 0.0, 1.0)
        return cls(left, right, t)

    def along(self, values: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * values.ndim
        shape[axis] = len(self.t)
        t = self.t.astype(values.dtype).reshape(shape)
        return np.take(values, self.left, axis) * (1 - t) + np.take(values, self.right, axis) * t


def thick_slices(image: np.ndarray, axis: int, width_px: float, phase: float) -> np.ndarray:
    """A 2D acquisition whose thick slices stack along an in-plane ``axis``, resampled to this plane:
    average over each acquired slice (``width_px`` wide, the first centred at ``phase`` of a width),
    then linear interpolation between slice centres."""
    n = image.shape[axis]
    smoothed = ndimage.uniform_filter1d(image, max(1, int(round(width_px))), axis=axis, mode="nearest")
    centres = np.arange(phase * width_px, n, width_px)
    picked = np.take(smoothed, np.clip(np.rint(centres).astype(int), 0, n - 1), axis=axis)
    return LinearWeights.between(np.arange(n), centres).along(picked, axis)


def with_bias(image: np.ndarray, log_bias: np.ndarray) -> np.ndarray:
    """The image times a smooth multiplicative bias field, given by its logarithm."""
    return image * np.exp(log_bias)


def random_bias_field(rng, shape, log_std: float, control_points: int = 4) -> np.ndarray:
    """The logarithm of a random smooth bias field over a 2D image of ``shape``: normal values of
    standard deviation ``log_std`` on ``control_points`` x ``control_points`` spline control points."""
    lattice = spline_lattice(rng.normal(0.0, log_std, (control_points, control_points)))
    rows, cols = np.meshgrid(np.linspace(-1.0, 1.0, shape[0]), np.linspace(-1.0, 1.0, shape[1]), indexing="ij")
    return lattice_values(lattice, np.stack([rows, cols], -1), 1.0).astype(np.float32)


def with_noise(rng, image: np.ndarray, std: float, rician: bool) -> np.ndarray:
    """Gaussian noise (clipped at zero), or the magnitude of complex Gaussian noise (Rician, as in
    magnitude MR images) of standard deviation ``std``."""
    noise = rng.standard_normal((2,) + image.shape, dtype=np.float32) * std
    if rician:
        return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    return np.maximum(image + noise[0], 0.0)
